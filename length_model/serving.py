"""Run-time predictor the controller calls: batched, loaded from a local folder only.

`LengthPredictor` is synchronous (`predict(texts) -> list[int]`, expected decode tokens).
`AsyncLengthPredictor` runs it on a background thread with micro-batching, so the
dispatch path only enqueues (`submit`) and later collects (`poll`). Every failure surfaces
as `PredictorError` (or a subclass), which the caller catches to fall back to
`max_new_tokens`.
"""

from __future__ import annotations

import collections
import json
import pathlib
import queue
import threading
import time
from collections.abc import Callable, Hashable

import numpy as np

from .config import DEFAULT_ARTIFACT_DIR
from .embed import Encoder
from .inference import apply_calibration, load_artifact, select_columns

# Imports stay inference-only (`inference.py`): the controller loads this module, and
# training libraries (scipy, scikit-learn, LightGBM) must not come with it. torch is
# imported only for the MLP-head artifact kind.


class PredictorError(RuntimeError):
    """Loading or prediction failed; the caller falls back to max_new_tokens."""


class PredictorBusy(PredictorError):
    """The background queue is full (back-pressure): predict later or fall back."""


class PredictionFailed(PredictorError):
    """Some requests of a micro-batch could not be predicted.

    `rids` lists them; `results` holds the successful (rid, tokens) drained by the same
    `poll`, so nothing is lost when this is raised.
    """

    def __init__(self, rids: list, cause: BaseException, results: list):
        super().__init__(f"prediction failed for {len(rids)} request(s): {cause!r}")
        self.rids, self.cause, self.results = rids, cause, results


_CHAT_MARKERS = (
    ("<|start_header_id|>user<|end_header_id|>", ("<|eot_id|>",)),  # Llama-3
    ("<|im_start|>user", ("<|im_end|>",)),  # ChatML (Qwen, SmolLM2)
    ("[INST]", ("[/INST]",)),  # Llama-2 / Mistral
)


def drain_predictions(out, failed) -> list[tuple[Hashable, int]]:
    """Take every finished (rid, tokens) from `out`; if `failed` holds (rid, cause)
    pairs, take them too and raise PredictionFailed carrying the finished ones, so that
    no answer is lost with the failure. Shared by the thread and process hosts."""
    results = []
    while out:
        results.append(out.popleft())
    if failed:
        rids, cause = [], None
        while failed:
            rid, cause = failed.popleft()
            rids.append(rid)
        raise PredictionFailed(rids, cause, results)
    return results


def last_user_turn(text: str) -> str:
    """The last user message of a chat-templated prompt (the model was trained on single
    human turns); plain text is returned as is."""
    for start, ends in _CHAT_MARKERS:
        pos = text.rfind(start)
        if pos >= 0:
            body = text[pos + len(start):]
            for end in ends:
                cut = body.find(end)
                if cut >= 0:
                    body = body[:cut]
            body = body.strip()
            if body:
                return body
    return text


