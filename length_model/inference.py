"""What a trained predictor needs at run time, in numpy alone.

The live controller loads the predictor (`serving.LengthPredictor`) in its own process;
training libraries (scipy, scikit-learn, LightGBM) must not come with it: they cost
start-up time and memory there and add nothing to inference. Training (`train.py`,
`metrics.py`, `ctxmodel.train_context_model`) imports these helpers from here, so both
sides compute the same values. `tests/test_length_serving_imports.py` loads the default
predictor in a fresh interpreter and fails if a training library got loaded.
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from .embed import EMBED_DIM

HEAD_FILE = "head.pt"
META_FILE = "meta.json"

_erfc = np.frompyfunc(math.erfc, 1, 1)


def select_columns(x: np.ndarray, use_surface: bool) -> np.ndarray:
    return x if use_surface else x[:, :EMBED_DIM]


def apply_calibration(cal: dict | None, score: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    if not cal or not cal.get("score"):
        return fallback
    return np.interp(score, np.asarray(cal["score"]), np.asarray(cal["mean_tokens"]))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def normal_cdf(z: np.ndarray) -> np.ndarray:
    """Phi(z) as 0.5 erfc(-z / sqrt 2): accurate in the lower tail, where 1 + erf loses
    every digit."""
    return (0.5 * _erfc(-np.asarray(z, dtype=np.float64) / math.sqrt(2.0))).astype(np.float64)


def lognormal_bucket_probs(mu_log: np.ndarray, sigma: float, edges_tokens: np.ndarray) -> np.ndarray:
    """[n, len(edges) + 1] bucket probabilities of log(1 + tokens) ~ N(mu_log, sigma^2)."""
    mu_log = np.asarray(mu_log, dtype=np.float64)
    z = (np.log1p(np.asarray(edges_tokens, dtype=np.float64))[None, :] - mu_log[:, None]) / sigma
    cdf = normal_cdf(z).reshape(z.shape)
    n = len(mu_log)
    return np.diff(np.hstack([np.zeros((n, 1)), cdf, np.ones((n, 1))]), axis=1)


def load_artifact(folder: pathlib.Path):
    """(head, EmbedConfig, TrainConfig, meta) of an MLP-head artifact folder (torch is
    needed for this kind only)."""
    import torch

    from .config import EmbedConfig, TrainConfig, from_dict
    from .heads import build_head

    meta_path, head_path = folder / META_FILE, folder / HEAD_FILE
    if not meta_path.exists() or not head_path.exists():
        raise FileNotFoundError(f"no length-model artifact in {folder} "
                                f"(needs {META_FILE} and {HEAD_FILE})")
    meta = json.loads(meta_path.read_text())
    train_cfg = from_dict(TrainConfig, meta["train_config"])
    embed_cfg = from_dict(EmbedConfig, meta["embed_config"])
    head = build_head(train_cfg.head, int(meta["in_dim"]), tuple(train_cfg.hidden_sizes),
                      train_cfg.dropout, train_cfg.num_buckets, train_cfg.rank_loss_weight)
    head.load_state_dict(torch.load(head_path, map_location="cpu", weights_only=True))
    head.eval()
    return head, embed_cfg, train_cfg, meta
