"""On-disk cache of encoded prompts, keyed by encoder config and split (git-ignored,
rebuilt by `python -m length_model prepare --embed KIND`).

A split may be subsampled (seeded) to bound CPU time; the cache stores which pair indices
it holds, so targets always line up with features.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
import time

import numpy as np

from .config import EmbedConfig, to_dict
from .data import Pair
from .embed import Encoder, encode_many


def cache_key(cfg: EmbedConfig) -> str:
    fields = to_dict(cfg)
    for volatile in ("batch_size", "num_threads"):  # do not change the features
        fields.pop(volatile)
    digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.kind}-{digest}"


def cache_path(work_dir: pathlib.Path, cfg: EmbedConfig, split: str) -> pathlib.Path:
    return work_dir / "cache" / cache_key(cfg) / f"{split}.npz"


def split_indices(pairs: list[Pair], split: str, limit: int, seed: int) -> np.ndarray:
    idx = np.array([i for i, p in enumerate(pairs) if p.split == split], dtype=np.int64)
    if limit and len(idx) > limit:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    return idx


def _progress(label: str):
    last = [0.0]

    def report(done: int, total: int, elapsed_s: float) -> None:
        if elapsed_s - last[0] >= 5 or done == total:
            last[0] = elapsed_s
            rate = done / max(elapsed_s, 1e-9)
            eta = (total - done) / max(rate, 1e-9)
            print(f"  embed {label}: {done}/{total}  {rate:.0f} prompts/s  eta {eta:.0f} s",
                  file=sys.stderr, flush=True)

    return report


def build_cache(work_dir: pathlib.Path, cfg: EmbedConfig, pairs: list[Pair], split: str,
                limit: int = 0, seed: int = 0, encoder: Encoder | None = None) -> pathlib.Path:
    path = cache_path(work_dir, cfg, split)
    idx = split_indices(pairs, split, limit, seed)
    if path.exists():
        old = np.load(path)
        if np.array_equal(old["index"], idx):
            return path
    encoder = encoder or Encoder(cfg)
    t0 = time.monotonic()
    feats = encode_many(encoder, [pairs[i].prompt for i in idx], _progress(f"{cfg.kind}/{split}"))
    targets = np.array([pairs[i].response_tokens for i in idx], dtype=np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, features=feats, targets=targets, index=idx,
             embed_seconds=np.float64(time.monotonic() - t0))
    tmp.replace(path)
    (path.parent / "embed_config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    return path


def load_cache(work_dir: pathlib.Path, cfg: EmbedConfig, split: str) -> dict[str, np.ndarray]:
    path = cache_path(work_dir, cfg, split)
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `python -m length_model prepare "
                                f"--embed {cfg.kind}` first")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
