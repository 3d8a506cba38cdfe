"""Host cost of one simulated worker (not a test): `python -m cluster.worker_bench`.

Drives one `SimWorker` with a ReAct-like load (shared prefixes, Poisson arrivals) on
PREBLE's A6000 cost model and prints host microseconds per decode step, per prefill
step and per tree operation, so the simulator's budget (16 GPUs x 128 requests/s x 10
simulated minutes in under 60 s on one core) can be checked per worker: each of 16
workers gets 8 requests/s, 4,800 requests in 600 simulated seconds.
"""

from __future__ import annotations

import argparse
import time
from array import array

import numpy as np

from cluster.worker import SimRequest, SimWorker, WorkerConfig
from sglang_ext.core.cost_model import load_cost_model


def workload(seed: int, rate_per_s: float, duration_s: float, groups: int, prefix_tokens: int,
             suffix_tokens: int, max_output_tokens: int) -> list[tuple[float, SimRequest]]:
    rng = np.random.default_rng(seed)
    prefixes = [rng.integers(0, 32000, prefix_tokens) for _ in range(groups)]
    out, t, i = [], 0.0, 0
    while True:
        t += rng.exponential(1 / rate_per_s)
        if t >= duration_s:
            return out
        prompt = np.concatenate([prefixes[int(rng.integers(groups))],
                                 rng.integers(0, 32000, int(rng.integers(suffix_tokens // 2, suffix_tokens * 2)))])
        output = int(rng.integers(1, max_output_tokens + 1))
        out.append((t, SimRequest(f"r{i}", array("q", prompt.tolist()), max_output_tokens, output,
                                  output_seed=int(rng.integers(2**62)))))
        i += 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=8.0, help="requests per simulated second (default 8)")
    parser.add_argument("--duration-s", type=float, default=600.0, help="simulated seconds (default 600)")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--groups", type=int, default=10, help="shared prefixes")
    parser.add_argument("--prefix-tokens", type=int, default=1800)
    parser.add_argument("--suffix-tokens", type=int, default=150)
    parser.add_argument("--max-output-tokens", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cost = load_cost_model("preble-a6000-mistral-7b")
    worker = SimWorker(0, WorkerConfig(kv_capacity_tokens=cost.kv_capacity_tokens, page_size=args.page_size),
                       cost, args.seed)
    jobs = workload(args.seed, args.rate, args.duration_s, args.groups, args.prefix_tokens, args.suffix_tokens,
                    args.max_output_tokens)
    host = {"prefill": 0.0, "decode": 0.0, "idle": 0.0}
    count = {"prefill": 0, "decode": 0, "idle": 0}
    finished = payload_bytes = 0
    now, i = 0.0, 0
    clock = time.perf_counter
    started = clock()
    while i < len(jobs) or worker.has_work():
        if not worker.has_work() and i < len(jobs):
            now = max(now, jobs[i][0])
        while i < len(jobs) and jobs[i][0] <= now:
            worker.submit(jobs[i][1], jobs[i][0])
            i += 1
        t0 = clock()
        result = worker.step(now)
        spent = clock() - t0
        kind = "decode+finish" if result.kind == "decode" and result.finished else result.kind
        host[kind] = host.get(kind, 0.0) + spent
        count[kind] = count.get(kind, 0) + 1
        finished += len(result.finished)
        payload_bytes += sum(len(p) for _, p in result.event_payloads)
        now += result.duration_s
    total = clock() - started
    print(f"{len(jobs)} requests, {finished} finished, {now:.1f} simulated s, host {total:.2f} s")
    for kind in ("prefill", "decode", "decode+finish"):
        n = max(count.get(kind, 0), 1)
        print(f"  {kind:13s} steps {count.get(kind, 0):7d}  host {host.get(kind, 0.0):6.2f} s  "
              f"{host.get(kind, 0.0) / n * 1e6:8.1f} us/step")
    print(f"  per request (all host time / requests): {total / max(len(jobs), 1) * 1e6:.0f} us; "
          f"event payloads {payload_bytes / 1e6:.1f} MB")

    # Tree operations alone, on the same kind of keys: match, insert + events.
    radix = worker.radix
    keys = [job.input_ids for _, job in jobs[:500]]
    t0 = clock()
    for key in keys:
        radix.match(key)
    match_us = (clock() - t0) / len(keys) * 1e6
    radix.evict(radix.evictable_size())
    radix.take_event_payloads(now)
    t0 = clock()
    for key in keys:
        assert radix.alloc(len(key))
        radix.insert_finished(key, len(key), 0, len(key))
    insert_us = (clock() - t0) / len(keys) * 1e6
    t0 = clock()
    payloads = radix.take_event_payloads(now)
    events_us = (clock() - t0) / len(keys) * 1e6
    print(f"  tree: match {match_us:.1f} us, insert {insert_us:.1f} us, take_events+encode {events_us:.1f} us "
          f"per {np.mean([len(k) for k in keys]):.0f}-token key ({sum(len(p) for p in payloads) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
