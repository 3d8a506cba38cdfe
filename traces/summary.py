"""One summary of a distribution of measured values (latencies, decision times, lengths),
shared by the trace tools, the simulator and every benchmark.

A percentile here is numpy's default (`method="linear"`, Hyndman & Fan type 7): the
value at rank q * (n - 1) of the sorted sample, interpolated between its two
neighbours. Before this module the benchmarks mixed it with a nearest-rank rule
(`sorted[int(q * n)]`), which reads one sample higher in the tail: at n = 100 the two
p99s are the 99th and the 100th value. Everything that summarises a sample now calls
`percentile` or `summarize_values`, so a p99 means one thing across results files.

Not covered: the controller's decision-time histogram (`sglang_ext/core/decision_times.py`)
keeps counts in fixed buckets to stay bounded in a server that runs for days; its
percentiles are bucket edges (over-stated by at most one bucket), a different estimate
of the same quantity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 99)
SUMMARY_KEYS = ("count", "mean", "p50", "p90", "p99", "max")


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (0-100) of a non-empty sample, linear interpolation."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        raise ValueError("percentile of an empty sample")
    return float(np.percentile(v, q))


def summarize_values(values: Sequence[float] | np.ndarray, scale: float = 1.0,
                     keys: Sequence[str] = SUMMARY_KEYS) -> dict:
    """count, mean, p50, p90, p99 and max of `values` times `scale` (e.g. 1e6 for
    seconds to microseconds), limited to `keys` (in that order: a results file keeps the
    fields it always had); an empty sample gives count 0 and None elsewhere."""
    unknown = [k for k in keys if k not in SUMMARY_KEYS]
    if unknown:
        raise ValueError(f"unknown summary keys {unknown}; valid: {', '.join(SUMMARY_KEYS)}")
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        full = {"count": 0, **{k: None for k in SUMMARY_KEYS[1:]}}
    else:
        if scale != 1.0:
            v = v * scale
        p50, p90, p99 = (float(x) for x in np.percentile(v, PERCENTILES))
        full = {"count": int(v.size), "mean": float(v.mean()), "p50": p50, "p90": p90, "p99": p99,
                "max": float(v.max())}
    return {k: full[k] for k in keys}


def prefixed(summary: dict, prefix: str, suffix: str = "", keys: Sequence[str] = SUMMARY_KEYS[1:]) -> dict:
    """`summary`'s `keys` renamed `{prefix}{key}{suffix}` (flat result rows such as
    `latency_ms_p99` or `cpu_p99_us`)."""
    return {f"{prefix}{k}{suffix}": summary[k] for k in keys}
