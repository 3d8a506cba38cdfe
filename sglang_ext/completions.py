"""Worker-side side channel: which requests finished prefill and which finished, per rank.

Stock SGLang workers send results straight to the detokenizer, so the DP controller never
learns that a request ended. Our plugin hooks each scheduler's
`SchedulerOutputStreamer.stream_output` (called once per batch step with the batch's
requests) and pushes compact reports over ZMQ to the controller:

- `PREFILL_DONE` the first time a request has produced a token (its prompt is now in
  the worker's KV cache and its queued prefill is done);
- `FINISHED` the first time it is finished, with prompt, cached and output token counts.

The endpoint is passed in the environment (`SGLANG_EXT_REPORTS`), set by our controller
before it spawns the schedulers; with no endpoint (dp=1, or SGLang's own controller) the
hook does nothing. Reports are msgspec array-like structs, one message per step.
"""

from __future__ import annotations

import logging
import os

import msgspec
import zmq

logger = logging.getLogger(__name__)

ENV_ENDPOINT = "SGLANG_EXT_REPORTS"
PREFILL_DONE = 0
FINISHED = 1


class WorkerReport(msgspec.Struct, array_like=True, gc=False):
    kind: int  # PREFILL_DONE or FINISHED
    rid: str
    dp_rank: int
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


class ReportBatch(msgspec.Struct, array_like=True, gc=False):
    dp_rank: int
    reports: list[WorkerReport]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ReportBatch)


def decode_batch(frame: bytes) -> ReportBatch:
    """Decode one message; raises msgspec.DecodeError on a malformed frame."""
    return _decoder.decode(frame)


def encode_batch(batch: ReportBatch) -> bytes:
    return _encoder.encode(batch)


class ReportPublisher:
    """Scheduler side: turns each step's requests into reports (one instance per process)."""

    def __init__(self, endpoint: str, dp_rank: int):
        self.dp_rank = dp_rank
        self._socket = zmq.Context.instance().socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Never block the scheduler: past this many queued messages, drop (the controller
        # expires what it never hears of).
        self._socket.setsockopt(zmq.SNDHWM, 10000)
        self._socket.connect(endpoint)
        self._prefilled: set[str] = set()

    def observe(self, reqs, skip_req=None) -> None:
        reports = []
        for req in reqs:
            if req is skip_req:
                continue
            rid = req.rid
            finished = req.finished()
            if finished and getattr(req, "finished_output", False):
                continue  # already reported (the overlap schedule streams a request twice)
            if rid not in self._prefilled and (finished or len(req.output_ids) > 0):
                self._prefilled.add(rid)
                reports.append(self._report(PREFILL_DONE, req))
            if finished:
                self._prefilled.discard(rid)
                reports.append(self._report(FINISHED, req))
        if reports:
            try:
                self._socket.send(encode_batch(ReportBatch(self.dp_rank, reports)), zmq.NOBLOCK)
            except zmq.Again:
                logger.warning("reports: controller not keeping up; dropped %d report(s)", len(reports))

    def _report(self, kind: int, req) -> WorkerReport:
        return WorkerReport(kind, req.rid, self.dp_rank, len(req.origin_input_ids),
                            int(getattr(req, "cached_tokens", 0) or 0), len(req.output_ids))


_publisher: ReportPublisher | None = None
_disabled = False


def stream_output_hook(*args, **kwargs):
    """BEFORE hook on `SchedulerOutputStreamer.stream_output(self, reqs, return_logprob,
    skip_req=None)`. Never raises into the scheduler."""
    global _publisher, _disabled
    if _disabled:
        return None
    try:
        if _publisher is None:
            endpoint = os.environ.get(ENV_ENDPOINT)
            if not endpoint:
                _disabled = True
                return None
            from sglang.srt.runtime_context import get_parallel

            _publisher = ReportPublisher(endpoint, int(get_parallel().dp_rank or 0))
        reqs = args[1] if len(args) > 1 else kwargs.get("reqs", [])
        skip_req = args[3] if len(args) > 3 else kwargs.get("skip_req")
        _publisher.observe(reqs, skip_req)
    except Exception:  # a reporting bug must never take a worker down
        logger.exception("reports: disabled after an error in the stream_output hook")
        _disabled = True
    return None
