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
from tqdm import tqdm

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
    # Redrawn every 5 s off a terminal (a log), as the lines it replaced were.
    with tqdm(total=len(idx), desc=f"embed {cfg.kind}/{split}", unit="prompt", file=sys.stderr,
              mininterval=0.1 if sys.stderr.isatty() else 5.0) as bar:
        feats = encode_many(encoder, [pairs[i].prompt for i in idx],
                            lambda done, _total, _elapsed_s: bar.update(done - bar.n))
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
