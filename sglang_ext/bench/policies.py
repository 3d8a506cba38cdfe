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

Input: SGLang 0.5.23 hands the controller `input_ids` as `array('q')` (DESIGN.md 7.5),
so that is what `--inputs array` feeds (built before the timed region); `--inputs list`
feeds Python lists, as tests and the simulator do. The default runs both side by side.

Timings are noisy on a shared machine: every policy and input runs at each worker count
before the next count (side by side), and each point is the median of every statistic
over `--seeds` (each seed its own stream) x `--repeats` runs.

`--write-model DIR` writes one decision-time model file per policy
(`cluster/decision_time.py` reads them): mean and p99 CPU time per worker count at the
highest rate, `array` input (what the controller pays), and a history term from the
mean CPU time of consecutive blocks of `--window` decisions at the largest worker count.
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
from array import array
from dataclasses import asdict, dataclass, field, replace

from sglang_ext.core.policies import POLICIES, Request
from sglang_ext.core.router import Router, RouterConfig
from traces.summary import percentile

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
    seeds: tuple[int, ...] = (0,)
    inputs: tuple[str, ...] = ("list", "array")  # array: array('q'), as SGLang sends


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


INPUTS = ("list", "array")
STATISTICS = ("mean_us", "p50_us", "p99_us", "max_us", "cpu_mean_us", "cpu_p50_us", "cpu_p99_us", "run_s")


def as_input(stream: list[Request], kind: str) -> list[Request]:
    """The stream with prompts as `kind`: `list`, or `array` (array('q'), SGLang's type)."""
    if kind == "list":
        return stream
    if kind == "array":
        return [Request(r.rid, array("q", r.input_ids), r.max_new_tokens) for r in stream]
    raise ValueError(f"unknown input {kind!r}; valid: {', '.join(INPUTS)}")


def _quantile(sorted_ns: list[int], q: float) -> float:
    """Microseconds; the percentile every benchmark uses (traces/summary.py), not nearest rank."""
    return percentile(sorted_ns, q * 100) / 1000


