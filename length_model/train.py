"""Train a head on cached features, save it as a small self-describing artifact folder.

Artifact folder layout (what `serving.LengthPredictor.load` reads):
- `head.pt`: the head's state dict (torch.save, loaded with weights_only=True);
- `meta.json`: resolved EmbedConfig + TrainConfig, bucket edges, data/split description,
  metrics, training time and date.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import sys
import time

import numpy as np
import torch

from .config import EmbedConfig, TrainConfig, to_dict
from .heads import PosterHead, RankHead, build_head
from .inference import (  # noqa: F401 (run-time helpers, re-exported for training's callers)
    HEAD_FILE,
    META_FILE,
    apply_calibration,
    load_artifact,
    select_columns,
)
from .metrics import ranking_metrics


def bucket_edges(y_tokens: np.ndarray, k: int) -> np.ndarray:
    return np.quantile(y_tokens, np.arange(1, k) / k).astype(np.float32)


def predict_arrays(head, x: np.ndarray, batch: int = 4096) -> dict[str, np.ndarray]:
    head.eval()
    outs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for s in range(0, len(x), batch):
            res = head.predict(torch.from_numpy(x[s:s + batch]))
            for k, v in res.items():
                outs.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in outs.items()}


def train_head(cfg: TrainConfig, x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray,
               y_val: np.ndarray, log=None) -> tuple[torch.nn.Module, list[dict]]:
    """Adam over shuffled mini-batches; keeps the state with the best validation Kendall tau."""
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(max(1, cfg.num_threads))
    rng = np.random.default_rng(cfg.seed)
    x_tr = select_columns(x_tr, cfg.use_surface_features)
    x_val = select_columns(x_val, cfg.use_surface_features)
    if cfg.max_train_pairs and len(x_tr) > cfg.max_train_pairs:
        keep = np.sort(rng.choice(len(x_tr), cfg.max_train_pairs, replace=False))
        x_tr, y_tr = x_tr[keep], y_tr[keep]
    head = build_head(cfg.head, x_tr.shape[1], tuple(cfg.hidden_sizes), cfg.dropout,
                      cfg.num_buckets, cfg.rank_loss_weight)
    head.set_standardisation(x_tr)
    if isinstance(head, PosterHead):
        head.set_buckets(y_tr)
    else:
        head.set_target_scale(y_tr)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr.astype(np.float32))
    best, best_state, history, stale = -2.0, None, [], 0
    for epoch in range(cfg.epochs):
        t0 = time.monotonic()
        head.train()
        order = torch.from_numpy(rng.permutation(len(xt)))
        total = 0.0
        for s in range(0, len(order), cfg.batch_size):
            b = order[s:s + cfg.batch_size]
            loss = head.loss(xt[b], yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        sched.step()
        val = ranking_metrics(y_val, predict_arrays(head, x_val)["score"])
        history.append({"epoch": epoch + 1, "train_loss": total / len(xt),
                        "val_kendall_tau": val["kendall_tau"], "seconds": time.monotonic() - t0})
        log(f"  epoch {epoch + 1:3d}/{cfg.epochs}  loss {total / len(xt):.4f}  "
            f"val tau {val['kendall_tau']:.4f}  ({time.monotonic() - t0:.1f} s)")
        if val["kendall_tau"] > best:
            best, stale = val["kendall_tau"], 0
            best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience_epochs:
                log(f"  early stop: no gain for {stale} epochs")
                break
    if best_state is not None:
        head.load_state_dict(best_state)
    head.eval()
    return head, history


def fit_calibration(score: np.ndarray, y_tokens: np.ndarray, max_knots: int = 200) -> dict:
    """Monotone map score -> expected tokens (isotonic regression on validation data).

    The head's own mean estimate is biased (the log-normal mean overshoots heavy tails); a
    scheduler sums expected decode work, so the sum must be unbiased. Being monotone, the
    map keeps the ranking (Kendall tau) unchanged.
    """
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip").fit(score, y_tokens.astype(np.float64))
    xs, ys = iso.X_thresholds_, iso.y_thresholds_
    if len(xs) > max_knots:
        keep = np.unique(np.linspace(0, len(xs) - 1, max_knots).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return {"score": [float(v) for v in xs], "mean_tokens": [float(v) for v in ys]}


def save_artifact(folder: pathlib.Path, head: torch.nn.Module, train_cfg: TrainConfig,
                  embed_cfg: EmbedConfig, edges: np.ndarray, extra: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(head.state_dict(), folder / HEAD_FILE)
    meta = {"train_config": to_dict(train_cfg), "embed_config": to_dict(embed_cfg),
            "in_dim": int(head.x_mean.numel()), "bucket_edges_tokens": edges.tolist(),
            "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **extra}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def bucket_probs(head, x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    if isinstance(head, PosterHead):
        return predict_arrays(head, x)["probs"]
    assert isinstance(head, RankHead)
    with torch.no_grad():
        return head.bucket_probs(torch.from_numpy(x), torch.from_numpy(edges)).numpy()
