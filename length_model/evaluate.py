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


def plot_ceiling(rows: list[dict], models: dict[str, dict], path) -> None:
    """Accuracy and AUROC against Kendall tau: the ideal log-normal predictor's curve
    (`metrics.calibrated_ceiling`), our models' points and the poster's figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    taus = [r["kendall_tau"] for r in rows]
    for ax, key, title in zip(axes, ("accuracy", "auroc_ovr"), ("accuracy (20 buckets)",
                                                                "AUROC one-vs-rest")):
        ax.plot(taus, [r[key] for r in rows], marker=".", color="grey",
                label="ideal, log-normal errors")
        for i, (name, m) in enumerate(models.items()):
            ax.scatter([m["kendall_tau"]], [m[key]], color=f"C{i}", zorder=3, label=name)
        ax.axhline(POSTER[key], color="black", linestyle="--", label=f"poster {POSTER[key]:g}")
        ax.set_xlabel("Kendall tau")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["evaluate_arrays", "constant_baseline", "format_table", "beats_poster", "ROWS",
           "plot_ceiling"]