def run_one(policy: str, workers: int, rate_rps: float, stream: list[Request],
            cfg: BenchConfig) -> dict:
    """Drive one router over the stream; returns the statistics of the last decisions,
    and the mean CPU time of each block of `window` decisions (`history_cpu_mean_us`)."""
    router = Router(RouterConfig(policy=policy, num_workers=workers, page_size=1,
                                 kv_capacity_tokens=cfg.kv_capacity_tokens, seed=cfg.seed))
    timings, cpu_timings = [], []
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
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
    blocks = [cpu_timings[k : k + cfg.window] for k in range(0, len(cpu_timings), cfg.window)]
    return {
        "policy": policy, "workers": workers, "rate_rps": rate_rps, "requests": len(stream),
        "mean_us": sum(last) / n / 1000, "p50_us": _quantile(last, 0.5),
        "p99_us": _quantile(last, 0.99), "max_us": last[-1] / 1000,
        # This thread's CPU time: immune to preemption by other processes on a shared box.
        "cpu_mean_us": sum(cpu) / n / 1000, "cpu_p50_us": _quantile(cpu, 0.5),
        "cpu_p99_us": _quantile(cpu, 0.99),
        "history_decisions": [k + len(b) // 2 for k, b in zip(range(0, len(cpu_timings), cfg.window), blocks)],
        "history_cpu_mean_us": [sum(b) / len(b) / 1000 for b in blocks],
        "run_s": elapsed,
    }


def run_all(cfg: BenchConfig, log=print) -> list[dict]:
    streams = {seed: make_stream(replace(cfg, seed=seed)) for seed in cfg.seeds}
    fed = {(seed, kind): as_input(stream, kind) for seed, stream in streams.items()
           for kind in cfg.inputs}
    # The streams (millions of ints in lists) are frozen out of the cyclic GC, as the live
    # controller freezes its start-up heap (`bench mirror` does the same): otherwise every
    # full collection traverses them, a 10-20 ms pause charged to whichever decision it
    # hits, and a cost the controller, which holds no such heap, never pays.
    gc.collect()
    gc.freeze()
    try:
        return _run_points(cfg, fed, log)
    finally:
        gc.unfreeze()


def _run_points(cfg: BenchConfig, fed: dict, log) -> list[dict]:
    results = []
    for rate in cfg.rates_rps:
        for workers in cfg.workers:
            for policy in cfg.policies:
                for kind in cfg.inputs:
                    runs = [run_one(policy, workers, rate, fed[seed, kind], replace(cfg, seed=seed))
                            for seed in cfg.seeds for _ in range(cfg.repeats)]
                    row = dict(runs[0])
                    for key in STATISTICS:
                        row[key] = statistics.median(r[key] for r in runs)
                    row["history_cpu_mean_us"] = [statistics.median(col) for col in
                                                  zip(*(r["history_cpu_mean_us"] for r in runs))]
                    row.update(input=kind, seeds=list(cfg.seeds), repeats=cfg.repeats,
                               runs=len(runs), per_run_cpu_p99_us=[r["cpu_p99_us"] for r in runs])
                    results.append(row)
                    log(f"  {policy:>20s} {kind:>5s} workers={workers:<4d} rate={rate:g}/s  "
                        f"mean {row['mean_us']:8.1f} us  p50 {row['p50_us']:8.1f}  "
                        f"p99 {row['p99_us']:8.1f}  cpu mean {row['cpu_mean_us']:8.1f} "
                        f"p99 {row['cpu_p99_us']:8.1f}  ({row['run_s']:.1f} s)")
    return results


def format_table(results: list[dict], cfg: BenchConfig) -> str:
    """Policies x inputs as rows, worker counts as columns: CPU 'mean / p99' and wall p99, us."""
    lines = []
    for rate in cfg.rates_rps:
        header = (f"{'policy':>20s} {'input':>5s} | "
                  + " | ".join(f"{w:>4d} wkr cpu mean/p99 (wall p99)" for w in cfg.workers))
        lines += [f"rate {rate:g} req/s, last {cfg.window} of {cfg.requests} decisions, median over "
                  f"seeds {list(cfg.seeds)} x {cfg.repeats} repeat(s); microseconds", header,
                  "-" * len(header)]
        for policy in cfg.policies:
            for kind in cfg.inputs:
                cells = []
                for w in cfg.workers:
                    row = next(r for r in results if r["policy"] == policy and r["workers"] == w
                               and r["rate_rps"] == rate and r["input"] == kind)
                    cells.append(f"{row['cpu_mean_us']:.0f} /{row['cpu_p99_us']:6.0f} ({row['p99_us']:.0f})")
                lines.append(f"{policy:>20s} {kind:>5s} | " + " | ".join(f"{c:>32s}" for c in cells))
        lines.append("")
    return "\n".join(lines)


def model_files(results: list[dict], cfg: BenchConfig, host: dict) -> dict[str, dict]:
    """One decision-time model (see `cluster/decision_time.py`) per policy, from the `array`
    rows (what the controller pays) at the highest rate."""
    kind = "array" if "array" in cfg.inputs else cfg.inputs[0]
    rate = max(cfg.rates_rps)
    host_text = (f"{host['platform']}, {host['cpus']} CPUs, Python {host['python']}; CPU time of "
                 f"the routing thread (time.thread_time_ns), measured by bench policies")
    out = {}
    for policy in cfg.policies:
        rows = sorted((r for r in results if r["policy"] == policy and r["input"] == kind
                       and r["rate_rps"] == rate), key=lambda r: r["workers"])
        top = rows[-1]
        last_block = top["history_cpu_mean_us"][-1]
        out[policy] = {
            "format": "decision-time-model/1",
            "source": (f"python -m sglang_ext.bench policies: this project's `{policy}` driven through "
                       f"Router.route (prefix match on the approximate mirror and the in-flight "
                       f"prompts, the policy, ledger and mirror updates), {cfg.requests} ReAct-like "
                       f"requests per run ({cfg.workloads} workloads, {cfg.prefix_tokens}-token "
                       f"shared prefixes), {rate:g} req/s, input_ids as {kind} "
                       f"({'array(q), as SGLang sends' if kind == 'array' else 'Python lists'}); "
                       f"mean and p99 over the last {cfg.window} decisions, median over seeds "
                       f"{list(cfg.seeds)} x {cfg.repeats} repeat(s)"),
            "host": f"measured on this project's host: {host_text}",
            "curves": {policy: {
                "policy": policy,
                "workers": [r["workers"] for r in rows],
                "mean_us": [round(r["cpu_mean_us"], 3) for r in rows],
                "p99_us": [round(r["cpu_p99_us"], 3) for r in rows],
                "reference_decisions": cfg.requests - cfg.window // 2,
                # Mean of each block of decisions at the largest worker count, relative to
                # the last block (the reference): how the cost grows with requests served.
                "history": {"decisions": top["history_decisions"],
                            "factor": [round(m / last_block, 4) for m in top["history_cpu_mean_us"]]},
            }},
        }
    return out


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = BenchConfig()
    parser.epilog = ("examples:\n  python -m sglang_ext.bench policies\n"
                     "  python -m sglang_ext.bench policies --workers 2,8 --requests 2000 "
                     "--policies preble,prefix_length_aware --repeats 3\n"
                     "  python -m sglang_ext.bench policies --workers 8,32,128 --prefix-tokens 7600 "
                     "--seeds 0,1,2 --write-model cluster/decision_models")
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
    parser.add_argument("--seeds", type=_ints, default=d.seeds,
                        help="comma-separated stream and policy seeds; medians over them (0)")
    parser.add_argument("--inputs", type=lambda s: tuple(x for x in s.split(",") if x),
                        default=d.inputs,
                        help="prompt types fed side by side: list (Python lists), array "
                             "(array('q'), what SGLang sends) (default: list,array)")
    parser.add_argument("--write-model", metavar="DIR", default=None,
                        help="write DIR/<policy>.json decision-time models (cluster/decision_time.py)")
    parser.add_argument("--out", default="runs/bench_policies.json",
                        help="JSON output path (default: runs/bench_policies.json)")


def run(args: argparse.Namespace) -> int:
    unknown = [p for p in args.policies if p not in POLICIES]
    if unknown:
        print(f"error: unknown policy {', '.join(unknown)}; valid: {', '.join(POLICIES)}",
              file=sys.stderr)
        return 2
    if args.requests < 1 or args.window < 1 or args.repeats < 1 or not args.workers \
            or min(args.workers) < 1 or not args.rates_rps or min(args.rates_rps) <= 0 \
            or not args.seeds:
        print("error: --requests, --window, --repeats, --workers, --rates and --seeds must be "
              "positive / non-empty", file=sys.stderr)
        return 2
    bad_inputs = [k for k in args.inputs if k not in INPUTS]
    if not args.inputs or bad_inputs:
        print(f"error: --inputs takes {', '.join(INPUTS)}; got {','.join(args.inputs)}", file=sys.stderr)
        return 2
    fields = {k: getattr(args, k) for k in BenchConfig.__dataclass_fields__ if k != "seed"}
    fields["seed"] = args.seeds[0]
    cfg = BenchConfig(**fields)
    print(f"bench policies: {len(cfg.policies)} policies x inputs {list(cfg.inputs)} x workers "
          f"{list(cfg.workers)} x rates {list(cfg.rates_rps)} x seeds {list(cfg.seeds)}, "
          f"{cfg.requests} requests each")
    results = run_all(cfg)
    table = format_table(results, cfg)
    print()
    print(table)
    out_dir = os.path.dirname(args.out)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    host = {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "platform": platform.platform()}
    payload = {"config": asdict(cfg), "host": host, "results": results, "table": table}
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {args.out}")
    if args.write_model:
        os.makedirs(args.write_model, exist_ok=True)
        for policy, model in model_files(results, cfg, host).items():
            path = os.path.join(args.write_model, f"{policy}.json")
            with open(path, "w") as f:
                json.dump(model, f, indent=2)
                f.write("\n")
            print(f"saved {path}")
    return 0
