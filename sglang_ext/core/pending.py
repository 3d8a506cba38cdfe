"""Requests parked for their decode-length prediction: the host-free state machine.

The live controller (through `sglang_ext/length_source.py`, which owns the predictor
thread and its sockets) and the cluster simulator (which models predictor latency) drive
the same rules; nothing here reads a clock or touches a socket: `now_s` is passed in.

A request is *parked* when it arrives and released exactly once, for dispatch:

- with its prediction, when the prediction arrives before `max_wait_s` has passed;
- on the fallback length (`max_new_tokens`) when the wait ends first (`due`), or when
  the predictor reports that it could not predict it (`failed`). A request released on
  the wait is remembered as *late*: if its prediction still arrives, the router re-weighs
  its decode work (`Router.update_expected_output`).

A prediction that is not a whole number of tokens in [1, `max_output_tokens`] (a NaN
cast to int is -2**63) is a failure, not a length. Failures degrade, they do not switch
predictions off: after `trip_after_failures` failures in a row (a failed batch counts
once) predictions are suspended for `suspend_s`, then tried again, and any success
resets the count. Back-pressure (the host's predictor queue is full, or `max_parked`
requests already wait) sends that one request on the fallback. Parked and late requests
are both bounded; the late set forgets its oldest entries first.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from sglang_ext.core.policies import Request

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PendingConfig:
    """How long requests wait for predictions, and the bounds on what is remembered."""

    max_wait_s: float = 0.020  # longest a request waits for its prediction (launcher: --predict-wait-ms)
    max_parked: int = 4096  # requests waiting at once; beyond it, new ones go on the fallback
    max_late: int = 10_000  # released on the fallback, prediction still awaited
    max_output_tokens: int = 1 << 20  # a larger prediction is not a length
    trip_after_failures: int = 8  # predictor failures in a row that suspend predictions
    suspend_s: float = 5.0  # how long predictions stay off after that

    def __post_init__(self) -> None:
        if not (self.max_wait_s >= 0 and math.isfinite(self.max_wait_s)):
            raise ValueError(f"max_wait_s must be a finite number >= 0, got {self.max_wait_s!r}")
        for name in ("max_parked", "max_late", "max_output_tokens", "trip_after_failures"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if not self.suspend_s >= 0:
            raise ValueError(f"suspend_s must be >= 0, got {self.suspend_s!r}")


@dataclass
class PendingStats:
    predicted_in_time: int = 0  # released with their prediction
    fallbacks: int = 0  # released on the fallback when their wait ended
    failed: int = 0  # released on the fallback because the predictor could not predict them
    invalid: int = 0  # predictions that were no length (NaN, <= 0, too large)
    refused: int = 0  # never parked: back-pressure, or predictions suspended
    late_reweighed: int = 0  # predictions that came after dispatch and re-weighed the ledger
    suspensions: int = 0  # times predictions were suspended after repeated failures


@dataclass(slots=True)
class Released:
    """A request leaving the park: dispatch `request` (and the host's `payload`)."""

    request: Request
    payload: object
    predicted: bool  # True: `request.predicted_output_tokens` is set


class Reweigher(Protocol):
    def update_expected_output(self, rid: str, output_tokens: int) -> None: ...


@dataclass(slots=True)
class _Parked:
    request: Request
    payload: object
    deadline_s: float


@dataclass
class PendingPredictions:
    config: PendingConfig = field(default_factory=PendingConfig)

    def __post_init__(self) -> None:
        # Arrival order; with one `max_wait_s` it is also deadline order, so `due` and
        # `next_deadline_s` look at the head only.
        self._parked: OrderedDict[str, _Parked] = OrderedDict()
        self._late: OrderedDict[str, None] = OrderedDict()
        self._failures_in_row = 0
        self._suspended_until_s = float("-inf")
        self.stats = PendingStats()

    def __len__(self) -> int:
        return len(self._parked)

    def accepting(self, now_s: float) -> bool:
        """Whether a new request may be parked now (predictions on, room left)."""
        return now_s >= self._suspended_until_s and len(self._parked) < self.config.max_parked

    def suspended(self, now_s: float) -> bool:
        return now_s < self._suspended_until_s

    def park(self, request: Request, payload: object, now_s: float) -> bool:
        """Park `request` until its prediction or its deadline; False: dispatch it now on
        the fallback (predictions suspended, or too many waiting)."""
        if not self.accepting(now_s):
            self.stats.refused += 1
            return False
        self._late.pop(request.rid, None)  # a retried rid waits afresh
        self._parked[request.rid] = _Parked(request, payload, now_s + self.config.max_wait_s)
        return True

    def refuse(self) -> None:
        """The host could not hand a request to its predictor (queue full): counted; the
        request goes on the fallback, nothing else changes."""
        self.stats.refused += 1

    def deliver(self, rid: str, tokens, now_s: float, router: Reweigher) -> Released | None:
        """A prediction arrived. Returns the request to dispatch if it was still parked;
        re-weighs a late one in `router`; ignores one it never parked or forgot."""
        value = _as_length(tokens, self.config.max_output_tokens)
        if value is None:
            self.stats.invalid += 1
            self._late.pop(rid, None)
            released = self._release_failed(rid)
            self._note_failure(now_s)
            return released
        self._failures_in_row = 0
        parked = self._parked.pop(rid, None)
        if parked is not None:
            parked.request.predicted_output_tokens = value
            self.stats.predicted_in_time += 1
            return Released(parked.request, parked.payload, True)
        if rid in self._late:
            del self._late[rid]
            router.update_expected_output(rid, value)
            self.stats.late_reweighed += 1
        return None

    def failed(self, rids, now_s: float) -> list[Released]:
        """The predictor could not predict `rids` (one failed batch): release them on the
        fallback; counts as one failure toward suspension."""
        released = [r for r in (self._release_failed(rid) for rid in rids) if r is not None]
        for rid in rids:
            self._late.pop(rid, None)
        self._note_failure(now_s)
        return released

    def due(self, now_s: float) -> list[Released]:
        """Requests whose wait has ended, released on the fallback and remembered as late."""
        out = []
        while self._parked:
            rid, parked = next(iter(self._parked.items()))
            if parked.deadline_s > now_s:
                break
            del self._parked[rid]
            self._late[rid] = None
            self.stats.fallbacks += 1
            out.append(Released(parked.request, parked.payload, False))
        while len(self._late) > self.config.max_late:
            self._late.popitem(last=False)  # its prediction never came: forget the oldest
        return out

    def release_all(self) -> list[Released]:
        """The predictor is gone for good: every parked request goes on the fallback."""
        out = [Released(p.request, p.payload, False) for p in self._parked.values()]
        self.stats.failed += len(out)
        self._parked.clear()
        self._late.clear()
        return out

    def forget(self, rid: str) -> None:
        """The request finished: a prediction still to come has nothing to re-weigh."""
        self._late.pop(rid, None)

    def next_deadline_s(self) -> float | None:
        return next(iter(self._parked.values())).deadline_s if self._parked else None

    def late_count(self) -> int:
        return len(self._late)

    def _release_failed(self, rid: str) -> Released | None:
        parked = self._parked.pop(rid, None)
        if parked is None:
            return None
        self.stats.failed += 1
        return Released(parked.request, parked.payload, False)

    def _note_failure(self, now_s: float) -> None:
        self._failures_in_row += 1
        if self._failures_in_row >= self.config.trip_after_failures:
            self._failures_in_row = 0
            self._suspended_until_s = now_s + self.config.suspend_s
            self.stats.suspensions += 1
            logger.warning("length predictions: %d failures in a row; suspended for %.1f s (fallback: "
                           "max_new_tokens)", self.config.trip_after_failures, self.config.suspend_s)


def _as_length(tokens, limit: int) -> int | None:
    """`tokens` as a whole number of tokens in [1, limit], or None."""
    try:
        value = float(tokens)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value != int(value) or not 1 <= value <= limit:
        return None
    return int(value)
