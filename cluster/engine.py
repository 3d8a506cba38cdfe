"""The simulator's event loop: trace arrivals -> one controller thread (the unchanged
`Router`) -> simulated SGLang workers -> reports, KV events and load reports back.

Design note (the invariants the loop keeps):
- One heap of `(time_s, insertion number, kind, a, b)`: events at the same simulated time
  run in the order they were scheduled, so a run is a pure function of (trace, config).
  Simulated time only: the host clock is read in `measured` decision-time mode alone (the
  CPU time of each `Router.route` call, charged as its decision time).
- The controller is one thread, as SGLang's data-parallel controller is
  (`srt/managers/data_parallel_controller.py`, one event loop): requests queue at it; a
  decision reads the router's state when it starts and keeps the controller busy for its
  decision time; KV events and reports that arrive meanwhile wait in its inbox and are
  applied, in arrival order, when it is free, before the next decision (the live
  controller applies events and reports before dispatching, `sglang_ext/controller.py`).
- A worker steps back to back while it has work; a step's effects (first tokens,
  finishes, KV events) exist at the step's end. Its KV events reach the mirror after
  `event_delay_ms`, its prefill-done / finished reports reach the router after
  `report_delay_ms`, and every `load_report_interval_ms` each worker's own load reaches
  `Router.reconcile` (after `report_delay_ms`): the router decides on a stale view, as a
  live one does.
- A held decision (`Decision.held`, `sglang_ext/core/prefix_hold.py`) waits in the
  controller until `Router.take_released` names it; that is asked after every delivery.
- Elastic workers (`SimConfig.worker_joins`): a worker that joins later is marked down in
  the router from the start and up at its time, through `Router.set_alive`, the call the
  live controller makes on SGLang's elastic scale-up (`sglang_ext/controller.py`,
  `add_elastic_workers`); until then no policy routes to it.
- Every random stream derives from `SimConfig.seed` through `numpy.random.SeedSequence`.
"""

from __future__ import annotations

import heapq
import itertools
import time
from array import array
from collections import deque
from dataclasses import dataclass

import numpy as np

from cluster.checks import DebugChecks
from cluster.config import ResolvedConfig, SimConfig, resolve
from cluster.results import SimCounters, SimOutcome, build_outcome, write_outputs  # noqa: F401 (re-exported)
from cluster.worker import SimRequest, SimWorker, WorkerConfig
from sglang_ext.core.events import EventApplier
from sglang_ext.core.policies import LengthSource, Request
from sglang_ext.core.router import Router, RouterConfig
from traces.format import Trace
from traces.metrics import RequestResult

# Event kinds (ints: the heap compares them only after time and insertion number).
(ARRIVAL, DECIDED, AT_WORKER, STEP_END, KV_EVENTS, PREFILL_REPORT, FINISH_REPORT, LOAD_TICK, LOAD_REPORT,
 WORKER_JOIN) = range(10)


class SimulationError(RuntimeError):
    """The simulation could not complete (a worker stalled); the message is one line."""


@dataclass(slots=True)
class _Job:
    index: int
    request: Request        # what the router sees
    sim: SimRequest         # what the worker runs


def prepare_jobs(trace: Trace, config: SimConfig, output_seeds: np.random.SeedSequence) -> list[_Job]:
    """Router and worker requests of the trace, prompts tokenized once per trace."""
    requests = trace.requests[: config.max_requests] if config.max_requests else list(trace.requests)
    if not requests:
        raise ValueError("the trace holds no request to simulate")
    if config.length_source == LengthSource.PREDICTED.value:
        missing = next((r.id for r in requests if r.predicted_output_tokens is None), None)
        if missing is not None:
            raise ValueError(f"--length-source predicted: request {missing!r} has no predicted_output_tokens")
    texts = [r.prompt for r in requests if not r.input_ids]
    encoded: list[list[int]] = []
    if texts:
        from traces.tokenizer import load_tokenizer

        encoded = load_tokenizer(trace.header.tokenizer).encode_many(texts)
    encoded_iter = iter(encoded)
    # One output seed per request, in trace order: a request's output ids do not depend on
    # where it was routed or when it ran.
    seeds = np.random.default_rng(output_seeds).integers(0, 2**63 - 1, size=len(requests), dtype=np.int64)
    jobs = []
    for i, r in enumerate(requests):
        ids = array("q", r.input_ids if r.input_ids else next(encoded_iter))
        if not ids:
            raise ValueError(f"request {r.id!r}: its prompt is empty after tokenization")
        # With force_lengths the client asks for exactly the true length (ignore_eos), as
        # `traces replay --force-lengths` does; the router still sees the client's cap.
        max_new = r.output_tokens if config.force_lengths else r.max_new_tokens
        jobs.append(_Job(i, Request(r.id, ids, r.max_new_tokens, r.predicted_output_tokens, r.output_tokens),
                         SimRequest(r.id, ids, max_new, r.output_tokens, ignore_eos=config.force_lengths,
                                    output_seed=int(seeds[i]))))
    return jobs


