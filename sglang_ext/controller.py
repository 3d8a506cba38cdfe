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
import re
import tempfile
import time
import uuid
from http import HTTPStatus
from types import SimpleNamespace

import zmq
from sglang.srt.managers.data_parallel_controller import DataParallelController
from sglang.srt.managers.io_struct import AbortReq, PickleWrapper, sock_recv, sock_send, wrap_as_pickle
from sglang.srt.utils.network import get_zmq_socket

from sglang_ext import completions
from sglang_ext.feeds import advertised_feeds
from sglang_ext.kv_events import EventFeedConfig, KVEventSubscriber
from sglang_ext.length_source import PredictedLengths
from sglang_ext.core.decision_times import DecisionTimes
from sglang_ext.core.load_check import reports_from_snapshots
from sglang_ext.core.namespaces import request_namespace
from sglang_ext.core.policies import POLICIES, LengthSource, Request
from sglang_ext.core.router import Router, RouterConfig
from sglang_ext.settings import (
    CLIENT_MAX_NEW_TOKENS_KEY,
    ENV_COST_MODEL,
    ENV_LENGTH_MODEL,
    ENV_LENGTH_SOURCE,
    ENV_POLICY,
    ENV_PREDICT_WAIT_MS,
    ENV_PREFIX_HOLDS,
    ENV_RUNTIME_DIR,
    ORACLE_OUTPUT_TOKENS_KEY,
)
from sglang_ext.status import ENV_STATUS_FILE, StatusWriter

logger = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when a request sets none
POLL_TIMEOUT_MS = 1000  # housekeeping (ledger expiry) runs at least this often
LOAD_CHECK_INTERVAL_S = 1.0  # how often the ledger is cross-checked with the workers' loads
PROCESS_CHECK_INTERVAL_S = 1.0  # how often the schedulers' processes are checked for exits
# Messages taken from one socket per poll round: a flood on one (a burst of requests, a
# storm of KV events) then cannot starve the others. ZMQ's poll is level-triggered, so
# what is left is reported ready again at once.
MAX_DRAIN_PER_ROUND = 256


class Unroutable(Exception):
    """A request no worker can take (none alive, or the client pinned a dead rank)."""


class ErrorReplies:
    """Answers a request the controller cannot route with an error the client sees.

    SGLang's schedulers end a request they will not run by sending `AbortReq` with a
    `finished_reason` to the tokenizer manager on `port_args.tokenizer_ipc_name`
    (`scheduler.py: send_abort_output`); the tokenizer manager turns an abort with a
    `status_code` in [400, 600) into that HTTP status for a non-streaming request and
    into a final chunk carrying the abort for a streaming one
    (`tokenizer_manager.py: _handle_abort_req`, `_handle_abort_finish_reason`). The
    reply carries the request's `http_worker_ipc`, as the scheduler's sender does
    (`scheduler_components/output_sender.py`), so that a multi-tokenizer router
    delivers it to the HTTP worker that holds the client.
    """

    def __init__(self, context: zmq.Context, tokenizer_endpoint: str):
        # SGLang's own socket factory, as the scheduler's: unlimited send queue, connect.
        self.socket = get_zmq_socket(context, zmq.PUSH, tokenizer_endpoint, False)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.sent = 0

    def reject(self, message, reason: str, status: HTTPStatus = HTTPStatus.SERVICE_UNAVAILABLE) -> None:
        abort = AbortReq(
            rid=message.rid, http_worker_ipc=getattr(message, "http_worker_ipc", None),
            finished_reason={"type": "abort", "message": reason, "status_code": int(status),
                             "err_type": "unroutable"},
            abort_message=reason,
        )
        sock_send(self.socket, abort)
        self.sent += 1

    def close(self) -> None:
        self.socket.close(0)


def _policy_name(stock_method: str) -> str | None:
    """The policy our router runs, or None to keep SGLang's own dispatch method."""
    name = os.environ.get(ENV_POLICY) or stock_method
    if name in POLICIES:
        return name
    if os.environ.get(ENV_POLICY):
        raise ValueError(f"{ENV_POLICY}={name!r} is not a known policy; valid: {', '.join(POLICIES)}")
    return None  # e.g. follow_bootstrap_room (PD disaggregation): stock behaviour


