"""Live comparison of length sources on real SGLang (CPU, dp=2, tiny model).

    python -m sglang_ext.bench live-lengths [--seeds 1 2] [--rate-rps 1] [--duration-s 40]

For each seed it generates one ReAct trace whose true output lengths are 1 or 300 tokens
(half each; the client declares `max_new_tokens` 512 for all), then replays it against a
fresh server per configuration:

- `round_robin` (SGLang's stock rule, through our blocking loop), for reference;
- `prefix_length_aware` with length source `max_new_tokens`, `predicted` (the MiniLM
  predictor) and `oracle` (the trace's true length, declared by the replay client).

It reports per configuration: e2e and TTFT mean/p99, normalized latency, prefix hit rate,
per-rank output tokens and busy-time imbalance (max/mean), printing a table, saving JSON
and a PNG. Every configuration of a seed replays the same file, one server at a time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

from sglang_ext.bench.live_common import generate_trace, get, serve_and_replay
from sglang_ext.models import tiny_path
from sglang_ext.server import ServerSpec

CONFIGS = [
    ("round_robin", "max_new_tokens"),
    ("prefix_length_aware", "max_new_tokens"),
    ("prefix_length_aware", "predicted"),
    ("prefix_length_aware", "oracle"),
]


def make_trace(out: pathlib.Path, seed: int, rate_rps: float, duration_s: float, examples: int) -> pathlib.Path:
    return generate_trace(out / f"trace_seed{seed}.jsonl", "react", [
        "--seed", str(seed), "--rate-rps", str(rate_rps), "--duration-s", str(duration_s),
        "--output-lengths", "1:0.5,300:0.5", "--max-new-tokens", "512", "--workloads", "4",
        "--examples", str(examples)])


def run_config(trace_path: pathlib.Path, policy: str, length_source: str, out: pathlib.Path,
               length_model: str | None = None) -> dict:
    spec = ServerSpec(str(tiny_path()), dp_size=2, load_balance_method=policy, max_total_tokens=65536,
                      extra_args=["--length-source", length_source]
                      + (["--length-model", length_model] if length_model else []))
    return serve_and_replay(trace_path, spec, out)


def row(policy: str, source: str, seed: int, s: dict) -> dict:
    return {
        "policy": policy, "length_source": source, "seed": seed,
        "e2e_mean_s": get(s, "e2e_s", "mean"), "e2e_p99_s": get(s, "e2e_s", "p99"),
        "ttft_mean_s": get(s, "ttft_s", "mean"), "ttft_p99_s": get(s, "ttft_s", "p99"),
        "norm_latency_mean_s_per_token": get(s, "norm_latency_s_per_token", "mean"),
        "prefix_hit_rate": get(s, "prefix_hit_rate"),
        "busy_imbalance": get(s, "worker_imbalance_busy_max_over_mean"),
        "per_worker": get(s, "per_worker", default=None),
        "succeeded": get(s, "succeeded", default=None), "failed": get(s, "failed", default=None),
        "dispatched_by_worker": get(s, "controller", "dispatched_by_worker", default=None),
        "length_predictions": get(s, "controller", "length_predictions", default=None),
    }


TABLE_COLUMNS = (("policy", "policy", "{}"), ("length_source", "length source", "{}"), ("seed", "seed", "{}"),
                 ("e2e_mean_s", "e2e mean s", "{:.2f}"), ("e2e_p99_s", "e2e p99 s", "{:.2f}"),
                 ("ttft_mean_s", "TTFT mean s", "{:.3f}"), ("ttft_p99_s", "TTFT p99 s", "{:.3f}"),
                 ("norm_latency_mean_s_per_token", "norm lat s/tok", "{:.4f}"),
                 ("prefix_hit_rate", "hit rate", "{:.2f}"), ("busy_imbalance", "imbalance", "{:.2f}"))


def print_table(rows: list[dict]) -> None:
    from traces.console import print_table as print_rich_table

    cells = [[None if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in TABLE_COLUMNS] for r in rows]
    print_rich_table(cells, [head for _, head, _ in TABLE_COLUMNS], title="live-lengths", left_columns=2)


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{p}\n{s}" for p, s in CONFIGS]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for ax, metric, title in zip(axes, ["e2e_mean_s", "e2e_p99_s", "busy_imbalance"],
                                 ["mean e2e (s)", "p99 e2e (s)", "busy-time imbalance (max/mean)"]):
        for i, (policy, source) in enumerate(CONFIGS):
            vals = [r[metric] for r in rows if r["policy"] == policy and r["length_source"] == source]
            ax.bar(i, np.mean(vals) if vals else 0, color=f"C{i}")
            ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
        ax.set_xticks(range(len(CONFIGS)), labels, fontsize=7)
        ax.set_title(title)
    fig.suptitle("ReAct trace, true lengths 1 or 300 tokens, SGLang dp=2 on CPU (dots: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    # CPU decode of the tiny model slows sharply with batch size and context: keep the
    # load where a 300-token answer takes seconds, not minutes.
    parser.add_argument("--rate-rps", type=float, default=1.0)
    parser.add_argument("--examples", type=int, default=1, help="in-context examples per workload")
    parser.add_argument("--duration-s", type=float, default=40.0)
    parser.add_argument("--out", default="runs/live_lengths")
    parser.add_argument("--sources", nargs="+", default=None,
                        help="only these length sources (default: every row)")
    parser.add_argument("--length-model", default=None,
                        help="predictor folder for `predicted` (default: length_model/artifacts)")


def run(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        trace = make_trace(out, seed, args.rate_rps, args.duration_s, args.examples)
        for policy, source in CONFIGS:
            if args.sources and source not in args.sources:
                continue
            started = time.perf_counter()
            print(f"live-lengths: seed {seed}: {policy} / {source} ...", flush=True)
            summary = run_config(trace, policy, source, out / f"seed{seed}_{policy}_{source}",
                                 args.length_model)
            rows.append(row(policy, source, seed, summary))
            print(f"live-lengths:   done in {time.perf_counter() - started:.0f} s", flush=True)
            (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print_table(rows)
    plot(rows, out / "live_lengths.png")
    print(f"live-lengths: wrote {out / 'results.json'} and {out / 'live_lengths.png'}")
    return 0
