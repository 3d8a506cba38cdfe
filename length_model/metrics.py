"""Metrics of a length predictor: the poster's bucket-classification figures, ranking
(Kendall tau-b, Spearman), and the errors the scheduler sees in decode work.

All functions are pure over numpy arrays, so they are tested on hand-made inputs.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from .inference import lognormal_bucket_probs  # noqa: F401 (shared with serving; re-exported)

# The poster's held-out Alpaca figures (20 equal-frequency buckets).
POSTER = {"accuracy": 0.24, "f1_weighted": 0.22, "precision_weighted": 0.22,
          "recall_weighted": 0.24, "auroc_ovr": 0.85, "mcc": 0.20}


def classification_metrics(y_bucket: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Bucket labels vs predicted bucket probabilities [n, k]."""
    y = np.asarray(y_bucket)
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(1)
    k = p.shape[1]
    out = {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "f1_weighted": float(skm.f1_score(y, pred, average="weighted", zero_division=0)),
        "precision_weighted": float(skm.precision_score(y, pred, average="weighted",
                                                        zero_division=0)),
        "recall_weighted": float(skm.recall_score(y, pred, average="weighted", zero_division=0)),
        "mcc": float(skm.matthews_corrcoef(y, pred)),
    }
    present = np.unique(y)
    if present.size >= 2:
        # One-vs-rest AUROC per bucket present in y, macro-averaged.
        aucs = [skm.roc_auc_score((y == c).astype(int), p[:, c]) for c in present if c < k]
        out["auroc_ovr"] = float(np.mean(aucs))
    else:
        out["auroc_ovr"] = float("nan")
    return out


def ranking_metrics(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    tau = stats.kendalltau(score, y_true).statistic  # tau-b (handles ties)
    rho = stats.spearmanr(score, y_true).statistic
    return {"kendall_tau": float(tau), "spearman": float(rho)}


def decode_cost_metrics(y_true: np.ndarray, pred_tokens: np.ndarray, group_size: int = 16,
                        num_groups: int = 2000, seed: int = 0) -> dict[str, float]:
    """Errors in decode work as the scheduler sums it.

    `group_rel_err_*`: |sum pred - sum true| / sum true over random groups of `group_size`
    requests (what one worker's ledger holds); `rel_err_median`: median |pred - true| / true
    per request; `mae_tokens`: mean |pred - true|.
    """
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(pred_tokens, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(num_groups, group_size))
    g_true, g_pred = y[idx].sum(1), p[idx].sum(1)
    rel = np.abs(g_pred - g_true) / np.maximum(g_true, 1.0)
    return {
        "mae_tokens": float(np.abs(p - y).mean()),
        "rel_err_median": float(np.median(np.abs(p - y) / np.maximum(y, 1.0))),
        f"group{group_size}_rel_err_mean": float(rel.mean()),
        f"group{group_size}_rel_err_p90": float(np.quantile(rel, 0.9)),
        "sum_bias": float(p.sum() / max(y.sum(), 1.0) - 1.0),
    }


def calibrated_ceiling(log_means: np.ndarray, sigmas, num_buckets: int = 20,
                       seed: int = 0) -> list[dict[str, float]]:
    """Bucket and ranking figures of an ideal predictor: each request's log(1 + tokens)
    is its predicted mean plus Gaussian noise of spread sigma, and the predictor knows that
    (the exact log-normal bucket probabilities). It shows which accuracy and AUROC go with
    which Kendall tau on lengths distributed like `log_means`; no model does better at
    its noise level unless the noise is not log-normal."""
    mu = np.asarray(log_means, dtype=np.float64)
    noise = np.random.default_rng(seed).normal(size=mu.size)  # the same draw for every sigma
    rows = []
    for sigma in sigmas:
        y = np.expm1(mu + sigma * noise)
        edges = np.quantile(y, np.linspace(0, 1, num_buckets + 1)[1:-1])
        probs = lognormal_bucket_probs(mu, sigma, edges)
        cls = classification_metrics(np.searchsorted(edges, y, side="right"), probs)
        rows.append({"sigma_log": float(sigma), **ranking_metrics(y, mu),
                     **{k: cls[k] for k in ("accuracy", "auroc_ovr", "mcc")}})
    return rows


def beats_poster(ours: dict[str, float]) -> dict[str, bool]:
    return {k: bool(ours.get(k, float("nan")) > v) for k, v in POSTER.items()}
