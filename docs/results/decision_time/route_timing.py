"""Time `Router.route` (the whole decision) and `Router.cached_tokens` (the prefix match on
both trees) on list and array('q') prompts, for whatever `sglang_ext` is importable.

Why a script beside `bench policies`: it runs unchanged on an older checkout (whose own
benchmark fed lists only), so one host can time the code before and after a change under
the same conditions. Example (a checkout of the earlier commit in /tmp/before, its C
helper built in place):

    PYTHONPATH=/tmp/before python docs/results/decision_time/route_timing.py --out before.json
    python docs/results/decision_time/route_timing.py --out after.json

Stream: `bench policies`' ReAct-like generator (same seed, same stream), shared prefixes
of `--prefix-tokens` tokens (7,600 gives ~8K-token prompts); synthetic feedback as there
(prefill done 8 requests later, finished 256 later). Figures: CPU time of this thread
(`time.thread_time_ns`) over the last `--window` decisions, median over seeds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time
from array import array

import sglang_ext
from sglang_ext.bench.policies import BenchConfig, make_stream
from sglang_ext.core.policies import Request
from sglang_ext.core.router import Router, RouterConfig


def one_run(policy: str, workers: int, stream: list, window: int) -> dict:
    router = Router(RouterConfig(policy=policy, num_workers=workers, page_size=1,
                                 kv_capacity_tokens=198_516))
    route_ns, match_ns = [], []
    cpu = time.thread_time_ns
    for i, request in enumerate(stream):
        now = i / 128.0
        t0 = cpu()
        router.cached_tokens(request)  # the match alone (route repeats it)
        t1 = cpu()
        router.route(request, now)
        t2 = cpu()
        match_ns.append(t1 - t0)
        route_ns.append(t2 - t1)
        if i >= 8:
            router.prefill_done(stream[i - 8].rid, now)
        if i >= 256:
            router.finished(stream[i - 256].rid, stream[i - 256].max_new_tokens, now)
    out = {}
    for name, values in (("route", route_ns), ("match", match_ns)):
        t = sorted(values[-window:])
        n = len(t)
        out[f"{name}_p50_us"] = t[n // 2] / 1e3
        out[f"{name}_p99_us"] = t[min(n - 1, int(0.99 * n))] / 1e3
        out[f"{name}_mean_us"] = sum(t) / n / 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="prefix_length_aware,kv_cost,total_requests,round_robin")
    parser.add_argument("--workers", default="128")
    parser.add_argument("--prefix-tokens", type=int, default=7600)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    streams = {s: make_stream(BenchConfig(requests=args.requests, prefix_tokens=args.prefix_tokens, seed=s))
               for s in seeds}
    fed = {(s, kind): (st if kind == "list" else [Request(r.rid, array("q", r.input_ids), r.max_new_tokens)
                                                  for r in st])
           for s, st in streams.items() for kind in ("list", "array")}
    # The benchmark's own inputs are frozen out of the cyclic GC (as `bench policies` and
    # `bench mirror` do, and the live controller freezes its start-up heap).
    gc.collect()
    gc.freeze()
    rows = []
    for workers in (int(w) for w in args.workers.split(",")):
        for policy in args.policies.split(","):
            for kind in ("list", "array"):
                runs = [one_run(policy, workers, fed[s, kind], args.window) for s in seeds]
                row = {"policy": policy, "workers": workers, "input": kind, "seeds": seeds}
                row.update({k: statistics.median(r[k] for r in runs) for k in runs[0]})
                row["per_seed_route_p99_us"] = [r["route_p99_us"] for r in runs]
                rows.append(row)
                print(f"{policy:>20s} {workers:>4d} {kind:>5s}  route p50 {row['route_p50_us']:7.1f} "
                      f"p99 {row['route_p99_us']:7.1f} | match p50 {row['match_p50_us']:6.1f} "
                      f"p99 {row['match_p99_us']:6.1f} us", flush=True)
    prompt = statistics.mean(len(r.input_ids) for st in streams.values() for r in st)
    payload = {"code": os.path.dirname(sglang_ext.__file__), "mean_prompt_tokens": prompt,
               "args": vars(args), "host": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                            "python": platform.python_version(),
                                            "load_avg_at_end": os.getloadavg()},
               "rows": rows}
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {args.out} (mean prompt {prompt:.0f} tokens)")


if __name__ == "__main__":
    main()
