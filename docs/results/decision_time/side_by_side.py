"""Run `python -m sglang_ext.bench policies` on two checkouts, alternating, and compare.

Why: on this shared 2-core host two identical runs a minute apart differed by up to 2.5x,
so a before/after comparison is only fair when both run under the same load: the runs
alternate (before, after, before, after, ...), each run's host load and CPU steal are
recorded, and the report gives, per policy and statistic, the median over runs and the
ratio after / before of those medians (and the per-pair ratios' range).

Each checkout runs its own code: the command runs with the checkout as working directory
(`python -m` puts it first on `sys.path`), so a checkout needs its C helpers built in
place (`python setup.py build_ext --inplace`). Example (the earlier commit in
/tmp/before):

    git worktree add --detach /tmp/before <commit> && (cd /tmp/before && python setup.py -q build_ext --inplace)
    python docs/results/decision_time/side_by_side.py --before /tmp/before --after . --repeats 3 \\
        --out docs/results/decision_time/side_by_side.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

STATS = ("cpu_p50_us", "cpu_p99_us", "cpu_mean_us", "p50_us", "p99_us", "mean_us")


def cpu_counters() -> tuple[int, int]:
    """(total jiffies, steal jiffies) of the whole host, from /proc/stat (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return 0, 0
    return sum(fields), fields[7] if len(fields) > 7 else 0


def one_run(checkout: str, bench_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.json")
        total0, steal0 = cpu_counters()
        load0, t0 = os.getloadavg(), time.time()
        subprocess.run([sys.executable, "-m", "sglang_ext.bench", "policies", *bench_args, "--out", out],
                       cwd=checkout, check=True, stdout=subprocess.DEVNULL)
        total1, steal1 = cpu_counters()
        with open(out) as f:
            payload = json.load(f)
    return {"checkout": os.path.abspath(checkout), "started_unix_s": t0, "wall_s": time.time() - t0,
            "load_avg_before": load0, "load_avg_after": os.getloadavg(),
            "steal_percent": 100.0 * (steal1 - steal0) / max(1, total1 - total0),
            "rows": payload["results"]}


def key(row: dict) -> tuple:
    return row["policy"], row["workers"], row["input"], row["rate_rps"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="checkout directory of the code before")
    parser.add_argument("--after", required=True, help="checkout directory of the code after")
    parser.add_argument("--repeats", type=int, default=3, help="alternating before/after pairs (3)")
    parser.add_argument("--policies", default="prefix_length_aware,kv_cost,lmetric,total_tokens,round_robin")
    parser.add_argument("--workers", default="128")
    parser.add_argument("--bench-args", default="--rates 128 --prefix-tokens 7600 --requests 2000 --window 1000 "
                                                 "--seeds 0,1,2 --inputs array",
                        help="further arguments of bench policies")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    bench_args = ["--policies", args.policies, "--workers", args.workers, *args.bench_args.split()]
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for pair in range(args.repeats):
        for side in ("before", "after"):
            run = one_run(getattr(args, side), bench_args)
            runs[side].append(run)
            print(f"pair {pair + 1}/{args.repeats} {side:>6s}: load {run['load_avg_before'][0]:.1f} -> "
                  f"{run['load_avg_after'][0]:.1f}, steal {run['steal_percent']:.1f} %, {run['wall_s']:.0f} s",
                  flush=True)
    table = []
    for row in runs["before"][0]["rows"]:
        k = key(row)
        cells = {"policy": k[0], "workers": k[1], "input": k[2], "rate_rps": k[3]}
        for stat in STATS:
            per = {side: [next(r for r in run["rows"] if key(r) == k)[stat] for run in runs[side]]
                   for side in runs}
            before, after = statistics.median(per["before"]), statistics.median(per["after"])
            pair_ratios = [a / b for a, b in zip(per["after"], per["before"])]
            cells[stat] = {"before": before, "after": after, "ratio": after / before,
                           "pair_ratio_min": min(pair_ratios), "pair_ratio_max": max(pair_ratios),
                           "before_runs": per["before"], "after_runs": per["after"]}
        table.append(cells)
    print(f"\n{'policy':>20s} {'wkr':>4s} | " + " | ".join(f"{s:>26s}" for s in STATS[:3]))
    for cells in table:
        print(f"{cells['policy']:>20s} {cells['workers']:>4d} | " + " | ".join(
            f"{cells[s]['before']:7.1f} -> {cells[s]['after']:6.1f} ({cells[s]['ratio']:.2f}x)" for s in STATS[:3]))
    payload = {"command": sys.argv, "bench_args": bench_args,
               "host": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
               "runs": runs, "table": table}
    with open(args.out, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
