"""Decode-length predictor (MiniLM-based): data preparation, training, evaluation and the
batched serving interface the controller and the simulator call."""
