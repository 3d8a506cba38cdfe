"""Our replacement for SGLang's `DataParallelController`.

It subclasses the stock controller to keep its launch logic (schedulers, init pipes,
ready handshake), its type-based dispatch table (control messages broadcast, batches,
`BlockReqInput`/`ProfileReq` to all workers) and client-pinned `routed_dp_rank`; it
replaces two things:

1. the choice of worker: every request goes through a `Router` (mirror + ledger +
   policy), for SGLang's stock method names as well as ours;
2. the event loop: the stock loop busy-spins on a non-blocking `recv`, a whole core at
   100 % even when idle, which on small hosts starves the workers. Ours blocks in a
   `zmq.Poller` over all its sockets, with a timeout for housekeeping.

Settings come from the environment (`sglang_ext/settings.py`), set by
`python -m sglang_ext.launch_server`: the controller runs in a spawned process, and
SGLang's own argument parser knows nothing of our flags.
"""

from __future__ import annotations

import gc
import logging
import os
import tempfile
import time
import uuid

import zmq
from sglang.srt.managers.data_parallel_controller import DataParallelController
from sglang.srt.managers.io_struct import PickleWrapper, sock_recv, sock_send, wrap_as_pickle

from sglang_ext import completions
from sglang_ext.kv_events import EventFeedConfig, KVEventSubscriber
from sglang_ext.length_source import PredictedLengths
from sglang_ext.core.load_check import reports_from_snapshots
from sglang_ext.core.policies import POLICIES, LengthSource, Request
from sglang_ext.core.router import Router, RouterConfig
from sglang_ext.settings import (
    CLIENT_MAX_NEW_TOKENS_KEY,
    ENV_COST_MODEL,
    ENV_LENGTH_MODEL,
    ENV_LENGTH_SOURCE,
    ENV_POLICY,
    ENV_PREDICT_WAIT_MS,
    ORACLE_OUTPUT_TOKENS_KEY,
)
from sglang_ext.status import ENV_STATUS_FILE, StatusWriter

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when a request sets none
POLL_TIMEOUT_MS = 1000  # housekeeping (ledger expiry) runs at least this often
LOAD_CHECK_INTERVAL_S = 1.0  # how often the ledger is cross-checked with the workers' loads


def _policy_name(stock_method: str) -> str | None:
    """The policy our router runs, or None to keep SGLang's own dispatch method."""
    name = os.environ.get(ENV_POLICY) or stock_method
    if name in POLICIES:
        return name
    if os.environ.get(ENV_POLICY):
        raise ValueError(f"{ENV_POLICY}={name!r} is not a known policy; valid: {', '.join(POLICIES)}")
    return None  # e.g. follow_bootstrap_room (PD disaggregation): stock behaviour


