"""length_model.serving: the committed artifact loads and predicts; failures surface as
PredictorError; the background micro-batcher delivers every request."""

from __future__ import annotations

import pathlib
import time

import numpy as np
import pytest

from length_model.config import DEFAULT_ARTIFACT_DIR
from length_model.serving import (AsyncLengthPredictor, LengthPredictor, PredictionFailed,
                                  PredictorBusy, PredictorError, last_user_turn)

PROMPTS = ["Hi!", "Write a detailed 2000-word essay on the history of the Roman empire.",
           "Translate 'cat' to French.", "Write a Python class for a binary search tree with "
           "insert, delete and search, with docstrings and unit tests."]


@pytest.fixture(scope="module")
def predictor() -> LengthPredictor:
    if not (pathlib.Path(DEFAULT_ARTIFACT_DIR) / "meta.json").exists():
        pytest.skip("no committed artifact")
    return LengthPredictor.load(num_threads=1)


def test_committed_artifact_predicts(predictor):
    out = predictor.predict(PROMPTS)
    assert len(out) == len(PROMPTS) and all(isinstance(n, int) and n >= 1 for n in out)
    assert predictor.predict([]) == []
    # An essay request must be predicted longer than a greeting or a one-word translation.
    assert out[1] > out[0] and out[1] > out[2]
    dist = predictor.predict_distribution(PROMPTS[:2])
    assert dist[0]["p10_tokens"] <= dist[0]["median_tokens"] <= dist[0]["p90_tokens"]


def test_committed_artifact_bucket_probabilities(predictor):
    out = predictor.context.outputs(PROMPTS, buckets=True)
    probs = out["bucket_probs"]
    assert predictor.context.buckets is not None  # the shipped model has a bucket head
    assert probs.shape == (len(PROMPTS), len(predictor.meta["bucket_edges_tokens"]) + 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)
    # The essay request's expected bucket lies above the greeting's and the translation's.
    expected = probs @ np.arange(probs.shape[1])
    assert expected[1] > expected[0] and expected[1] > expected[2]
    assert "bucket_probs" not in predictor.context.outputs(PROMPTS[:1])  # only on request


def test_batched_equals_single(predictor):
    batched = predictor.predict(PROMPTS)
    single = [predictor.predict([p])[0] for p in PROMPTS]
    assert all(abs(a - b) <= max(2, 0.02 * b) for a, b in zip(batched, single))


def test_chat_template_uses_last_user_turn():
    text = ("<|start_header_id|>system<|end_header_id|>be brief<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nfirst<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>ok<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nsecond question<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert last_user_turn(text) == "second question"
    assert last_user_turn("<|im_start|>user\nhey<|im_end|>\n<|im_start|>assistant\n") == "hey"
    assert last_user_turn("plain text") == "plain text"


def test_missing_folder_raises_predictor_error(tmp_path):
    with pytest.raises(PredictorError):
        LengthPredictor.load(tmp_path / "nothing-here")


def test_bad_input_raises_predictor_error(predictor):
    with pytest.raises(PredictorError):
        predictor.predict("not a list")  # type: ignore[arg-type]


def test_async_delivers_all(predictor):
    with AsyncLengthPredictor(predictor, max_batch_size=8, max_wait_ms=2) as ap:
        for i in range(20):
            ap.submit(i, PROMPTS[i % len(PROMPTS)])
        got: dict = {}
        deadline = time.monotonic() + 30
        while len(got) < 20 and time.monotonic() < deadline:
            got.update(ap.poll())
            time.sleep(0.01)
    assert sorted(got) == list(range(20))
    assert got[1] == predictor.predict([PROMPTS[1]])[0] or abs(got[1] - predictor.predict([PROMPTS[1]])[0]) <= 2


class _Broken:
    def predict(self, texts):
        raise PredictorError("boom")


class _Slow:
    def predict(self, texts):
        time.sleep(0.2)
        return [1] * len(texts)


def test_async_failure_surfaces_on_poll():
    with AsyncLengthPredictor(_Broken()) as ap:  # type: ignore[arg-type]
        ap.submit("a", "x")
        ap.submit("b", "y")
        deadline = time.monotonic() + 5
        with pytest.raises(PredictionFailed) as info:
            while time.monotonic() < deadline:
                ap.poll()
                time.sleep(0.01)
        assert set(info.value.rids) <= {"a", "b"} and info.value.rids
        assert isinstance(info.value, PredictorError)


def test_async_backpressure_and_close():
    ap = AsyncLengthPredictor(_Slow(), max_queue=2)  # type: ignore[arg-type]
    with pytest.raises(PredictorBusy):
        for i in range(10):
            ap.submit(i, "x")
    ap.close()
    with pytest.raises(PredictorError):
        ap.submit("late", "x")