class Simulation:
    """One run. `run()` returns the `SimOutcome`; an instance is used once."""

    def __init__(self, trace: Trace, resolved: ResolvedConfig):
        self.trace = trace
        self.resolved = resolved
        cfg = self.cfg = resolved.sim
        policy_seq, worker_seq, output_seq = np.random.SeedSequence(cfg.seed).spawn(3)
        self.jobs = prepare_jobs(trace, cfg, output_seq)
        self.by_rid = {job.request.rid: job for job in self.jobs}
        policy_seed = int(policy_seq.generate_state(1)[0])
        self.router = Router(RouterConfig(
            policy=cfg.policy, num_workers=cfg.gpus, page_size=cfg.page_size,
            kv_capacity_tokens=resolved.kv_capacity_tokens, length_source=LengthSource(cfg.length_source),
            exact_mirror=True, seed=policy_seed, cost_model=cfg.router_cost_model or cfg.cost_model,
            prefix_holds=cfg.prefix_holds))
        self.applier = EventApplier(self.router.tree, replay_available=False)
        wcfg = WorkerConfig(
            kv_capacity_tokens=resolved.kv_capacity_tokens, page_size=cfg.page_size,
            chunked_prefill_size=cfg.chunked_prefill_tokens, max_prefill_tokens=cfg.max_prefill_tokens,
            max_running_requests=cfg.max_running_requests, schedule_policy=cfg.schedule_policy,
            decode_log_interval=cfg.decode_log_interval_steps, context_length=cfg.context_length_tokens)
        self.workers = [SimWorker(w, wcfg, resolved.cost_model, int(s.generate_state(1)[0]))
                        for w, s in enumerate(worker_seq.spawn(cfg.gpus))]
        self.decision_time = resolved.decision_time
        self.counters = SimCounters.empty(cfg.gpus)
        self.results = [RequestResult(id=j.request.rid, arrival_s=trace_req.arrival_s, sent_s=trace_req.arrival_s,
                                      queue_delay_s=0.0, prefix_group=trace_req.prefix_group,
                                      session=trace_req.session, turn=trace_req.turn,
                                      expected_output_tokens=trace_req.output_tokens,
                                      prompt_tokens=len(j.sim.input_ids))
                        for j, trace_req in zip(self.jobs, trace.requests)]
        self.checks = DebugChecks(self) if cfg.debug_checks else None
        # Controller state.
        self._queue: deque[_Job] = deque()
        self._busy = False
        self._inbox: list[tuple] = []
        self._held: dict[str, tuple[_Job, int]] = {}   # rid -> (job, the worker it was routed to)
        # Per-worker state the debug checks read.
        self.stepping = [False] * cfg.gpus
        self.in_transit = [0] * cfg.gpus       # dispatched, not yet at the worker
        self.unreported = [0] * cfg.gpus       # finished, report not yet applied
        self.in_controller = [0] * cfg.gpus    # routed to the worker (ledger entry), not yet sent
        self.live_rids: list[set[str]] = [set() for _ in range(cfg.gpus)]   # routed, finish not applied
        self._heap: list[tuple] = []
        self._seq = itertools.count()
        self._finished = 0
        self._used = False
        self.joined_s: dict[int, float] = {}  # elastic workers: when each joined

    # ------------------------------------------------------------------ the loop

    def _push(self, t: float, kind: int, a=None, b=None) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), kind, a, b))

    def run(self) -> SimOutcome:
        if self._used:
            raise RuntimeError("a Simulation runs once; build a new one")
        self._used = True
        cfg = self.cfg
        event_delay, report_delay = cfg.event_delay_ms / 1e3, cfg.report_delay_ms / 1e3
        interval = cfg.load_report_interval_ms / 1e3
        arrivals = [r.arrival_s for r in self.trace.requests[: len(self.jobs)]]
        self._push(arrivals[0], ARRIVAL, 0)
        self._push(interval, LOAD_TICK)
        for w, join_s in sorted(cfg.joins().items()):
            if join_s > 0:
                self.router.set_alive(w, False, 0.0)
                self._push(join_s, WORKER_JOIN, w)
        heap, pop, push = self._heap, heapq.heappop, self._push
        now = 0.0
        while heap:
            now, _, kind, a, b = pop(heap)
            if kind == STEP_END:
                self._step_end(a, b, now, event_delay, report_delay)
            elif kind == KV_EVENTS or kind == PREFILL_REPORT or kind == FINISH_REPORT or kind == LOAD_REPORT:
                if self._busy:
                    self._inbox.append((kind, a, b))
                else:
                    self._deliver(kind, a, b, now)
                    self._release_held(now)
            elif kind == AT_WORKER:
                self.in_transit[b] -= 1
                self.workers[b].submit(a.sim, now)
                if not self.stepping[b]:
                    self._start_step(b, now)
            elif kind == ARRIVAL:
                if a + 1 < len(arrivals):
                    push(arrivals[a + 1], ARRIVAL, a + 1)
                self._queue.append(self.jobs[a])
                if not self._busy:
                    self._decide(now)
            elif kind == DECIDED:
                self._busy = False
                self._dispatch(a, b, now)
                for item in self._inbox:
                    self._deliver(*item, now)
                self._inbox.clear()
                self._release_held(now)
                self._decide(now)
            elif kind == WORKER_JOIN:
                self.router.set_alive(a, True, now)
                self.joined_s[a] = now
            elif kind == LOAD_TICK:
                for w, worker in enumerate(self.workers):
                    push(now + report_delay, LOAD_REPORT, worker.load_report(w, now))
                # Ticks stop once nothing else can happen: a stalled run ends (and is
                # reported) instead of ticking forever. Held requests wait for ticks (their
                # hold times out on a later delivery).
                if self._finished < len(self.jobs) and (heap or self._held):
                    push(now + interval, LOAD_TICK)
        if self._finished < len(self.jobs):
            stuck = [w for w, worker in enumerate(self.workers) if worker.has_work()]
            raise SimulationError(f"{len(self.jobs) - self._finished} of {len(self.jobs)} requests never finished "
                                  f"(workers with work left but no step: {stuck or 'none'}; held: {len(self._held)})")
        if self.checks is not None:
            self.checks.at_end()
        return build_outcome(self)

    # ------------------------------------------------------------ the controller

    def _decide(self, now: float) -> None:
        """Route queued requests until one costs decision time (the controller is then busy)."""
        dt, policy, gpus, counters = self.decision_time, self.cfg.policy, self.cfg.gpus, self.counters
        while self._queue:
            job = self._queue.popleft()
            if dt.host_dependent:
                started = time.thread_time()
                decision = self.router.route(job.request, now)
                cpu_s = time.thread_time() - started
            else:
                decision, cpu_s = self.router.route(job.request, now), 0.0
            cost_s = dt.seconds(policy, gpus, len(counters.decision_s), cpu_s)
            counters.decision_s.append(cost_s)
            self.in_controller[decision.worker] += 1
            self.live_rids[decision.worker].add(job.request.rid)
            if cost_s > 0:
                self._busy = True
                self._push(now + cost_s, DECIDED, job, decision)
                return
            self._dispatch(job, decision, now)

    def _dispatch(self, job: _Job, decision, now: float) -> None:
        self.counters.decisions_by_worker[decision.worker] += 1
        if decision.held:
            self.counters.held += 1
            self._held[job.request.rid] = (job, decision.worker)
        else:
            self._send(job, decision.worker, now)

    def _send(self, job: _Job, worker: int, now: float) -> None:
        self.in_controller[worker] -= 1
        self.in_transit[worker] += 1
        self.results[job.index].worker = worker
        self._push(now + self.cfg.dispatch_delay_ms / 1e3, AT_WORKER, job, worker)

    def _release_held(self, now: float) -> None:
        if not self._held:
            # Every rid the router releases is in `_held` by now (a held decision still
            # costing decision time stays in the router's release list until then).
            return
        for rid in self.router.take_released(now):
            entry = self._held.pop(rid, None)
            if entry is None:
                continue
            job, routed_to = entry
            worker = self.router.ledger.worker_of(rid)
            if worker is None:
                # The ledger dropped it meanwhile (expiry, load check): route it afresh, as
                # the live controller does (`sglang_ext/controller.py`, `_send_released`).
                self.in_controller[routed_to] -= 1
                self.live_rids[routed_to].discard(rid)
                self._queue.appendleft(job)
                self._decide(now)
                continue
            self._send(job, worker, now)

    def _deliver(self, kind: int, a, b, now: float) -> None:
        router = self.router
        if kind == KV_EVENTS:
            self.applier.on_live(a, b[0], b[1], now)
            if self.checks is not None:
                self.checks.on_events_applied(a, now)
        elif kind == PREFILL_REPORT:
            router.prefill_done(a, now)
        elif kind == FINISH_REPORT:
            output_tokens, worker = b
            self.unreported[worker] -= 1
            self.live_rids[worker].discard(a)
            router.finished(a, output_tokens, now)
            if self.checks is not None:
                self.checks.on_finish_applied(worker, a)
        else:  # LOAD_REPORT
            self.counters.reconciled_stale += len(router.reconcile(a, now))
            router.expire(now)

    # --------------------------------------------------------------- the workers

    def _start_step(self, w: int, now: float) -> None:
        result = self.workers[w].step(now)
        if result.kind == "idle" and result.duration_s <= 0:
            # Nothing could run: the worker waits for its next request.
            self.stepping[w] = False
            self._publish(w, result.event_payloads, now)
            return
        self.stepping[w] = True
        self._push(now + result.duration_s, STEP_END, w, result)

    def _publish(self, w: int, payloads, now: float) -> None:
        delay = self.cfg.event_delay_ms / 1e3
        for seq, payload in payloads:
            self._push(now + delay, KV_EVENTS, w, (seq, payload))
        if payloads:
            self.counters.event_batches[w] += len(payloads)
            if self.checks is not None:
                self.checks.on_published(w, payloads[-1][0])

    def _step_end(self, w: int, result, now: float, event_delay: float, report_delay: float) -> None:
        counters, results = self.counters, self.results
        counters.busy_s[w] += result.duration_s
        counters.last_step_end_s = now
        counters.steps[w] += 1
        if result.kind == "prefill":
            counters.prefill_steps[w] += 1
        counters.retracted += len(result.retracted)
        # Events before reports: a follower released by its leader's prefill report
        # should find the leader's prefix in the mirror (same delay, earlier insertion).
        self._publish(w, result.event_payloads, now)
        push, by_rid = self._push, self.by_rid
        for rid, cached in result.prefill_done:
            r = results[by_rid[rid].index]
            if r.ttft_s is None:   # a retracted request's second prefill is no first token
                r.ttft_s = now - r.arrival_s
                r.cached_tokens = cached
            push(now + report_delay, PREFILL_REPORT, rid)
        for rid, output_tokens in result.finished:
            r = results[by_rid[rid].index]
            if r.ok:
                raise SimulationError(f"request {rid!r} finished twice")
            r.output_tokens = output_tokens
            r.finish(r.ttft_s, now - r.arrival_s)
            r.ok = True
            self._finished += 1
            self.unreported[w] += 1
            push(now + report_delay, FINISH_REPORT, rid, (output_tokens, w))
        if self.checks is not None:
            self.checks.after_step(w, now)
        # A worker whose step left it without work published its pending KV events in
        # that step (SGLang publishes on idle; `cluster/worker.py`, `step`).
        if self.workers[w].has_work():
            self._start_step(w, now)
        else:
            self.stepping[w] = False


def run_simulation(trace: Trace, config: SimConfig) -> SimOutcome:
    """Simulate `trace` under `config`; bad input raises a one-line `ValueError`."""
    return Simulation(trace, resolve(config)).run()
