"""Wait for a quiet host before a live measurement.

This project's hosts have 2 cores shared with other work (tests, other benchmarks); a
live step time measured while another process computes is that process's as much as
SGLang's. Before each live measurement we poll the 1-minute load average until it falls
below a threshold, for a bounded time, then measure anyway and record what it was, so
a report can say which figures were taken on a busy host.

Clock, sleep and load reader are passed in (tests drive them by hand).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadWait:
    threshold_load_1m: float = 0.8
    poll_s: float = 10.0
    max_wait_s: float = 900.0

    def check(self) -> None:
        if not self.threshold_load_1m > 0:
            raise ValueError(f"--load-threshold must be > 0, got {self.threshold_load_1m}")
        if not self.poll_s > 0:
            raise ValueError(f"--load-poll-s must be > 0, got {self.poll_s}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"--max-load-wait-s must be >= 0, got {self.max_wait_s}")


@dataclass(frozen=True)
class LoadRecord:
    """What the host's load was when a measurement started."""

    label: str
    load_1m_first: float      # when we started waiting
    load_1m_at_start: float   # when the measurement started
    waited_s: float
    quiet: bool               # below the threshold when it started (False: measured anyway)

    def to_dict(self) -> dict:
        return {"label": self.label, "load_1m_first": round(self.load_1m_first, 2),
                "load_1m_at_start": round(self.load_1m_at_start, 2), "waited_s": round(self.waited_s, 1),
                "quiet": self.quiet}


def wait_for_quiet(label: str, wait: LoadWait, *, load_1m: Callable[[], float] = lambda: os.getloadavg()[0],
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep,
                   say: Callable[[str], None] | None = None) -> LoadRecord:
    """Poll until the 1-minute load average is below the threshold or `max_wait_s` passed."""
    start = clock()
    first = current = load_1m()
    announced = False
    while current >= wait.threshold_load_1m and clock() - start < wait.max_wait_s:
        if say is not None and not announced:
            say(f"{label}: load average {current:.2f} >= {wait.threshold_load_1m}; waiting up to "
                f"{wait.max_wait_s:.0f} s for a quieter host")
            announced = True
        sleep(min(wait.poll_s, max(0.0, wait.max_wait_s - (clock() - start))))
        current = load_1m()
    quiet = current < wait.threshold_load_1m
    if say is not None and not quiet:
        say(f"{label}: load average still {current:.2f}; measuring anyway")
    return LoadRecord(label, first, current, clock() - start, quiet)
