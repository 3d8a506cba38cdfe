"""`--debug-checks`: the router's view against each simulated worker's truth, at every step.

What is checked, and the tolerance (the router legitimately lags its workers by the
dispatch, report and event delays, so only what those delays cannot explain is a fault):

1. Requests, exactly: the ledger's requests on worker w equal the requests w holds
   (running + waiting, its own load report) + those routed to w still in the controller
   (held, or paying decision time) or on their way + those w finished whose report has
   not been applied yet.
2. KV tokens, within a bound: the ledger's `kv_tokens_used` (prompt tokens of in-flight
   requests, a shared prefix once, generated tokens unseen) against the worker's tokens
   in use (locked tree + owned slots). With, over the requests the ledger holds on w,
   A = prompt tokens of those not yet prefilled on the worker, B = prompt tokens of those
   finished there but not reported, U = the uncached prompt tokens of those prefilled
   there (requests of one prefix admitted in the same batch each own a copy of it:
   SGLang's FCFS batches do not deduplicate, `sglang_ext/core/prefix_hold.py`, while the
   ledger counts a shared prefix once), G = the output tokens of those prefilled there
   (generated so far is at most that), S = the prompt tokens of the last max(in flight, 8)
   requests whose finish the router applied on w (the in-flight union keeps finished
   prompts until it is rebuilt, and never more of them than that:
   `sglang_ext/core/inflight.py`) and one page each for page alignment:
       ledger - (A + B + S + pages)  <=  worker  <=  ledger + A + U + G + pages.
   A ledger that leaks finished requests, or counts a shared prefix once per request,
   falls below; a worker holding more than its requests can own falls above.
3. Mirror, exactly: a step that publishes KV events publishes all the tree's pending
   events (`cluster/radix.py`, `take_event_payloads`), so once the mirror has applied a
   batch up to that step's last sequence number, its tokens for w equal the worker's
   tree size at that step's end. After the run (every event delivered, the workers idle,
   which publishes), the mirror's match of every prompt equals the worker tree's.
A failure raises `DivergenceError` naming the worker, the time and both figures.
"""

from __future__ import annotations

from collections import deque

from sglang_ext.core.inflight import MIN_STALE_BEFORE_REBUILD


class DivergenceError(RuntimeError):
    """The router's view of a worker diverged from the worker beyond the stated tolerance."""


class DebugChecks:
    def __init__(self, sim):
        self.sim = sim
        # Per worker: (last sequence number of a flushing step, tree size at its end).
        self._snapshots: list[deque[tuple[int, int]]] = [deque() for _ in range(sim.cfg.gpus)]
        self._finished_prompts: list[list[int]] = [[] for _ in range(sim.cfg.gpus)]
        self.checked_steps = 0
        self.checked_snapshots = 0

    def on_published(self, w: int, last_seq: int) -> None:
        self._snapshots[w].append((last_seq, self.sim.workers[w].radix.total_size()))

    def on_finish_applied(self, w: int, rid: str) -> None:
        self._finished_prompts[w].append(len(self.sim.by_rid[rid].sim.input_ids))

    def on_events_applied(self, w: int, now: float) -> None:
        snapshots = self._snapshots[w]
        applied = self.sim.applier.state(w).expected_seq  # next expected: all below applied
        while snapshots and snapshots[0][0] < applied:
            seq, size = snapshots.popleft()
            if seq + 1 != applied:
                continue  # a later batch of the same worker is applied too: that snapshot is stale
            mirror = self.sim.router.tree.tokens_held(w)
            if mirror != size:
                raise DivergenceError(f"t={now:.6f}s worker {w}: mirror holds {mirror} tokens after event "
                                      f"batch {seq}, the worker's tree held {size} when it published it")
            self.checked_snapshots += 1

    def after_step(self, w: int, now: float) -> None:
        sim = self.sim
        router, worker = sim.router, sim.workers[w]
        self.checked_steps += 1
        report = worker.load_report(w, now)
        at_worker = report.running_requests + report.waiting_requests
        ledger = router.ledger.loads[w].requests
        expected = at_worker + sim.in_controller[w] + sim.in_transit[w] + sim.unreported[w]
        if ledger != expected:
            raise DivergenceError(
                f"t={now:.6f}s worker {w}: the ledger holds {ledger} requests, but the worker has {at_worker}, "
                f"{sim.in_controller[w]} are in the controller, {sim.in_transit[w]} on their way and "
                f"{sim.unreported[w]} finished unreported (sum {expected}); dropped by the load check: "
                f"{sim.counters.reconciled_stale}, expired: {router.ledger.expired}")
        router.refresh_kv_figures()   # derived figures, recomputed before every decision anyway
        used = router.ledger.loads[w].kv_tokens_used
        true_used = worker.kv_tokens_in_use()
        a = b = u = g = pages = 0
        page = sim.cfg.page_size
        for rid in sim.live_rids[w]:
            job = sim.by_rid[rid]
            r = sim.results[job.index]
            prompt = len(job.sim.input_ids)
            pages += page
            if r.ok:
                b += prompt
            elif r.ttft_s is None:
                a += prompt
            else:
                g += job.sim.output_tokens
                u += prompt - r.cached_tokens
        recent = self._finished_prompts[w][-max(len(sim.live_rids[w]), MIN_STALE_BEFORE_REBUILD):]
        stale = sum(recent)
        low, high = used - (a + b + stale + pages), used + a + u + g + pages
        if not low <= true_used <= high:
            raise DivergenceError(
                f"t={now:.6f}s worker {w}: KV tokens in use {true_used}, the ledger says {used}; "
                f"tolerance [{low}, {high}] (A={a} B={b} S={stale} U={u} G={g} pages={pages})")

    def at_end(self) -> None:
        sim = self.sim
        for w, worker in enumerate(sim.workers):
            if sim.live_rids[w]:
                raise DivergenceError(f"after the run, the ledger still holds {len(sim.live_rids[w])} "
                                      f"requests on worker {w}")
            mirror, size = sim.router.tree.tokens_held(w), worker.radix.total_size()
            if mirror != size:
                raise DivergenceError(f"after the run, worker {w}: mirror holds {mirror} tokens, its tree {size}")
        for job in sim.jobs:
            ids = job.request.input_ids
            matched = sim.router.tree.match(list(ids))
            for w, worker in enumerate(sim.workers):
                truth = worker.radix.match(ids).cached_tokens
                if matched[w] != truth:
                    raise DivergenceError(f"after the run: request {job.request.rid!r} matches {matched[w]} "
                                          f"tokens on worker {w} in the mirror, {truth} in its tree")
