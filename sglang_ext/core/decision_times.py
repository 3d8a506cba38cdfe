"""Wall time of the controller's routing decisions, for the status file and benchmarks.

The host measures (`time.perf_counter_ns` around `Router.route`) and hands the figure
in; this module only keeps it: totals over the process's life plus the most recent
`window` decisions for percentiles, so memory stays bounded however long it runs.
"""

from __future__ import annotations

import numpy as np


class DecisionTimes:
    def __init__(self, window: int = 8192):
        if window < 1:
            raise ValueError("window must be >= 1")
        self._recent = np.zeros(window, dtype=np.float64)   # microseconds, a ring
        self._next = 0
        self.count = 0
        self.total_us = 0.0
        self.max_us = 0.0

    def record(self, elapsed_ns: int) -> None:
        us = elapsed_ns / 1000.0
        self._recent[self._next] = us
        self._next = (self._next + 1) % len(self._recent)
        self.count += 1
        self.total_us += us
        self.max_us = max(self.max_us, us)

    def status(self) -> dict:
        """count, mean and max over all decisions; p50/p90/p99 over the recent window."""
        if self.count == 0:
            return {"count": 0, "mean_us": None, "p50_us": None, "p90_us": None, "p99_us": None,
                    "max_us": None, "window": 0}
        recent = self._recent[: min(self.count, len(self._recent))]
        p50, p90, p99 = np.percentile(recent, [50, 90, 99])
        return {"count": self.count, "mean_us": self.total_us / self.count, "p50_us": float(p50),
                "p90_us": float(p90), "p99_us": float(p99), "max_us": self.max_us, "window": len(recent)}
