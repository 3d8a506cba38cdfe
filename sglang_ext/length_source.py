"""Decode-length predictions for the live controller, without blocking its event loop.

The controller parks each new request (the rules are `sglang_ext/core/pending.py`'s,
shared with the simulator); the predictor (`length_model.serving`) runs in micro-batches
in a child process (`predictor_process.py`, the default: on a thread of the controller
its GIL use delayed the dispatch of other requests by milliseconds, see
docs/results/predictor_gil/) or on a background thread (`SGLANG_EXT_PREDICTOR_HOST=thread`),
and a request is released for dispatch when its prediction
arrives or when `max_wait_ms` has passed, whichever is first. A request released without
a prediction is dispatched on the fallback (`max_new_tokens`); if its prediction arrives
later, the ledger is re-weighed. With `max_wait_ms = 0` prediction is entirely off the
dispatch path.

Nothing slow runs on the event loop: a request that has no `input_text` (the client sent
token ids) is handed to the predictor as ids, and the predictor's thread or process
loads the tokenizer (once) and detokenizes. The thread that receives results (the
predictor's own, or the process's receiver) wakes the event loop through an inproc ZMQ
PUSH socket that only it uses (ZMQ sockets are not thread-safe; one socket per thread is).

Failures degrade and recover (see `core/pending.py`): a full predictor queue sends that
one request on the fallback, a failed batch releases its requests on the fallback, and
only repeated failures suspend predictions, for a few seconds. Predictions are off for
good only when the predictor cannot be loaded or its thread or process has died.
"""

from __future__ import annotations

import logging
import os
import uuid

import zmq

from sglang_ext.core.pending import PendingConfig, PendingPredictions, Released
from sglang_ext.settings import ENV_PREDICTOR_HOST, PREDICTOR_HOSTS

logger = logging.getLogger(__name__)

# `AsyncLengthPredictor.batch_sizes` grows by one entry per batch for the life of the
# process; the controller keeps only this many.
KEEP_BATCH_SIZES = 1024


class _PredictOnThread:
    """What the predictor thread runs: prompt token ids become text there."""

    def __init__(self, predictor, tokenizer_path: str | None):
        self.predictor = predictor
        self._tokenizer_path = tokenizer_path
        self._tokenizer = None

    def predict(self, items: list) -> list[int]:
        return self.predictor.predict([item if isinstance(item, str) else self._decode(item) for item in items])

    def _decode(self, input_ids) -> str:
        if self._tokenizer is None:
            if not self._tokenizer_path:
                raise ValueError("a prompt came as token ids and no tokenizer path is known")
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
        return self._tokenizer.decode(list(input_ids))