class PrefixAwareController(DataParallelController):
    """Stock launch and message handling; our routing and a blocking event loop."""

    def __init__(self, server_args, port_args, run_scheduler_process_func, prelaunched_schedulers=None):
        # Bind the workers' report socket before the schedulers are spawned, so that
        # they inherit its address through the environment.
        self._reports_context = zmq.Context.instance()
        self.recv_reports = self._reports_context.socket(zmq.PULL)
        self.recv_reports.setsockopt(zmq.LINGER, 0)
        endpoint = f"ipc://{tempfile.gettempdir()}/sglang_ext_reports_{uuid.uuid4().hex[:12]}"
        self.recv_reports.bind(endpoint)
        os.environ[completions.ENV_ENDPOINT] = endpoint
        self.bad_reports = 0
        self._last_load_check_s = float("-inf")
        super().__init__(server_args, port_args, run_scheduler_process_func, prelaunched_schedulers)
        stock = self.load_balance_method.name.lower()
        name = _policy_name(stock)
        self.router: Router | None = None
        self._held: dict[str, object] = {}  # rid -> message held for its prefix (router.holds)
        self.kv_subscriber: KVEventSubscriber | None = None
        self.status_writer: StatusWriter | None = None
        self.lengths: PredictedLengths | None = None
        if name is None:
            logger.info("controller: keeping SGLang's %s dispatch, with a blocking event loop", stock)
            return
        feed = EventFeedConfig.from_server_args(getattr(server_args, "kv_events_config", None))
        self.router = Router(RouterConfig(
            policy=name,
            num_workers=self.max_dp_size,
            page_size=max(1, int(getattr(server_args, "page_size", 1) or 1)),
            kv_capacity_tokens=int(self.max_total_num_tokens),
            length_source=LengthSource(os.environ.get(ENV_LENGTH_SOURCE, LengthSource.MAX_NEW_TOKENS.value)),
            exact_mirror=feed is not None,
            cost_model=os.environ.get(ENV_COST_MODEL) or RouterConfig.cost_model,
        ))
        if feed is not None:
            self.kv_subscriber = KVEventSubscriber(feed, self.router.tree)
        for w in range(self.max_dp_size):
            self.router.set_alive(w, w in self._active_workers, time.monotonic())
        self.dispatching = self.dispatch_by_policy
        # Our ledger is exact; the stock 20 ms snapshot refresh is not needed.
        self.refresh_load_budget_on_dispatch = False
        self.dispatched_by_worker = [0] * self.max_dp_size
        if self.router.config.length_source is LengthSource.PREDICTED:
            self.lengths = PredictedLengths(
                os.environ.get(ENV_LENGTH_MODEL), float(os.environ.get(ENV_PREDICT_WAIT_MS, "20")),
                self._reports_context, getattr(server_args, "tokenizer_path", None) or server_args.model_path,
            )
        status_path = os.environ.get(ENV_STATUS_FILE)
        self.status_writer = StatusWriter(status_path) if status_path else None

    # ---------------------------------------------------------------- dispatch

    def dispatch_by_policy(self, req) -> None:
        now = time.monotonic()
        request = _request_of(req)
        if req.routed_dp_rank is not None:
            # The client pinned a rank: honour it (the stock helper validates it and
            # raises for a dead rank), and still account for the load it adds.
            self.maybe_external_dp_rank_routing(req)
            worker = req.routed_dp_rank
            cached = self.router.cached_tokens(request)
            self.router.record_dispatch(request, worker, cached[worker], now)
        elif self.lengths is not None and self.lengths.park(req, request, now):
            return  # dispatched by `_release_predicted` once its length is predicted
        else:
            decision = self.router.route(request, now)
            worker, cached = decision.worker, decision.cached_tokens
            if decision.held:
                self._held[req.rid] = req  # sent by `_send_released` after its leader's prefill
            else:
                sock_send(self.workers[worker], req)
        self._count_dispatch(req.rid, worker, cached, now)

    def _send_released(self, now: float) -> None:
        """Send the requests the router no longer holds (see `sglang_ext/core/prefix_hold.py`)."""
        for rid in self.router.take_released(now):
            message = self._held.pop(rid, None)
            if message is None:
                continue
            _rewrap_time_stats(message)
            worker = self.router.ledger.worker_of(rid)
            if worker is None or not self.router.ledger.loads[worker].alive:
                # Its worker went down while it waited: route it afresh.
                decision = self.router.route(_request_of(message), now)
                worker = decision.worker
                if decision.held:
                    self._held[rid] = message
                    continue
            sock_send(self.workers[worker], message)

    def _release_predicted(self, now: float) -> None:
        for message, request in self.lengths.collect(now, self.router):
            _rewrap_time_stats(message)
            try:
                decision = self.router.route(request, now)
                if decision.held:
                    self._held[request.rid] = message
                else:
                    sock_send(self.workers[decision.worker], message)
            except Exception as exc:
                logger.error("controller: could not dispatch rid=%s after prediction: %s", request.rid, exc)
                continue
            self._count_dispatch(request.rid, decision.worker, decision.cached_tokens, now)

    def _count_dispatch(self, rid: str, worker: int, cached: list[int], now: float) -> None:
        self.dispatched_by_worker[worker] += 1
        if self.status_writer is not None:
            self.status_writer.record_decision(rid, worker, cached, now)

    def update_active_ranks(self, ranks) -> None:
        super().update_active_ranks(ranks)
        if self.router is not None:
            now = time.monotonic()
            for w in range(self.max_dp_size):
                self.router.set_alive(w, bool(self.status[w]) and self.dp_active[w], now)

    # -------------------------------------------------------------- event loop

    def event_loop(self):
        # The start-up heap (SGLang, torch, transformers: millions of objects) never
        # dies; freezing it keeps full GC collections, which would scan all of it, off
        # the dispatch path. Objects made from now on (the mirror's) are collected as usual.
        gc.collect()
        gc.freeze()
        poller = zmq.Poller()
        poller.register(self.recv_from_tokenizer, zmq.POLLIN)
        poller.register(self.recv_reports, zmq.POLLIN)
        event_sockets = self.kv_subscriber.sockets() if self.kv_subscriber else []
        for sock in event_sockets:
            poller.register(sock, zmq.POLLIN)
        if self.lengths is not None:
            poller.register(self.lengths.wakeup, zmq.POLLIN)
        while True:
            self.soft_watchdog.feed()
            ready = dict(poller.poll(self._poll_timeout_ms()))
            # Cache events and reports first: the next dispatch should see them.
            now = time.monotonic()
            for sock in event_sockets:
                if sock in ready:
                    self._guarded("a KV-event frame", self.kv_subscriber.handle, sock, now)
            if self.kv_subscriber is not None:
                self.kv_subscriber.applier.check_timeouts(now)
            if self.recv_reports in ready:
                self._guarded("a worker report", self._drain_reports)
            if self.recv_from_tokenizer in ready:
                self._drain_tokenizer()
            if self.lengths is not None:
                self._release_predicted(time.monotonic())
            if self.router is not None:
                now = time.monotonic()
                if self._held:
                    self._guarded("held requests", self._send_released, now)
                self.router.expire(now)
                if now - self._last_load_check_s >= LOAD_CHECK_INTERVAL_S:
                    self._last_load_check_s = now
                    self._guarded("the workers' load snapshots", self._check_loads, now)
                if self.status_writer is not None:
                    if ready:
                        self.status_writer.mark_dirty()
                    self.status_writer.maybe_write(now, self.status_snapshot)

    @staticmethod
    def _guarded(what: str, fn, *args) -> None:
        """The controller must outlive any bad input: log it and carry on."""
        try:
            fn(*args)
        except Exception:
            logger.exception("controller: error while handling %s; skipped", what)

    def _check_loads(self, now: float) -> None:
        """Cross-check the ledger with the load snapshots the schedulers publish in
        shared memory (SGLang's own feed; see `load_check.py`). Runs after worker
        reports were drained, as the cross-check requires."""
        snapshots = self.load_snapshot_reader.read_all()
        for report in reports_from_snapshots(snapshots, now, time.time()):
            if 0 <= report.worker < self.max_dp_size:
                self.router.reconcile(report, now)

    def _poll_timeout_ms(self) -> int:
        deadlines = [d for d in (self.lengths.next_deadline_s() if self.lengths is not None else None,
                                 self.router.holds.next_deadline_s() if self._held else None)
                     if d is not None]
        deadline = min(deadlines) if deadlines else None
        if deadline is None:
            return POLL_TIMEOUT_MS
        return max(0, min(POLL_TIMEOUT_MS, int((deadline - time.monotonic()) * 1000) + 1))

    def status_snapshot(self) -> dict:
        snapshot = self.router.snapshot()
        snapshot["prefix_holds"]["held_now"] = len(self._held)
        snapshot.update({
            "dispatched_by_worker": self.dispatched_by_worker,
            "kv_events": self.kv_subscriber.applier.stats if self.kv_subscriber else None,
            "bad_reports": self.bad_reports,
            "length_predictions": None if self.lengths is None else {
                "predicted_in_time": self.lengths.predicted, "fallbacks": self.lengths.fallbacks,
                "failed": self.lengths.failed,
            },
        })
        return snapshot

    def _drain_tokenizer(self) -> None:
        while True:
            try:
                message = sock_recv(self.recv_from_tokenizer, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            except Exception as exc:  # an undecodable frame must not kill the controller
                logger.error("controller: dropped an undecodable message from the tokenizer: %s", exc)
                continue
            try:
                self._request_dispatcher(message)
            except Exception as exc:
                logger.error("controller: could not dispatch %s (rid=%s): %s",
                             type(message).__name__, getattr(message, "rid", "-"), exc)


    def _drain_reports(self) -> None:
        while True:
            try:
                frame = self.recv_reports.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if self.router is None:
                continue
            try:
                batch = completions.decode_batch(frame)
            except Exception as exc:
                self.bad_reports += 1
                logger.error("controller: skipped a malformed worker report (%d so far): %s", self.bad_reports, exc)
                continue
            now = time.monotonic()
            for report in batch.reports:
                if report.kind == completions.PREFILL_DONE:
                    self.router.prefill_done(report.rid, now)
                elif report.kind == completions.FINISHED:
                    self.router.finished(report.rid, report.output_tokens, now)


def _rewrap_time_stats(message) -> None:
    """`dispatching_with_trace` unwrapped the time stats after we kept the message back;
    the wire format needs them wrapped again."""
    if getattr(message, "time_stats", None) is not None and not isinstance(message.time_stats, PickleWrapper):
        message.time_stats = wrap_as_pickle(message.time_stats)


def _request_of(req) -> Request:
    """What a policy may know of a tokenized request.

    A client (our trace replay) that forces each output's length rewrites
    `max_new_tokens` to that length; it then declares the budget it would have sent and
    the true length in `sampling_params.custom_params`, so that the `max_new_tokens` and
    `oracle` length sources stay distinct in experiments.
    """
    params = getattr(req, "sampling_params", None)
    value = getattr(params, "max_new_tokens", None)
    max_new = int(value) if value is not None else DEFAULT_MAX_NEW_TOKENS
    custom = getattr(params, "custom_params", None) or {}
    oracle = None
    if isinstance(custom, dict):
        declared = custom.get(CLIENT_MAX_NEW_TOKENS_KEY)
        if isinstance(declared, int) and declared > 0:
            max_new = declared
        oracle = custom.get(ORACLE_OUTPUT_TOKENS_KEY)
        oracle = oracle if isinstance(oracle, int) and oracle >= 0 else None
    return Request(rid=req.rid, input_ids=req.input_ids, max_new_tokens=max_new,
                   oracle_output_tokens=oracle)


__all__ = ["PrefixAwareController"]