class PrefixAwareController(DataParallelController):
    """Stock launch and message handling; our routing and a blocking event loop.

    Invariants: every tokenized request that arrives is sent to a worker, held (for
    its prefix or its length prediction) and sent later, or answered with an error
    reply (`ErrorReplies`); none is dropped silently. The ledger holds a request only
    while its send succeeded (a failed send is undone with `Router.cancel`). No step
    of the event loop may end it: SGLang kills the whole server when the controller
    process exits.
    """

    def __init__(self, server_args, port_args, run_scheduler_process_func, prelaunched_schedulers=None):
        # Bind the workers' report socket before the schedulers are spawned, so that
        # they inherit its address through the environment.
        self._reports_context = zmq.Context.instance()
        self.recv_reports = self._reports_context.socket(zmq.PULL)
        self.recv_reports.setsockopt(zmq.LINGER, 0)
        folder = os.environ.get(ENV_RUNTIME_DIR) or tempfile.gettempdir()
        endpoint = f"ipc://{folder}/sglang_ext_reports_{uuid.uuid4().hex[:12]}"
        self.recv_reports.bind(endpoint)
        os.environ[completions.ENV_ENDPOINT] = endpoint
        super().__init__(server_args, port_args, run_scheduler_process_func, prelaunched_schedulers)
        # Ranks in SGLang's Ray actors bind their own report sockets and advertise them
        # in their init info (feeds.py); local ranks advertise nothing and push to ours.
        self.rank_feeds = advertised_feeds(self._scheduler_init_infos, self.max_dp_size)
        for feeds in self.rank_feeds.values():
            self.recv_reports.connect(feeds.reports)
        if self.rank_feeds:
            logger.info("controller: feeds the ranks advertised: %s",
                        {r: f.as_dict() for r, f in sorted(self.rank_feeds.items())})
        self.rank_processes = _rank_processes(getattr(self, "scheduler_procs", None) or [])
        self._init_ours(server_args, ErrorReplies(self.context, port_args.tokenizer_ipc_name))

    def _init_ours(self, server_args, replies: ErrorReplies, router_config: RouterConfig | None = None,
                   lengths: PredictedLengths | None = None) -> None:
        """Everything beyond the stock constructor (tests call it on a bare instance
        with the stock attributes it reads set by hand)."""
        self.replies = replies
        self.bad_reports = 0
        self.unroutable = 0  # requests answered with an error reply
        self.fallback_routed = 0  # requests sent to a fallback worker after a routing error
        self.housekeeping_errors = 0
        self.decision_times = DecisionTimes()  # wall time of router.route, for the status file
        self._fallback_counter = 0
        self._last_load_check_s = float("-inf")
        self._last_process_check_s = float("-inf")
        self.dead_ranks: dict[int, str] = {}  # rank -> why: its scheduler process exited
        self.failed_in_flight = 0  # requests answered with an error because their rank died
        self.router: Router | None = None
        self._held: dict[str, object] = {}  # rid -> message held for its prefix (router.holds)
        self.kv_subscriber: KVEventSubscriber | None = None
        self.status_writer: StatusWriter | None = None
        self.lengths: PredictedLengths | None = None
        stock = self.load_balance_method.name.lower()
        name = router_config.policy if router_config is not None else _policy_name(stock)
        if name is None:
            logger.info("controller: keeping SGLang's %s dispatch, with a blocking event loop", stock)
            return
        feed = EventFeedConfig.from_server_args(getattr(server_args, "kv_events_config", None))
        if feed is not None and getattr(self, "rank_feeds", None):
            feed = feed.at_advertised(self.rank_feeds)
        self.router = Router(router_config or RouterConfig(
            policy=name,
            num_workers=self.max_dp_size,
            page_size=max(1, int(getattr(server_args, "page_size", 1) or 1)),
            kv_capacity_tokens=int(self.max_total_num_tokens),
            length_source=LengthSource(os.environ.get(ENV_LENGTH_SOURCE, LengthSource.MAX_NEW_TOKENS.value)),
            exact_mirror=feed is not None,
            cost_model=os.environ.get(ENV_COST_MODEL) or RouterConfig.cost_model,
            prefix_holds=os.environ.get(ENV_PREFIX_HOLDS, "on") != "off",
        ))
        if feed is not None:
            self.kv_subscriber = KVEventSubscriber(feed, self.router.tree)
        for w in range(self.max_dp_size):
            self.router.set_alive(w, self._is_alive(w), time.monotonic())
        self.dispatching = self.dispatch_by_policy
        # Our ledger is exact; the stock 20 ms snapshot refresh is not needed.
        self.refresh_load_budget_on_dispatch = False
        self.dispatched_by_worker = [0] * self.max_dp_size
        if lengths is not None:
            self.lengths = lengths
        elif self.router.config.length_source is LengthSource.PREDICTED:
            self.lengths = PredictedLengths(
                os.environ.get(ENV_LENGTH_MODEL), float(os.environ.get(ENV_PREDICT_WAIT_MS, "20")),
                self._reports_context, getattr(server_args, "tokenizer_path", None) or server_args.model_path,
            )
        status_path = os.environ.get(ENV_STATUS_FILE)
        self.status_writer = StatusWriter(status_path) if status_path else None

    # ---------------------------------------------------------------- dispatch

    def dispatching_with_trace(self, req, refresh_load_budget: bool = True):
        """The stock entry for every tokenized request (single or one of a batch), our
        routing or SGLang's: a request that cannot be routed gets an error reply
        instead of an exception that would drop it (and, in a batch, the rest)."""
        try:
            super().dispatching_with_trace(req, refresh_load_budget)
        except Exception as exc:
            self._reject(req, f"could not route the request: {exc}")

    def dispatch_by_policy(self, req) -> None:
        now = time.monotonic()
        request = _request_of(req)
        if req.routed_dp_rank is not None:
            # The client pinned a rank: honour it (as SGLang's
            # `maybe_external_dp_rank_routing` does), then account for the load it adds.
            worker = self._pinned_worker(req.routed_dp_rank)
            sock_send(self.workers[worker], req)
            self._book_pinned(request, worker, now)
        elif self.lengths is not None and self.lengths.park(req, request, now):
            return  # dispatched by `_release_predicted` once its length is predicted
        else:
            self._route_and_send(req, request, now)

    def _pinned_worker(self, rank) -> int:
        if not isinstance(rank, int) or not 0 <= rank < self.max_dp_size or self.workers[rank] is None:
            raise Unroutable(f"routed_dp_rank={rank} is not a DP rank of this server (0..{self.max_dp_size - 1})")
        if not self._is_alive(rank):
            raise Unroutable(f"routed_dp_rank={rank} is not active")
        return rank

    def _book_pinned(self, request: Request, worker: int, now: float) -> None:
        """Ledger and status for a pinned request already sent; an error here must not
        reach `dispatching_with_trace` (the client would get an error for a request
        that runs)."""
        try:
            cached = self.router.cached_tokens(request)
            self.router.record_dispatch(request, worker, cached[worker], now)
            self._count_dispatch(request.rid, worker, cached, now)
        except Exception:
            self.housekeeping_errors += 1
            logger.exception("controller: rid=%s sent to rank %d but not booked", request.rid, worker)

    def _route_and_send(self, message, request: Request, now: float) -> None:
        """Route, then send or hold. Raises `Unroutable` (nothing booked, nothing sent)
        when no worker is alive or the send failed."""
        if not any(self.router.ledger.loads[w].alive for w in range(self.max_dp_size)):
            raise Unroutable("no DP worker is alive")
        try:
            started_ns = time.perf_counter_ns()
            decision = self.router.route(request, now)
            self.decision_times.record(time.perf_counter_ns() - started_ns)
        except Exception:
            # A routing bug must not cost the client its request: send it to a live
            # worker in turn, and book it there (re-booking replaces a half-made placement).
            logger.exception("controller: routing failed for rid=%s; sent to a fallback worker", request.rid)
            self.fallback_routed += 1
            worker = self._fallback_worker()
            self._send_or_cancel(worker, message, request.rid, now)
            self._book_pinned(request, worker, now)
            return
        if decision.held:
            self._held[request.rid] = message  # sent by `_send_released` after its leader's prefill
        else:
            self._send_or_cancel(decision.worker, message, request.rid, now)
        try:
            self._count_dispatch(request.rid, decision.worker, decision.cached_tokens, now)
        except Exception:
            self.housekeeping_errors += 1
            logger.exception("controller: could not record the decision for rid=%s", request.rid)

    def _send_or_cancel(self, worker: int, message, rid: str, now: float) -> None:
        try:
            sock_send(self.workers[worker], message)
        except Exception as exc:
            self.router.cancel(rid, now)
            raise Unroutable(f"send to rank {worker} failed: {exc}") from exc

    def _fallback_worker(self) -> int:
        alive = [w for w in range(self.max_dp_size) if self._is_alive(w)]
        if not alive:
            raise Unroutable("no DP worker is alive")
        self._fallback_counter += 1
        return alive[self._fallback_counter % len(alive)]

    def _reject(self, message, reason: str) -> None:
        """Answer a request that cannot be routed with an error the client sees."""
        self.unroutable += 1
        logger.error("controller: rid=%s answered with an error: %s", getattr(message, "rid", "-"), reason)
        if self.status_writer is not None:
            self.status_writer.mark_dirty()
        try:
            self.replies.reject(message, reason)
        except Exception:
            logger.exception("controller: could not send the error reply for rid=%s", getattr(message, "rid", "-"))

    def _send_released(self, now: float) -> None:
        """Send the requests the router no longer holds (see `sglang_ext/core/prefix_hold.py`)."""
        for rid in self.router.take_released(now):
            message = self._held.pop(rid, None)
            if message is None:
                continue
            _rewrap_time_stats(message)
            try:
                worker = self.router.ledger.worker_of(rid)
                if worker is None or not self.router.ledger.loads[worker].alive:
                    # Its worker went down while it waited (or it expired): route it afresh.
                    self._route_and_send(message, _request_of(message), now)
                else:
                    self._send_or_cancel(worker, message, rid, now)
            except Exception as exc:
                self._reject(message, f"could not send the held request: {exc}")

    def _release_predicted(self, now: float) -> None:
        for released in self.lengths.collect(now, self.router):
            message = released.payload
            _rewrap_time_stats(message)
            try:
                self._route_and_send(message, released.request, now)
            except Exception as exc:
                self._reject(message, f"could not route the request after its prediction: {exc}")

    def _count_dispatch(self, rid: str, worker: int, cached: list[int], now: float) -> None:
        self.dispatched_by_worker[worker] += 1
        if self.status_writer is not None:
            self.status_writer.record_decision(rid, worker, cached, now)

    def _is_alive(self, worker: int) -> bool:
        # The stock `update_active_ranks` updates only `status` outside elastic EP, not
        # `_active_workers`; both flags are read here.
        return (bool(self.status[worker]) and bool(self.dp_active[worker]) and self.workers[worker] is not None
                and worker not in self.dead_ranks)

    def _check_scheduler_processes(self, now: float) -> None:
        """A rank whose scheduler process exited (killed, crashed outside Python) is
        down for good: SGLang 0.5.23 does not notice, since the server's subprocess
        watchdog watches this controller process and the detokenizer, not the
        schedulers this process started (`entrypoints/engine.py`, `SubprocessWatchdog`),
        and the stock controller would keep sending it requests that never return.
        Here the rank becomes unroutable and each request in flight on it gets an
        error reply at once, instead of a client waiting forever."""
        for rank, processes in getattr(self, "rank_processes", {}).items():
            if rank in self.dead_ranks:
                continue
            exited = [p for p in processes if not p.is_alive()]
            if not exited:
                continue
            reason = (f"the scheduler of DP rank {rank} (pid {exited[0].pid}) exited with code "
                      f"{exited[0].exitcode}")
            self.dead_ranks[rank] = reason
            in_flight = self.router.ledger.rids_on(rank) if self.router is not None else []
            logger.error("controller: %s; rank %d is unroutable from now on, %d request(s) in flight on "
                         "it get an error reply", reason, rank, len(in_flight))
            self._sync_alive()
            for rid in in_flight:
                self.failed_in_flight += 1
                self._reject(SimpleNamespace(rid=rid), f"{reason} while serving this request")

    def update_active_ranks(self, ranks) -> None:
        """SGLang's rank-status message (`ActiveRanksOutput`, sent by the schedulers under
        elastic EP, `scheduler.py: _maybe_report_active_ranks`): the stock method updates
        `status`; the router follows (a rank that went down is unroutable, one that came
        back starts clean, see `Router.set_alive`)."""
        super().update_active_ranks(ranks)
        self._sync_alive()

    def add_elastic_workers(self, slot_offset: int, slot_count: int) -> None:
        """SGLang's elastic scale-up (`ElasticScaleUpdateReq`, `data_parallel_controller.py:
        add_elastic_workers`): the stock method activates DP slots bound at launch
        (`max_dp_size` of them; the router has one worker per slot from the start);
        the router makes them routable, clean.

        Under elastic EP every scheduler files each new request's cache entries under
        the current EP size (`scheduler.py: _maybe_namespace_elastic_radix_cache` sets
        `extra_key = "elastic_ep_size=N"`), a namespace the KV events do not name
        (`core/namespaces.py`): after a scale-up no request can use a page cached
        before it, so every worker's mirror is forgotten (rebuilt from new events)."""
        super().add_elastic_workers(slot_offset, slot_count)
        self._sync_alive()
        if self.router is not None:
            for w in range(self.max_dp_size):
                self.router.forget_cache(w)

    def _sync_alive(self) -> None:
        if self.router is not None:
            now = time.monotonic()
            for w in range(self.max_dp_size):
                self.router.set_alive(w, self._is_alive(w), now)

    # -------------------------------------------------------------- event loop

    def event_loop(self):
        # The start-up heap (SGLang, torch, transformers: millions of objects) never
        # dies; freezing it keeps full GC collections, which would scan all of it, off
        # the dispatch path. Objects made from now on (the mirror's) are collected as usual.
        gc.collect()
        gc.freeze()
        poller = self._make_poller()
        while True:
            self.soft_watchdog.feed()
            self.run_once(poller, self._guarded_value("the poll timeout", self._poll_timeout_ms, POLL_TIMEOUT_MS))

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.recv_from_tokenizer, zmq.POLLIN)
        poller.register(self.recv_reports, zmq.POLLIN)
        for sock in self.kv_subscriber.sockets() if self.kv_subscriber else []:
            poller.register(sock, zmq.POLLIN)
        if self.lengths is not None:
            poller.register(self.lengths.wakeup, zmq.POLLIN)
        return poller

    def run_once(self, poller: zmq.Poller, timeout_ms: int) -> None:
        """One poll round: drain what is ready (each socket at most
        `MAX_DRAIN_PER_ROUND` messages), then the housekeeping steps, each guarded."""
        ready = dict(poller.poll(timeout_ms))
        # Cache events and reports first: the next dispatch should see them.
        now = time.monotonic()
        if self.kv_subscriber is not None:
            for sock in self.kv_subscriber.sockets():
                if sock in ready:
                    self._guarded("a KV-event frame", self.kv_subscriber.handle, sock, now, MAX_DRAIN_PER_ROUND)
            self._guarded("the KV-event replay timeouts", self.kv_subscriber.applier.check_timeouts, now)
        if self.recv_reports in ready:
            self._guarded("a worker report", self._drain_reports)
        if self.recv_from_tokenizer in ready:
            self._guarded("the tokenizer's messages", self._drain_tokenizer)
        if self.lengths is not None:
            self._guarded("the length predictions", self._release_predicted, time.monotonic())
        if self.router is None:
            return
        now = time.monotonic()
        if self._held:
            self._guarded("held requests", self._send_released, now)
        self._guarded("the ledger expiry", self.router.expire, now)
        if now - self._last_load_check_s >= LOAD_CHECK_INTERVAL_S:
            self._last_load_check_s = now
            self._guarded("the workers' load snapshots", self._check_loads, now)
        if now - self._last_process_check_s >= PROCESS_CHECK_INTERVAL_S:
            self._last_process_check_s = now
            self._guarded("the schedulers' processes", self._check_scheduler_processes, now)
        if self.status_writer is not None:
            if ready:
                self.status_writer.mark_dirty()
            self._guarded("the status file", self.status_writer.maybe_write, now, self.status_snapshot)

    def _guarded(self, what: str, fn, *args) -> None:
        """The controller must outlive any bad input or bad moment: log it and carry on."""
        try:
            fn(*args)
        except Exception:
            self.housekeeping_errors += 1
            logger.exception("controller: error while handling %s; skipped", what)

    def _guarded_value(self, what: str, fn, default):
        try:
            return fn()
        except Exception:
            self.housekeeping_errors += 1
            logger.exception("controller: error while computing %s; using %r", what, default)
            return default

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
            "unroutable": {"error_replies": self.unroutable, "fallback_routed": self.fallback_routed,
                           "failed_in_flight": self.failed_in_flight},
            "dead_ranks": {str(rank): why for rank, why in self.dead_ranks.items()},
            "housekeeping_errors": self.housekeeping_errors,
            "decision_time": self.decision_times.status(),
            "length_predictions": None if self.lengths is None else self.lengths.status(time.monotonic()),
        })
        return snapshot

    def _drain_tokenizer(self) -> None:
        for _ in range(MAX_DRAIN_PER_ROUND):
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
                # Requests never get here (`dispatching_with_trace` answers them); a
                # control message that failed is logged.
                logger.error("controller: could not dispatch %s (rid=%s): %s",
                             type(message).__name__, getattr(message, "rid", "-"), exc)

    def _drain_reports(self) -> None:
        for _ in range(MAX_DRAIN_PER_ROUND):
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
                    if self.kv_subscriber is not None:  # evidence for silent-feed detection
                        self.kv_subscriber.applier.on_work_done(batch.dp_rank, now)
                    self.router.finished(report.rid, report.output_tokens, now)
                    if self.lengths is not None:
                        self.lengths.forget(report.rid)


