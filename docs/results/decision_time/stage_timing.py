"""Where a decision's time goes: `Router.route`'s steps timed one by one.

The steps are those of `Router.route` on the approximate mirror (as `bench policies`
drives it), called here in the same order with a clock read between them, so the sum is
close to, not exactly, the whole decision (each read costs ~0.1 us): pack the prompt,
match it on the mirror and on the in-flight union, refresh the changed workers' KV
figures and load columns, build the view, the policy's choice, book it in the ledger and
the holds, insert into the in-flight union and the mirror, refresh the chosen worker.
It runs on whatever `sglang_ext` is importable (it uses only calls both the earlier and
the current router have), so one host can time two checkouts under the same conditions:

    PYTHONPATH=/tmp/before python docs/results/decision_time/stage_timing.py --out before.json
    python docs/results/decision_time/stage_timing.py --out after.json

Stream: `bench policies`' ReAct-like generator with ~8K-token prompts, as `route_timing.py`;
synthetic feedback (prefill done 8 requests later, finished 256 later). Figures: wall
time (`perf_counter_ns`) per step, p50 and mean over the last `--window` decisions, then
the median over seeds; plus, for the slowest 1 % of decisions, each step's mean (which
steps the tail is made of).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time
from array import array

import sglang_ext
from sglang_ext.bench.policies import BenchConfig, make_stream
from sglang_ext.core.policies import Request
from sglang_ext.core.policies.base import ClusterView
from sglang_ext.core.router import Router, RouterConfig

STEPS = ("pack", "match_mirror", "match_inflight", "refresh", "view", "choose", "book", "insert_inflight",
         "insert_mirror", "refresh_chosen", "total")


def one_run(policy: str, workers: int, stream: list, window: int) -> dict:
    router = Router(RouterConfig(policy=policy, num_workers=workers, page_size=1, kv_capacity_tokens=198_516))
    clock = time.perf_counter_ns
    times = {step: [] for step in STEPS}
    for i, request in enumerate(stream):
        now = i / 128.0
        t0 = clock()
        packed = router._pack(request)
        t1 = clock()
        cached = router.tree.match_packed(packed)
        t2 = clock()
        cached = router.inflight.match_packed(packed, floor=cached)
        t3 = clock()
        router.refresh_kv_figures()
        t4 = clock()
        view = ClusterView(now, cached, router.ledger.loads, 1, columns=router.columns)
        t5 = clock()
        worker = router.policy.choose(request, view)
        t6 = clock()
        expected = request.expected_output_tokens(router.config.length_source)
        router.ledger.on_dispatch(request.rid, worker, request.prompt_tokens, cached[worker], expected, now)
        router.holds.queued(request.rid, worker, request.input_ids)
        t7 = clock()
        router.inflight.add(request.rid, worker, request.input_ids, packed)
        t8 = clock()
        router.tree.insert_approximate_packed(worker, packed, router.ledger.loads[worker].kv_capacity_tokens)
        t9 = clock()
        router._refresh_kv(worker)
        t10 = clock()
        marks = (t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10)
        for k, step in enumerate(STEPS[:-1]):
            times[step].append(marks[k + 1] - marks[k])
        times["total"].append(t10 - t0)
        if i >= 8:
            router.prefill_done(stream[i - 8].rid, now)
        if i >= 256:
            router.finished(stream[i - 256].rid, stream[i - 256].max_new_tokens, now)
    last = {step: v[-window:] for step, v in times.items()}
    slow = sorted(range(window), key=lambda k: last["total"][k])[-max(1, window // 100):]
    out = {}
    for step, v in last.items():
        s = sorted(v)
        out[f"{step}_p50_us"] = s[len(s) // 2] / 1e3
        out[f"{step}_mean_us"] = sum(s) / len(s) / 1e3
        out[f"{step}_slowest1pct_mean_us"] = sum(v[k] for k in slow) / len(slow) / 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="prefix_length_aware")
    parser.add_argument("--workers", type=int, default=128)
    parser.add_argument("--prefix-tokens", type=int, default=7600)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    streams = {s: [Request(r.rid, array("q", r.input_ids), r.max_new_tokens)
                   for r in make_stream(BenchConfig(requests=args.requests, prefix_tokens=args.prefix_tokens,
                                                    seed=s))] for s in seeds}
    gc.collect()
    gc.freeze()  # the inputs, as bench policies does
    runs = [one_run(args.policy, args.workers, streams[s], args.window) for s in seeds]
    row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"{'step':>16s} {'p50':>7s} {'mean':>7s} {'slowest 1 %':>12s}  (us, median over seeds {seeds})")
    for step in STEPS:
        print(f"{step:>16s} {row[step + '_p50_us']:7.1f} {row[step + '_mean_us']:7.1f} "
              f"{row[step + '_slowest1pct_mean_us']:12.1f}")
    payload = {"code": os.path.dirname(sglang_ext.__file__), "args": vars(args), "load_avg_at_end": os.getloadavg(),
               "median_over_seeds": row, "per_seed": runs}
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
