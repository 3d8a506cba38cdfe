"""Evaluate a trained head on cached test (and ReAct) features; write a JSON report and a
table beside the poster's figures."""

from __future__ import annotations

import numpy as np

from .metrics import (POSTER, beats_poster, classification_metrics, decode_cost_metrics,
                      ranking_metrics)
from .train import apply_calibration, bucket_probs, predict_arrays, select_columns


def evaluate_arrays(head, train_cfg, x: np.ndarray, y: np.ndarray, edges: np.ndarray,
                    seed: int = 0, calibration: dict | None = None) -> dict[str, float]:
    x = select_columns(x, train_cfg.use_surface_features)
    pred = predict_arrays(head, x)
    pred["mean_tokens"] = apply_calibration(calibration, pred["score"], pred["mean_tokens"])
    y_bucket = np.searchsorted(edges, y, side="right")
    out = {"n": int(len(y))}
    out.update(classification_metrics(y_bucket, bucket_probs(head, x, edges)))
    out.update(ranking_metrics(y, pred["score"]))
    out.update(decode_cost_metrics(y, pred["mean_tokens"], seed=seed))
    if "median_tokens" in pred:
        out["mae_tokens_median_estimate"] = float(np.abs(pred["median_tokens"] - y).mean())
    return out


def constant_baseline(y_train: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, float]:
    """Predict the training mean for everyone: the floor for decode-cost errors."""
    return decode_cost_metrics(y, np.full(len(y), float(np.mean(y_train))), seed=seed)


ROWS = ["accuracy", "f1_weighted", "precision_weighted", "recall_weighted", "auroc_ovr", "mcc",
        "kendall_tau", "spearman", "mae_tokens", "rel_err_median", "group16_rel_err_mean",
        "sum_bias"]


def format_table(columns: dict[str, dict[str, float]]) -> str:
    names = ["metric", "poster (Alpaca)", *columns]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in ROWS:
        cells = [row, f"{POSTER[row]:.2f}" if row in POSTER else "-"]
        for col in columns.values():
            v = col.get(row)
            cells.append("-" if v is None else (f"{v:.1f}" if row == "mae_tokens" else f"{v:.3f}"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["evaluate_arrays", "constant_baseline", "format_table", "beats_poster", "ROWS"]
