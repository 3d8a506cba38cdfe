"""Decode-length predictions for the live controller, without blocking its event loop.

The controller parks each new request here, the MiniLM predictor (`length_model.serving`)
runs on a background thread in micro-batches, and the request is released for dispatch
when its prediction arrives or when `max_wait_ms` has passed, whichever is first. A
request released without a prediction is dispatched with the fallback
(`max_new_tokens`); if its prediction arrives later, the ledger is re-weighed
(`Router.update_expected_output`). With `max_wait_ms = 0` prediction is entirely off the
dispatch path.

The background thread wakes the event loop through an inproc ZMQ PUSH socket that only
it uses (ZMQ sockets are not thread-safe; one socket per thread is). Any failure
(loading, predicting) is logged once and the controller falls back to `max_new_tokens`.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import zmq

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Parked:
    message: object  # the tokenized request, dispatched on release
    request: object  # our Request view of it
    deadline_s: float


class PredictedLengths:
    def __init__(self, model_dir: str | None, max_wait_ms: float, context: zmq.Context, tokenizer_path: str | None):
        self.max_wait_s = max(0.0, max_wait_ms) / 1000.0
        self._parked: OrderedDict[str, _Parked] = OrderedDict()  # in arrival order
        # Released without a prediction, still awaited; a dict keeps insertion order, so
        # trimming forgets the oldest.
        self._late: dict[str, None] = {}
        self._tokenizer_path = tokenizer_path
        self._tokenizer = None
        self.failed = False
        self.predicted = 0
        self.fallbacks = 0
        endpoint = f"inproc://sglang_ext_predictions_{uuid.uuid4().hex[:8]}"
        self.wakeup = context.socket(zmq.PULL)
        self.wakeup.setsockopt(zmq.LINGER, 0)
        self.wakeup.bind(endpoint)
        self._context, self._endpoint = context, endpoint
        self._thread_socket = None
        self._async = None
        try:
            from length_model.serving import AsyncLengthPredictor, LengthPredictor

            predictor = LengthPredictor.load(model_dir) if model_dir else LengthPredictor.load()
            self._async = AsyncLengthPredictor(predictor, on_result=self._on_result)
            logger.info("length source: MiniLM predictor loaded (wait at most %.0f ms per request)",
                        self.max_wait_s * 1000)
        except Exception as exc:
            self._fail(f"could not load the length predictor ({exc})")

    # ---------------------------------------------------------- event-loop side

    def park(self, message, request, now_s: float) -> bool:
        """Queue a request for prediction; False means dispatch it now (no predictor)."""
        if self.failed:
            return False
        text = getattr(message, "input_text", None) or self._detokenize(request.input_ids)
        try:
            self._async.submit(request.rid, text)
        except Exception as exc:
            self._fail(f"prediction submit failed ({exc})")
            return False
        self._parked[request.rid] = _Parked(message, request, now_s + self.max_wait_s)
        return True

    def collect(self, now_s: float, router) -> list[tuple[object, object]]:
        """Drain arrived predictions and expired waits; returns (message, request) pairs
        ready for dispatch, in arrival order of their results."""
        while True:  # empty the wake-up socket
            try:
                self.wakeup.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
        ready = []
        if self._async is not None and not self.failed:
            try:
                results = self._async.poll()
            except Exception as exc:  # PredictionFailed: release everything on fallback
                results = list(getattr(exc, "results", []))
                self._fail(f"prediction failed ({exc})")
            for rid, tokens in results:
                parked = self._parked.pop(rid, None)
                if parked is not None:
                    parked.request.predicted_output_tokens = int(tokens)
                    self.predicted += 1
                    ready.append((parked.message, parked.request))
                elif self._late.pop(rid, False) is None:
                    router.update_expected_output(rid, int(tokens))
        for rid in [rid for rid, p in self._parked.items() if self.failed or p.deadline_s <= now_s]:
            parked = self._parked.pop(rid)
            if not self.failed:
                self._late[rid] = None
            self.fallbacks += 1
            ready.append((parked.message, parked.request))
        while len(self._late) > 10000:  # predictions that never came: forget the oldest
            del self._late[next(iter(self._late))]
        return ready

    def next_deadline_s(self) -> float | None:
        return next(iter(self._parked.values())).deadline_s if self._parked else None

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

    def _detokenize(self, input_ids) -> str:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_path)
        return self._tokenizer.decode(list(input_ids))

    def _fail(self, reason: str) -> None:
        if not self.failed:
            logger.error("length source: %s; falling back to max_new_tokens", reason)
        self.failed = True

    def close(self) -> None:
        """Stop the predictor thread, then close both sockets (an open socket would keep
        the ZMQ context, and so the process, from exiting)."""
        if self._async is not None:
            self._async.close()
        if self._thread_socket is not None:
            self._thread_socket.close(0)
        self.wakeup.close(0)