class PredictedLengths:
    def __init__(self, model_dir: str | None, max_wait_ms: float, context: zmq.Context, tokenizer_path: str | None,
                 predictor=None, host: str | None = None):
        """`predictor` (anything with `predict(texts) -> list[int]`) replaces loading the
        model from `model_dir`, and runs on a thread. `host` is where the model runs:
        "process" (a child process, `predictor_process.py`) or "thread"; default: the
        SGLANG_EXT_PREDICTOR_HOST setting, else "process"."""
        host = host or ("thread" if predictor is not None else os.environ.get(ENV_PREDICTOR_HOST) or "process")
        if host not in PREDICTOR_HOSTS:
            raise ValueError(f"predictor host must be one of {', '.join(PREDICTOR_HOSTS)}, got {host!r}")
        if host == "process" and predictor is not None:
            raise ValueError("a predictor object runs on a thread; the process host loads its model itself")
        self.host = host
        self.pending = PendingPredictions(PendingConfig(max_wait_s=max(0.0, max_wait_ms) / 1000.0))
        self.unavailable: str | None = None  # why predictions are off for good
        endpoint = f"inproc://sglang_ext_predictions_{uuid.uuid4().hex[:8]}"
        self.wakeup = context.socket(zmq.PULL)
        self.wakeup.setsockopt(zmq.LINGER, 0)
        self.wakeup.bind(endpoint)
        self._context, self._endpoint = context, endpoint
        self._thread_socket = None
        self._async = None
        try:
            from length_model.serving import (
                AsyncLengthPredictor,
                LengthPredictor,
                PredictionFailed,
                PredictorBusy,
                PredictorError,
            )

            self._busy, self._error, self._failed_batch = PredictorBusy, PredictorError, PredictionFailed
            if host == "process":
                from sglang_ext.predictor_process import ProcessLengthPredictor

                self._async = ProcessLengthPredictor(model_dir, tokenizer_path, on_result=self._on_result)
            else:
                if predictor is None:
                    predictor = LengthPredictor.load(model_dir) if model_dir else LengthPredictor.load()
                self._async = AsyncLengthPredictor(_PredictOnThread(predictor, tokenizer_path),
                                                   on_result=self._on_result)
            logger.info("length source: predictor loaded in a %s (wait at most %.0f ms per request)", host, max_wait_ms)
        except Exception as exc:
            self._off(f"could not load the length predictor ({exc})")

    @property
    def failed(self) -> bool:
        """True when predictions are off for good (not merely suspended)."""
        return self.unavailable is not None

    # ---------------------------------------------------------- event-loop side

    def park(self, message, request, now_s: float) -> bool:
        """Queue a request for prediction; False means dispatch it now on the fallback."""
        if self._async is None:
            return False
        if not self.pending.accepting(now_s):
            self.pending.refuse()  # suspended after failures, or too many waiting
            return False
        text = getattr(message, "input_text", None)
        try:
            self._async.submit(request.rid, text if isinstance(text, str) and text else request.input_ids)
        except self._busy:
            self.pending.refuse()  # back-pressure: this request only
            return False
        except self._error as exc:  # closed, or its thread died
            self._off(f"the predictor stopped ({exc})")
            return False
        return self.pending.park(request, message, now_s)

    def collect(self, now_s: float, router) -> list[Released]:
        """Arrived predictions, failed ones and ended waits: the requests to dispatch now,
        in that order."""
        while True:  # empty the wake-up socket
            try:
                self.wakeup.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        if self._async is None:
            return self.pending.release_all() if len(self.pending) else []
        failed_rids: list = []
        try:
            results = self._async.poll()
        except self._failed_batch as exc:
            results, failed_rids = list(exc.results), list(exc.rids)
            logger.warning("length source: %s; those requests go on the fallback", exc)
        del self._async.batch_sizes[:-KEEP_BATCH_SIZES]
        ready = [r for r in (self.pending.deliver(rid, tokens, now_s, router) for rid, tokens in results)
                 if r is not None]
        if failed_rids:
            ready += self.pending.failed(failed_rids, now_s)
        return ready + self.pending.due(now_s)

    def forget(self, rid: str) -> None:
        self.pending.forget(rid)

    def next_deadline_s(self) -> float | None:
        return self.pending.next_deadline_s()

    def status(self, now_s: float) -> dict:
        return {**vars(self.pending.stats), "host": self.host, "parked": len(self.pending),
                "late": self.pending.late_count(),
                "suspended": self.pending.suspended(now_s), "unavailable": self.unavailable}

    # ---------------------------------------------------------- predictor thread

    def _on_result(self, rid, tokens) -> None:
        if self._thread_socket is None:
            self._thread_socket = self._context.socket(zmq.PUSH)
            self._thread_socket.setsockopt(zmq.LINGER, 0)
            self._thread_socket.connect(self._endpoint)
        try:
            self._thread_socket.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # a wake-up is already pending; the event loop will drain all results

    # ------------------------------------------------------------------ helpers

    def _off(self, reason: str) -> None:
        if self.unavailable is None:
            logger.error("length source: %s; predictions off, falling back to max_new_tokens", reason)
            self.unavailable = reason
        if self._async is not None:
            self._async.close(timeout_s=0.0)
            self._async = None

    def close(self) -> None:
        """Stop the predictor thread, then close both sockets (an open socket would keep
        the ZMQ context, and so the process, from exiting)."""
        if self._async is not None:
            self._async.close()
        if self._thread_socket is not None:
            self._thread_socket.close(0)
        self.wakeup.close(0)