def _rank_processes(processes) -> dict[int, list]:
    """DP rank -> the scheduler processes this controller started for it, read from the
    title each scheduler gives itself once started: `sglang::scheduler_DP<rank>`, then
    `_PP<n>`, `_TP<n>`... (SGLang 0.5.23, `scheduler.py: run_scheduler_process`). The
    ranks' threads start them concurrently (`data_parallel_controller.py`), so list
    order says nothing, and `multiprocessing` drops a process's arguments once it
    started. A process without such a title is left unwatched."""
    ranks: dict[int, list] = {}
    for proc in processes:
        match = _SCHEDULER_TITLE.match(_process_title(proc.pid))
        if match:
            ranks.setdefault(int(match.group(1)), []).append(proc)
    return ranks


_SCHEDULER_TITLE = re.compile(r"sglang::scheduler_DP(\d+)(?![0-9])")


def _process_title(pid) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, TypeError):
        return ""


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
    # The request's cache namespace, from the fields SGLang's scheduler forms it from
    # (`schedule_batch.py`, `Req.__init__`; see `core/namespaces.py`).
    namespace = request_namespace(getattr(req, "extra_key", None), getattr(req, "cache_salt", None),
                                  getattr(req, "lora_id", None), getattr(req, "lora_name", None))
    return Request(rid=req.rid, input_ids=req.input_ids, max_new_tokens=max_new,
                   oracle_output_tokens=oracle, namespace=namespace)


__all__ = ["PrefixAwareController"]
