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
hook does nothing. In SGLang's Ray actors (advertise mode, `ray_actors.py`) the
direction of setup flips: each rank binds its PUSH on its node's feed host and
advertises the endpoint (`feeds.py`), and the controller connects to every rank. Reports
are msgspec array-like structs, one message per step.
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

    def __init__(self, endpoint: str, dp_rank: int, bind: bool = False):
        self.dp_rank = dp_rank
        self._socket = zmq.Context.instance().socket(zmq.PUSH)
        self._socket.setsockopt(zmq.LINGER, 0)
        # Never block the scheduler: past this many queued messages, drop (the controller
        # expires what it never hears of).
        self._socket.setsockopt(zmq.SNDHWM, 10000)
        if bind:
            # Until the controller connects, a send finds no peer and is dropped (NOBLOCK).
            self._socket.bind(endpoint)
            self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        else:
            self._socket.connect(endpoint)
            self.endpoint = endpoint
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
    global _disabled
    if _disabled:
        return None
    try:
        publisher = ensure_publisher()
        if publisher is None:
            return None
        reqs = args[1] if len(args) > 1 else kwargs.get("reqs", [])
        skip_req = args[3] if len(args) > 3 else kwargs.get("skip_req")
        publisher.observe(reqs, skip_req)
    except Exception:  # a reporting bug must never take a worker down
        logger.exception("reports: disabled after an error in the stream_output hook")
        _disabled = True
    return None


def ensure_publisher() -> ReportPublisher | None:
    """This process's publisher, made on first use; None when reports are off.

    Local path: connect to the controller's endpoint from the environment. Ray actors
    (advertise mode): bind on this node's feed host, on a port the kernel picks; the
    rank's init info advertises it (`feeds.init_info_hook`, called before any request)."""
    global _publisher, _disabled
    if _publisher is not None or _disabled:
        return _publisher
    from sglang.srt.runtime_context import get_parallel

    from sglang_ext import ray_actors
    from sglang_ext.feeds import tcp_endpoint

    rank = int(get_parallel().dp_rank or 0)
    if ray_actors.advertise_mode():
        _publisher = ReportPublisher(tcp_endpoint(ray_actors.feed_host(), "*"), rank, bind=True)
    elif os.environ.get(ENV_ENDPOINT):
        _publisher = ReportPublisher(os.environ[ENV_ENDPOINT], rank)
    else:
        _disabled = True
    return _publisher
