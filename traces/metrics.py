"""Per-request results of a replay and the run summary (metric names of DESIGN.md 6).

Latencies are measured from each request's *scheduled* arrival, not from when the client
got round to sending it: in an open-loop test, time a request waits for a client-side
concurrency slot is latency the user sees (no coordinated omission). `queue_delay_s`
records that wait separately.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import asdict, dataclass, fields

import numpy as np

from traces.summary import summarize_values

LATENCY_METRICS = ("ttft_s", "e2e_s", "tpot_s", "norm_latency_s_per_token", "cached_tokens")


@dataclass
class RequestResult:
    id: str
    arrival_s: float                   # scheduled, relative to the replay's start
    sent_s: float | None = None
    queue_delay_s: float | None = None
    ttft_s: float | None = None
    e2e_s: float | None = None
    tpot_s: float | None = None        # (e2e - ttft) / (output_tokens - 1)
    norm_latency_s_per_token: float | None = None   # e2e / output_tokens
    prompt_tokens: int | None = None
    output_tokens: int | None = None   # completion tokens the server reported
    expected_output_tokens: int | None = None
    cached_tokens: int | None = None
    worker: int | None = None          # meta_info.dp_rank
    prefix_group: str | None = None
    session: str | None = None
    turn: int | None = None
    ok: bool = False
    error: str = ""

    def finish(self, ttft_s: float | None, e2e_s: float) -> None:
        self.ttft_s, self.e2e_s = ttft_s, e2e_s
        n = self.output_tokens or 0
        if n >= 1:
            self.norm_latency_s_per_token = e2e_s / n
        if n >= 2 and ttft_s is not None:
            self.tpot_s = (e2e_s - ttft_s) / (n - 1)


def write_csv(results: list[RequestResult], path) -> None:
    names = [f.name for f in fields(RequestResult)]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=names)
        writer.writeheader()
        for r in results:
            writer.writerow({k: ("" if v is None else v) for k, v in asdict(r).items()})


DIST_KEYS = ("count", "mean", "p50", "p90", "p99")   # a summary.json distribution's fields


def _dist(values: list[float]) -> dict:
    return summarize_values(values, keys=DIST_KEYS)


def busy_time_s(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, end_so_far = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end <= end_so_far:
            continue
        total += end - max(start, end_so_far)
        end_so_far = end
    return total


def summarize(results: list[RequestResult], dp_size: int | None = None) -> dict:
    ok = [r for r in results if r.ok]
    summary: dict = {"requests": len(results), "succeeded": len(ok), "failed": len(results) - len(ok)}
    for name in LATENCY_METRICS:
        summary[name] = _dist([getattr(r, name) for r in ok if getattr(r, name) is not None])
    if ok:
        start = min(r.arrival_s for r in results)
        end = max(r.arrival_s + r.e2e_s for r in ok)
        makespan = max(end - start, 1e-9)
        out_tokens = sum(r.output_tokens or 0 for r in ok)
        summary["duration_s"] = makespan
        summary["throughput_rps"] = len(ok) / makespan
        summary["throughput_output_tokens_per_s"] = out_tokens / makespan
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    cached = sum(r.cached_tokens or 0 for r in ok)
    summary["prefix_hit_rate"] = cached / prompt if prompt else None
    summary["length_mismatches"] = sum(1 for r in ok if r.expected_output_tokens is not None
                                       and r.output_tokens != r.expected_output_tokens)
    by_worker: dict[int, list[RequestResult]] = defaultdict(list)
    for r in ok:
        if r.worker is not None:
            by_worker[r.worker].append(r)
    workers = sorted(set(by_worker) | set(range(dp_size or 0)))
    per_worker = {}
    for w in workers:
        rs = by_worker.get(w, [])
        per_worker[str(w)] = {
            "requests": len(rs),
            "busy_s": busy_time_s([(r.arrival_s + (r.queue_delay_s or 0.0), r.arrival_s + r.e2e_s) for r in rs]),
            "output_tokens": sum(r.output_tokens or 0 for r in rs),
            "prefix_hit_rate": (sum(r.cached_tokens or 0 for r in rs) / max(1, sum(r.prompt_tokens or 0 for r in rs))),
        }
    summary["per_worker"] = per_worker
    busy = [v["busy_s"] for v in per_worker.values()]
    summary["worker_imbalance_busy_max_over_mean"] = (max(busy) / float(np.mean(busy))) if busy and np.mean(busy) > 0 else None
    reqs = [v["requests"] for v in per_worker.values()]
    summary["worker_imbalance_requests_max_over_mean"] = (max(reqs) / float(np.mean(reqs))) if reqs and np.mean(reqs) > 0 else None
    return summary
