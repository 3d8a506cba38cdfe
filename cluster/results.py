"""A simulation's outputs: the live replay's per-request CSV and summary
(`traces/metrics.py`), the resolved config, and the simulator's own figures.

Files (`write_outputs`): `requests.csv` and `summary.json` in the same shape a live
`python -m traces replay` writes, so the two can be compared with the same tools, plus
`config.json` (the resolved config: cost model, KV capacity, whether the figures depend
on the host). Nothing here reads a clock: `summary.json` is byte-identical for a seed
unless the decision time was `measured`.

Simulator figures (summary keys): `decision_time_us` (mean, p50, p99, max of the charged
decision times), and under `simulator`: per-worker busy time (sum of step durations) and
its imbalance (max / mean), requests per worker, steps, retractions, held decisions, KV
events applied to the mirror, the simulated duration (from 0 to the end of the last step).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass, field

import numpy as np

from traces.metrics import RequestResult, summarize, write_csv
from traces.summary import summarize_values


@dataclass
class SimCounters:
    """What the engine counts while it runs (per worker where a list)."""

    busy_s: list[float]
    steps: list[int]
    prefill_steps: list[int]
    event_batches: list[int]
    decisions_by_worker: list[int]
    decision_s: list[float] = field(default_factory=list)
    held: int = 0
    retracted: int = 0
    reconciled_stale: int = 0
    last_step_end_s: float = 0.0   # the simulated time the last worker step ended

    @classmethod
    def empty(cls, workers: int) -> SimCounters:
        return cls([0.0] * workers, [0] * workers, [0] * workers, [0] * workers, [0] * workers)


@dataclass(frozen=True)
class SimOutcome:
    results: list[RequestResult]
    summary: dict
    config: dict          # the resolved config and the trace's header (config.json)


def _imbalance(values: list[float]) -> float | None:
    mean = float(np.mean(values)) if values else 0.0
    return max(values) / mean if mean > 0 else None


def _decision_stats(seconds: list[float]) -> dict:
    """Simulated decision times in microseconds (summary.json's `decision_time_us`)."""
    return summarize_values(seconds, scale=1e6, keys=("count", "mean", "p50", "p99", "max"))


def build_outcome(sim) -> SimOutcome:
    """The outcome of a finished `cluster.engine.Simulation`."""
    cfg, counters, resolved = sim.cfg, sim.counters, sim.resolved
    summary = summarize(sim.results, cfg.gpus)
    feed = sim.applier.stats
    summary["decision_time_us"] = _decision_stats(counters.decision_s)
    summary["host_dependent"] = resolved.host_dependent
    summary["simulator"] = {
        "policy": cfg.policy, "gpus": cfg.gpus, "length_source": cfg.length_source,
        "cost_model": resolved.cost_model.name, "decision_time": cfg.decision_time, "seed": cfg.seed,
        "simulated_duration_s": counters.last_step_end_s,
        "worker_busy_s": counters.busy_s,
        "worker_busy_imbalance_max_over_mean": _imbalance(counters.busy_s),
        "requests_per_worker": counters.decisions_by_worker,
        "steps": counters.steps, "prefill_steps": counters.prefill_steps,
        "retracted": counters.retracted, "held_decisions": counters.held,
        "kv_events": {"batches_published": sum(counters.event_batches), "batches_applied": feed.batches,
                      "stored_pages": feed.stored_pages, "removed_pages": feed.removed_pages,
                      "gaps": feed.gaps, "resyncs": feed.resyncs, "malformed": feed.malformed},
        "ledger_dropped_by_load_check": counters.reconciled_stale,
        "ledger_expired": sim.router.ledger.expired,
        "prefix_hit_rate": summary["prefix_hit_rate"],
    }
    header = sim.trace.header
    config = {"simulate": resolved.to_dict(),
              "trace_header": {"generator": header.generator, "seed": header.seed, "version": header.version,
                               "tokenizer": header.tokenizer, "config": header.config}}
    return SimOutcome(sim.results, summary, config)


def write_outputs(outcome: SimOutcome, out_dir: str | pathlib.Path, trace_path: str | None = None) -> None:
    """Write requests.csv, summary.json and config.json into `out_dir` (created)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = dict(outcome.summary)
    config = dict(outcome.config)
    if trace_path is not None:
        summary["trace"] = config["trace"] = str(trace_path)
    write_csv(outcome.results, out / "requests.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
