"""Wall time of the controller's routing decisions, for the status file and benchmarks.

The host measures (`time.perf_counter_ns` around `Router.route`) and hands the figure
in; this module only counts it, in a histogram with geometric buckets (8 per octave
from 1 us: each bucket spans 9 %), as Prometheus histograms do. Memory stays fixed
however long the server runs, and a reader that saved the counts before a workload can
subtract them afterwards to get that workload's own percentiles (`delta`).

These percentiles are bucket edges, not the interpolated sample percentiles that every
benchmark and results file computes (`traces/summary.py`): a bounded histogram cannot
keep the samples. The two agree to within one bucket (9 %), the histogram's above. The
core imports nothing outside itself, so it keeps this estimate rather than that module.
"""

from __future__ import annotations

import math

BUCKETS_PER_OCTAVE = 8
OCTAVES = 24                                   # 1 us .. 16.8 s; slower goes in the last bucket
NUM_BUCKETS = BUCKETS_PER_OCTAVE * OCTAVES


def bucket_upper_us(index: int) -> float:
    """The upper edge of bucket `index` (bucket 0 holds everything up to 1 us)."""
    return 2.0 ** (index / BUCKETS_PER_OCTAVE)


def bucket_of(us: float) -> int:
    if us <= 1.0:
        return 0
    return min(NUM_BUCKETS - 1, math.ceil(math.log2(us) * BUCKETS_PER_OCTAVE))


class DecisionTimes:
    def __init__(self):
        self.counts = [0] * NUM_BUCKETS
        self.count = 0
        self.total_us = 0.0
        self.max_us = 0.0

    def record(self, elapsed_ns: int) -> None:
        us = elapsed_ns / 1000.0
        self.counts[bucket_of(us)] += 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def status(self) -> dict:
        """The counts (for `delta`) and a summary over every decision so far."""
        return {"count": self.count, "total_us": self.total_us, "max_us": self.max_us,
                "buckets_per_octave": BUCKETS_PER_OCTAVE, "counts": list(self.counts),
                **summary(self.counts, self.count, self.total_us)}


def summary(counts: list[int], count: int, total_us: float) -> dict:
    """mean, and p50/p90/p99 as the upper edge of the bucket holding that rank (so a
    percentile is over-stated by at most one bucket, 9 %)."""
    if count <= 0:
        return {"mean_us": None, "p50_us": None, "p90_us": None, "p99_us": None}
    return {"mean_us": total_us / count,
            **{f"p{q}_us": _percentile(counts, count, q / 100) for q in (50, 90, 99)}}


def delta(before: dict | None, after: dict) -> dict:
    """The summary of the decisions between two `status()` dicts of one controller."""
    if not before:
        return summary(after["counts"], after["count"], after["total_us"])
    counts = [a - b for a, b in zip(after["counts"], before["counts"])]
    return {"count": after["count"] - before["count"],
            **summary(counts, after["count"] - before["count"], after["total_us"] - before["total_us"])}


def _percentile(counts: list[int], count: int, q: float) -> float:
    rank = max(1, math.ceil(q * count))
    seen = 0
    for index, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return bucket_upper_us(index)
    return bucket_upper_us(len(counts) - 1)
