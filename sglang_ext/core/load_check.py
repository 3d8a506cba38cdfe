"""Cross-check of the load ledger against the workers' own load reports.

The ledger (`ledger.py`) learns that a request finished only from our scheduler-side
completion reports. Each SGLang scheduler also publishes a load snapshot of itself
(`LoadSnapshot`, in shared memory for the data-parallel controller; the same figures
travel in the `LoadStat` ZMQ feed): running and waiting requests, KV tokens in use and
the KV pool size. This module compares the two:

- A worker that reports itself idle (nothing running or waiting) in two checks in a
  row cannot still be serving a request dispatched to it before the first of those
  reports (less a grace for requests still on their way to it): such ledger entries
  lost their completion report and are dropped at once, rather than after the ledger's
  expiry bound (`stale_dropped`). Two checks, because a completion report sent just
  before the first idle snapshot may still be in our socket then; the host drains
  reports between checks.
- The worker's KV pool size replaces the configured capacity (it is exact).
- The last comparison per worker is kept for the status file and logs.

Host-independent: times are in the host's clock and passed in; the live controller
converts SGLang's snapshots with `reports_from_snapshots`, a simulator can build
`ReportedLoad`s from its simulated workers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from sglang_ext.core.ledger import LoadLedger

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReportedLoad:
    """What a worker reports of its own load, at `at_s` in the host's clock."""

    worker: int
    at_s: float
    running_requests: int
    waiting_requests: int
    kv_tokens_used: int
    kv_capacity_tokens: int
    # Requests the worker holds outside its running batch and waiting queue: SGLang 0.5.23
    # counts its grammar queue, paused and retracted requests apart from `num_waiting_reqs`
    # (`srt/managers/scheduler_components/load_inquirer.py`, `QueueMetrics`). A worker with
    # any of them is not idle: their completion reports are still to come.
    held_requests: int = 0

    @property
    def idle(self) -> bool:
        return self.running_requests == 0 and self.waiting_requests == 0 and self.held_requests == 0


@dataclass(slots=True)
class LoadComparison:
    """The ledger's view of a worker beside the worker's own report."""

    at_s: float
    ledger_requests: int
    reported_requests: int
    ledger_kv_tokens: int
    reported_kv_tokens: int


class LoadCrossCheck:
    def __init__(self, num_workers: int, grace_s: float = 2.0):
        self.grace_s = grace_s
        self._idle_at: list[float | None] = [None] * num_workers  # previous check: idle since
        self.last: list[LoadComparison | None] = [None] * num_workers
        self.reports = 0
        self.stale_dropped = 0

    def observe(self, report: ReportedLoad, ledger: LoadLedger) -> list[str]:
        """Compare one report with the ledger; returns the rids dropped as stale."""
        w = report.worker
        if not 0 <= w < len(self._idle_at):
            raise ValueError(f"load report for worker {w}, but there are {len(self._idle_at)} workers")
        self.reports += 1
        load = ledger.loads[w]
        self.last[w] = LoadComparison(report.at_s, load.requests,
                                      report.running_requests + report.waiting_requests + report.held_requests,
                                      load.kv_tokens_used, report.kv_tokens_used)
        if report.kv_capacity_tokens > 0:
            load.kv_capacity_tokens = report.kv_capacity_tokens
        if not report.idle:
            self._idle_at[w] = None
            return []
        idle_at, self._idle_at[w] = self._idle_at[w], report.at_s
        if idle_at is None:
            return []
        stale = ledger.drop_dispatched_before(w, idle_at - self.grace_s)
        if stale:
            self.stale_dropped += len(stale)
            logger.warning("load check: worker %d reports itself idle but the ledger still held %d "
                           "request(s) sent to it earlier (completion reports lost); dropped "
                           "(first: %s)", w, len(stale), stale[0])
        return stale

    def forget_worker(self, worker: int) -> None:
        """The worker went down or came back: what was seen of it before says nothing now."""
        self._idle_at[worker] = None
        self.last[worker] = None

    def status(self) -> dict:
        return {"reports": self.reports, "stale_dropped": self.stale_dropped,
                "last": [None if c is None else asdict(c) for c in self.last]}


def reports_from_snapshots(snapshots, now_s: float, wall_now_s: float) -> list[ReportedLoad]:
    """SGLang `LoadSnapshot`s (wall-clock stamped) as reports in the host's clock."""
    out = []
    for snap in snapshots:
        age = max(0.0, wall_now_s - float(snap.timestamp))
        queues = getattr(snap, "queues", None)
        held = 0 if queues is None else int(queues.grammar) + int(queues.paused) + int(queues.retracted)
        out.append(ReportedLoad(
            worker=int(snap.dp_rank), at_s=now_s - age,
            running_requests=int(snap.num_running_reqs), waiting_requests=int(snap.num_waiting_reqs),
            kv_tokens_used=int(snap.num_used_tokens), kv_capacity_tokens=int(snap.max_total_num_tokens),
            held_requests=held,
        ))
    return out
