"""Exact per-worker load ledger, kept from dispatches and the workers' completion reports.

Design note:
- Every dispatched request has one entry until the worker reports it finished. The
  entry remembers what it added to its worker's `WorkerLoad`, so removing it subtracts
  exactly that: the totals are always the sum over live entries (a test checks this).
- Lifecycle: `on_dispatch` (queued: adds uncached prompt tokens to the queued prefill
  and the expected decode tokens to the pending decode work) -> `on_prefill_done`
  (running: the queued prefill leaves) -> `on_finished`.
- KV occupancy is not summed here: requests sharing a cached prefix hold it once, so a
  per-request sum (N requests x P shared tokens) overstates it N-fold and pushes a
  prefix family off the worker that holds it. The router derives `kv_tokens_used` and
  `kv_tokens_committed` from the mirror and the in-flight prompts (`router.py`).
- Stock SGLang never tells the controller that a request finished; our scheduler-side
  hook does (see `completions.py`). If a report is lost, `expire` drops entries older
  than a bound and logs them, so the ledger cannot drift without bound.
- `now_s` is always passed in; the ledger never reads a clock (the simulator hosts it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sglang_ext.core.policies.base import WorkerLoad

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Entry:
    worker: int
    prompt_tokens: int
    uncached_tokens: int
    expected_output_tokens: int
    dispatched_s: float
    prefilled: bool = False


@dataclass(frozen=True, slots=True)
class FinishedRequest:
    rid: str
    worker: int
    prompt_tokens: int
    uncached_tokens: int
    expected_output_tokens: int
    dispatched_s: float


class LoadLedger:
    """Per-worker load: requests, queued prefill tokens, pending decode tokens."""

    def __init__(self, num_workers: int, kv_capacity_tokens: int | Sequence[int], expiry_s: float = 600.0):
        caps = [kv_capacity_tokens] * num_workers if isinstance(kv_capacity_tokens, int) else list(kv_capacity_tokens)
        self.loads = [WorkerLoad(kv_capacity_tokens=max(1, c)) for c in caps]
        self.expiry_s = expiry_s
        self._entries: dict[str, _Entry] = {}  # insertion order = dispatch order
        self.expired = 0
        # Workers whose `WorkerLoad` changed since the host last took the mask
        # (`take_changed`): the router re-derives only their figures per decision.
        self.changed = 0

    def take_changed(self) -> int:
        """The bitmask of workers whose load changed since the last call; resets it."""
        mask, self.changed = self.changed, 0
        return mask

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rid: str) -> bool:
        return rid in self._entries

    def worker_of(self, rid: str) -> int | None:
        entry = self._entries.get(rid)
        return None if entry is None else entry.worker

    def on_dispatch(self, rid: str, worker: int, prompt_tokens: int, cached_tokens: int,
                    expected_output_tokens: int, now_s: float) -> None:
        if rid in self._entries:
            # A retried rid: forget the old placement first so nothing is counted twice.
            self._remove(rid)
        entry = _Entry(worker, prompt_tokens, max(0, prompt_tokens - cached_tokens),
                       max(0, expected_output_tokens), now_s)
        self._entries[rid] = entry
        self.changed |= 1 << worker
        load = self.loads[worker]
        load.requests += 1
        load.queued_requests += 1
        load.queued_prefill_tokens += entry.uncached_tokens
        load.pending_decode_tokens += entry.expected_output_tokens

    def queued_uncached_tokens(self, rid: str) -> int:
        """The uncached prompt tokens `rid` still has to prefill (0 once prefilled or unknown)."""
        entry = self._entries.get(rid)
        return 0 if entry is None or entry.prefilled else entry.uncached_tokens

    def on_prefill_done(self, rid: str) -> bool:
        entry = self._entries.get(rid)
        if entry is None or entry.prefilled:
            return False
        entry.prefilled = True
        self.changed |= 1 << entry.worker
        load = self.loads[entry.worker]
        load.queued_requests -= 1
        load.queued_prefill_tokens -= entry.uncached_tokens
        return True

    def on_finished(self, rid: str) -> FinishedRequest | None:
        """Remove a finished request; None if it is unknown (already expired, or pinned
        elsewhere)."""
        entry = self._entries.get(rid)
        if entry is None:
            return None
        self._remove(rid)
        return FinishedRequest(rid, entry.worker, entry.prompt_tokens, entry.uncached_tokens,
                               entry.expected_output_tokens, entry.dispatched_s)

    def update_expected_output(self, rid: str, output_tokens: int) -> bool:
        """Replace a request's expected decode length (a late prediction)."""
        entry = self._entries.get(rid)
        if entry is None:
            return False
        new = max(0, output_tokens)
        self.changed |= 1 << entry.worker
        self.loads[entry.worker].pending_decode_tokens += new - entry.expected_output_tokens
        entry.expected_output_tokens = new
        return True

    def expire(self, now_s: float, on_expired=None) -> list[str]:
        """Drop entries dispatched more than `expiry_s` ago; returns their rids and calls
        `on_expired(rid, worker)` for each.

        Entries are kept in dispatch order, so only the expired head is visited.
        """
        expired = []
        for rid, entry in self._entries.items():
            if now_s - entry.dispatched_s < self.expiry_s:
                break
            expired.append((rid, entry.worker))
        for rid, worker in expired:
            self._remove(rid)
            if on_expired is not None:
                on_expired(rid, worker)
        if expired:
            self.expired += len(expired)
            logger.warning("ledger: %d request(s) never reported finished within %.0f s; "
                           "dropped (first: %s)", len(expired), self.expiry_s, expired[0][0])
        return [rid for rid, _ in expired]

    def drop_dispatched_before(self, worker: int, before_s: float) -> list[str]:
        """Drop the entries of `worker` dispatched before `before_s` (it reported that it
        has finished them; see `load_check.py`). Visits only entries older than that."""
        rids = []
        for rid, entry in self._entries.items():
            if entry.dispatched_s >= before_s:
                break
            if entry.worker == worker:
                rids.append(rid)
        for rid in rids:
            self._remove(rid)
        return rids

    def rids_on(self, worker: int) -> list[str]:
        """The requests the ledger holds on `worker`, in dispatch order."""
        return [rid for rid, e in self._entries.items() if e.worker == worker]

    def forget_worker(self, worker: int) -> list[str]:
        """Drop every entry of a worker (it died or restarted)."""
        rids = self.rids_on(worker)
        for rid in rids:
            self._remove(rid)
        return rids

    def set_alive(self, worker: int, alive: bool) -> None:
        self.loads[worker].alive = alive
        self.changed |= 1 << worker

    def _remove(self, rid: str) -> None:
        entry = self._entries.pop(rid)
        self.changed |= 1 << entry.worker
        load = self.loads[entry.worker]
        load.requests -= 1
        load.pending_decode_tokens -= entry.expected_output_tokens
        if not entry.prefilled:
            load.queued_requests -= 1
            load.queued_prefill_tokens -= entry.uncached_tokens
