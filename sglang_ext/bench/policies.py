"""`bench policies`: per-decision time of every registered policy, driven through `Router`.

What is measured: `Router.route` (the host's prefix match on the global mirror, the
policy's `choose`, and the ledger and mirror updates), timed per request with
`time.perf_counter_ns`, on a synthetic ReAct-like stream of token ids. Reported: mean,
p50 and p99 in microseconds over the last `--window` decisions (the steady state: the
trees and windows are warm), per policy, number of workers and request rate; beside the
wall-clock figures, the mean CPU time of the routing thread (`time.thread_time_ns`), which
other processes' preemption does not inflate.

The stream (seeded, deterministic): `--workloads` workloads, each with its own
`--prefix-tokens`-token shared prefix (few-shot ReAct examples); episodes answer one
question each (a unique ~60-token question after the prefix) in 1-6 turns, each turn's
prompt extending the previous turn's by one 80-160-token Thought/Action/Observation step.
About 32 episodes run interleaved. `max_new_tokens` is drawn from {1, 16, 64, 128, 300}.
Arrivals are evenly spaced at `--rates` requests/s (`now_s = i / rate`), which is what
PREBLE's 3-minute window sees. Feedback is synthetic: each request's prefill is reported
done `--prefill-lag` requests later and it finishes `--inflight` requests later, so loads
stay bounded and policies that learn from feedback (PREBLE's TPOT, TTFT) get it.

The host runs the approximate mirror (insert on dispatch, LRU within the KV capacity,
default 198,516 tokens per worker, PREBLE's A6000 figure), page size 1.

Timings are noisy on a shared machine: every policy runs at each worker count before the
next count (side by side), and `--repeats N` reports the median over N runs of each
statistic.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

from sglang_ext.core.policies import POLICIES, Request
from sglang_ext.core.router import Router, RouterConfig

VOCAB = 32_000
OUTPUT_CHOICES = (1, 16, 64, 128, 300)


@dataclass(frozen=True)
class BenchConfig:
    """Benchmark settings (see `--help`)."""

    policies: tuple[str, ...] = field(default_factory=lambda: tuple(POLICIES))
    workers: tuple[int, ...] = (2, 8, 32, 64, 128)
    rates_rps: tuple[float, ...] = (16.0, 128.0)
    requests: int = 4000
    window: int = 1000
    workloads: int = 10
    prefix_tokens: int = 1800
    concurrent_episodes: int = 32
    prefill_lag: int = 8
    inflight: int = 256
    kv_capacity_tokens: int = 198_516
    repeats: int = 1
    seed: int = 0


def make_stream(cfg: BenchConfig) -> list[Request]:
    """The synthetic ReAct-like request stream (same seed, same stream)."""
    rng = random.Random(cfg.seed)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(VOCAB) for _ in range(n)]

    prefixes = [tokens(cfg.prefix_tokens) for _ in range(cfg.workloads)]
    episodes: list[list] = []  # [prompt so far, turns left]
    out: list[Request] = []
    while len(out) < cfg.requests:
        while len(episodes) < cfg.concurrent_episodes:
            prompt = prefixes[rng.randrange(cfg.workloads)] + tokens(rng.randint(40, 80))
            episodes.append([prompt, rng.randint(1, 6)])
        k = rng.randrange(len(episodes))
        episode = episodes[k]
        episode[0] = episode[0] + tokens(rng.randint(80, 160))
        episode[1] -= 1
        out.append(Request(f"r{len(out)}", episode[0], rng.choice(OUTPUT_CHOICES)))
        if episode[1] == 0:
            episodes.pop(k)
    return out


def run_one(policy: str, workers: int, rate_rps: float, stream: list[Request],
            cfg: BenchConfig) -> dict:
    """Drive one router over the stream; returns the statistics of the last decisions."""
    router = Router(RouterConfig(policy=policy, num_workers=workers, page_size=1,
                                 kv_capacity_tokens=cfg.kv_capacity_tokens, seed=cfg.seed))
    timings, cpu_timings = [], []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    gc.collect()
    started = time.perf_counter()
    for i, request in enumerate(stream):
        now = i / rate_rps
        c0 = cpu_clock()
        t0 = clock()
        router.route(request, now)
        t1 = clock()
        cpu_timings.append(cpu_clock() - c0)
        timings.append(t1 - t0)
        # Synthetic feedback, outside the timed region.
        if i >= cfg.prefill_lag:
            router.prefill_done(stream[i - cfg.prefill_lag].rid, now)
        if i >= cfg.inflight:
            done = stream[i - cfg.inflight]
            router.finished(done.rid, done.max_new_tokens, now)
    elapsed = time.perf_counter() - started
    last = sorted(timings[-cfg.window:])
    cpu = sorted(cpu_timings[-cfg.window:])
    n = len(last)
    return {
        "policy": policy, "workers": workers, "rate_rps": rate_rps, "requests": len(stream),
        "mean_us": sum(last) / n / 1000, "p50_us": last[n // 2] / 1000,
        "p99_us": last[min(n - 1, int(0.99 * n))] / 1000, "max_us": last[-1] / 1000,
        # This thread's CPU time: immune to preemption by other processes on a shared box.
        "cpu_mean_us": sum(cpu) / n / 1000, "cpu_p99_us": cpu[min(n - 1, int(0.99 * n))] / 1000,
        "run_s": elapsed,
    }


def run_all(cfg: BenchConfig, log=print) -> list[dict]:
    stream = make_stream(cfg)
    results = []
    for rate in cfg.rates_rps:
        for workers in cfg.workers:
            for policy in cfg.policies:
                runs = [run_one(policy, workers, rate, stream, cfg) for _ in range(cfg.repeats)]
                row = dict(runs[0])
                for key in ("mean_us", "p50_us", "p99_us", "max_us", "cpu_mean_us",
                            "cpu_p99_us", "run_s"):
                    row[key] = statistics.median(r[key] for r in runs)
                row["repeats"] = cfg.repeats
                results.append(row)
                log(f"  {policy:>20s} workers={workers:<4d} rate={rate:g}/s  "
                    f"mean {row['mean_us']:9.1f} us  p50 {row['p50_us']:9.1f}  "
                    f"p99 {row['p99_us']:9.1f}  cpu mean {row['cpu_mean_us']:9.1f}  "
                    f"({row['run_s']:.1f} s)")
    return results


def format_table(results: list[dict], cfg: BenchConfig) -> str:
    """Policies as rows, worker counts as columns: wall 'mean / p99' and CPU mean, us."""
    lines = []
    for rate in cfg.rates_rps:
        header = f"{'policy':>20s} | " + " | ".join(f"{w:>4d} wkr mean/p99 (cpu) us" for w in cfg.workers)
        lines += [f"rate {rate:g} req/s, last {cfg.window} of {cfg.requests} decisions", header,
                  "-" * len(header)]
        for policy in cfg.policies:
            cells = []
            for w in cfg.workers:
                row = next(r for r in results
                           if r["policy"] == policy and r["workers"] == w and r["rate_rps"] == rate)
                cells.append(f"{row['mean_us']:.0f} /{row['p99_us']:6.0f} ({row['cpu_mean_us']:.0f})")
            lines.append(f"{policy:>20s} | " + " | ".join(f"{c:>27s}" for c in cells))
        lines.append("")
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    parser.epilog = ("examples:\n  python -m sglang_ext.bench policies\n"
                     "  python -m sglang_ext.bench policies --workers 2,8 --requests 2000 "
                     "--policies preble,prefix_length_aware --repeats 3")
    parser.add_argument("--policies", type=lambda s: tuple(s.split(",")), default=d.policies,
                        help="comma-separated policy names (default: every registered one)")
    parser.add_argument("--workers", type=_ints, default=d.workers,
                        help="comma-separated worker counts (default: 2,8,32,64,128)")
    parser.add_argument("--rates", type=_floats, default=d.rates_rps, dest="rates_rps",
                        help="comma-separated request rates, requests/s (default: 16,128)")
    parser.add_argument("--requests", type=int, default=d.requests,
                        help="requests per run (default: 4000)")
    parser.add_argument("--window", type=int, default=d.window,
                        help="statistics over the last N decisions (default: 1000)")
    parser.add_argument("--workloads", type=int, default=d.workloads, help="shared prefixes (10)")
    parser.add_argument("--prefix-tokens", type=int, default=d.prefix_tokens,
                        help="tokens per shared prefix (1800)")
    parser.add_argument("--concurrent-episodes", type=int, default=d.concurrent_episodes,
                        help="ReAct episodes interleaved in the stream (32)")
    parser.add_argument("--inflight", type=int, default=d.inflight,
                        help="a request finishes this many requests after it (256)")
    parser.add_argument("--prefill-lag", type=int, default=d.prefill_lag,
                        help="a request's prefill is done this many requests after it (8)")
    parser.add_argument("--kv-capacity-tokens", type=int, default=d.kv_capacity_tokens,
                        help="KV capacity per worker, tokens (198516)")
    parser.add_argument("--repeats", type=int, default=d.repeats,
                        help="runs per point; the median of each statistic is reported (1)")
    parser.add_argument("--seed", type=int, default=d.seed, help="stream and policy seed (0)")
    parser.add_argument("--out", default="runs/bench_policies.json",
                        help="JSON output path (default: runs/bench_policies.json)")


def run(args: argparse.Namespace) -> int:
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        print(f"error: unknown policy {', '.join(unknown)}; valid: {', '.join(POLICIES)}",
              file=sys.stderr)
        return 2
    if args.requests < 1 or args.window < 1 or args.repeats < 1 or not args.workers \
            or min(args.workers) < 1 or not args.rates_rps or min(args.rates_rps) <= 0:
        print("error: --requests, --window, --repeats, --workers and --rates must be positive",
              file=sys.stderr)
        return 2
    fields = {k: getattr(args, k) for k in BenchConfig.__dataclass_fields__}
    cfg = BenchConfig(**fields)
    print(f"bench policies: {len(cfg.policies)} policies x workers {list(cfg.workers)} x "
          f"rates {list(cfg.rates_rps)}, {cfg.requests} requests each")
    results = run_all(cfg)
    table = format_table(results, cfg)
    print()
    print(table)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    payload = {
        "config": asdict(cfg),
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "platform": platform.platform()},
        "results": results,
        "table": table,
    }
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {args.out}")
    return 0