class LengthPredictor:
    """Expected decode tokens per prompt from a trained head over frozen MiniLM features."""

    def __init__(self, encoder: Encoder, head, meta: dict, train_cfg,
                 max_tokens: int = 32768):
        self.encoder, self.head, self.meta, self.train_cfg = encoder, head, meta, train_cfg
        self.max_tokens = max_tokens
        self.context = None  # a ctxmodel.ContextLengthPredictor for "context-gbm" artifacts

    @classmethod
    def load(cls, folder: str | pathlib.Path = DEFAULT_ARTIFACT_DIR, num_threads: int | None = None,
             warmup: bool = True) -> "LengthPredictor":
        """Load head + meta from `folder` and the MiniLM encoder from its installed package."""
        try:
            meta_path = pathlib.Path(folder) / "meta.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            if meta.get("model_kind") == "context-gbm":
                from .ctxmodel import ContextLengthPredictor

                ctx = ContextLengthPredictor.load(pathlib.Path(folder), meta, num_threads)
                pred = cls(ctx.encoder, None, meta, ctx.train_cfg)
                pred.context = ctx
                if warmup:
                    ctx.warm_up()
                return pred
            head, embed_cfg, train_cfg, meta = load_artifact(pathlib.Path(folder))
            if num_threads is not None:
                import dataclasses

                embed_cfg = dataclasses.replace(embed_cfg, num_threads=num_threads)
            pred = cls(Encoder(embed_cfg), head, meta, train_cfg)
            if warmup:
                pred.predict(["warm-up prompt"])
            return pred
        except PredictorError:
            raise
        except Exception as exc:
            raise PredictorError(f"cannot load length predictor from {folder}: {exc}") from exc

    def _outputs(self, texts: list[str]) -> dict[str, np.ndarray]:
        if not isinstance(texts, (list, tuple)):
            raise PredictorError("texts must be a list of str")
        try:
            if self.context is not None:  # chat-templated text parsed by the model itself
                return self.context.outputs(texts)
            x = self.encoder.encode([last_user_turn(t) for t in texts])
            x = select_columns(x, self.train_cfg.use_surface_features)
            import torch

            with torch.no_grad():
                out = self.head.predict(torch.from_numpy(x))
            res = {k: v.numpy() for k, v in out.items()}
            res["mean_tokens"] = apply_calibration(self.meta.get("calibration"), res["score"],
                                                   res["mean_tokens"])
            return res
        except Exception as exc:
            raise PredictorError(f"length prediction failed: {exc}") from exc

    def predict(self, texts: list[str]) -> list[int]:
        """Expected decode tokens per prompt (>= 1), usable as predicted remaining decode."""
        if len(texts) == 0:
            return []
        mean = self._outputs(texts)["mean_tokens"]
        return np.clip(np.rint(mean), 1, self.max_tokens).astype(int).tolist()

    def predict_distribution(self, texts: list[str]) -> list[dict[str, float]]:
        """Per prompt: expected tokens, median, 10th/90th percentile and a ranking score."""
        if len(texts) == 0:
            return []
        out = self._outputs(texts)
        rows = []
        for i in range(len(texts)):
            if "probs" in out:  # a PosterHead (bucket classifier)
                p = out["probs"][i]
                edges = np.asarray(self.meta["bucket_edges_tokens"])
                cdf = np.cumsum(p)
                q = [float(edges[min(np.searchsorted(cdf, a), len(edges) - 1)]) for a in (.1, .5, .9)]
            else:
                m, s = float(out["mu_log"][i]), float(out["sigma_log"][i])
                q = [float(np.expm1(m + z * s)) for z in (-1.2816, 0.0, 1.2816)]
            rows.append({"mean_tokens": float(out["mean_tokens"][i]), "p10_tokens": q[0],
                         "median_tokens": q[1], "p90_tokens": q[2],
                         "score": float(out["score"][i])})
        return rows


class AsyncLengthPredictor:
    """Thread-based micro-batching wrapper: `submit` never waits for the model.

    The worker takes the first queued request, gathers more for up to `max_wait_ms` (or
    until `max_batch_size`), predicts them in one batch, and queues (rid, tokens) for
    `poll`. `on_result(rid, tokens)` (optional) is called on the worker thread as results
    appear.
    """

    def __init__(self, predictor: LengthPredictor, max_batch_size: int = 16,
                 max_wait_ms: float = 1.0, max_queue: int = 4096,
                 on_result: Callable[[Hashable, int], None] | None = None):
        self.predictor = predictor
        self.max_batch_size, self.max_wait_s = max_batch_size, max_wait_ms / 1000.0
        self.on_result = on_result
        self._in: queue.Queue = queue.Queue(maxsize=max_queue)
        self._out: collections.deque = collections.deque()
        self._failed: collections.deque = collections.deque()
        self._closed = threading.Event()
        self.batch_sizes: list[int] = []
        self._thread = threading.Thread(target=self._run, name="length-predictor", daemon=True)
        self._thread.start()

    def submit(self, rid: Hashable, text: str) -> None:
        if self._closed.is_set() or not self._thread.is_alive():
            raise PredictorError("length predictor is closed")
        try:
            self._in.put_nowait((rid, text))
        except queue.Full as exc:
            raise PredictorBusy("length predictor queue is full") from exc

    def poll(self) -> list[tuple[Hashable, int]]:
        """Drain finished predictions; raises PredictionFailed if any request failed."""
        return drain_predictions(self._out, self._failed)

    def pending(self) -> int:
        return self._in.qsize()

    def close(self, timeout_s: float = 5.0) -> None:
        self._closed.set()
        self._thread.join(timeout_s)

    def __enter__(self) -> "AsyncLengthPredictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                first = self._in.get(timeout=0.05)
            except queue.Empty:
                continue
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch_size:
                left = deadline - time.monotonic()
                try:
                    batch.append(self._in.get_nowait() if left <= 0 else self._in.get(timeout=left))
                except queue.Empty:
                    break
            self.batch_sizes.append(len(batch))
            try:
                tokens = self.predictor.predict([t for _, t in batch])
            except Exception as exc:  # surfaced to the caller through poll()
                self._failed.extend((rid, exc) for rid, _ in batch)
                continue
            for (rid, _), n in zip(batch, tokens):
                self._out.append((rid, n))
                if self.on_result is not None:
                    self.on_result(rid, n)
