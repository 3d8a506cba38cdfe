"""Open-loop serving benchmark: Poisson arrivals at a fixed rate into the micro-batching
predictor; latency = prediction available - arrival, per request."""

from __future__ import annotations

import json
import pathlib
import threading
import time

import numpy as np

from traces.summary import prefixed, summarize_values

from .config import BenchConfig, to_dict
from .serving import AsyncLengthPredictor, LengthPredictor


def run_bench(predictor: LengthPredictor, prompts: list[str], cfg: BenchConfig) -> dict:
    if not prompts:
        raise ValueError("no prompts to benchmark with")
    rng = np.random.default_rng(cfg.seed)
    n = max(1, int(cfg.rate_rps * cfg.duration_s))
    arrivals = np.cumsum(rng.exponential(1.0 / cfg.rate_rps, size=n))
    picks = rng.integers(0, len(prompts), size=n)
    done_at = np.full(n, np.nan)
    start_at = np.full(n, np.nan)
    all_done = threading.Event()
    remaining = [n]
    lock = threading.Lock()

    def on_result(rid: int, _tokens: int) -> None:
        done_at[rid] = time.perf_counter()
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                all_done.set()

    with AsyncLengthPredictor(predictor, cfg.max_batch_size, cfg.max_wait_ms,
                              on_result=on_result) as apred:
        t0 = time.perf_counter()
        for i in range(n):
            delay = t0 + arrivals[i] - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            start_at[i] = time.perf_counter()  # the real (possibly late) arrival time
            apred.submit(i, prompts[picks[i]])
        all_done.wait(timeout=max(60.0, 5 * cfg.duration_s))
        apred.poll()
        batch_sizes = list(apred.batch_sizes)
    lat_ms = (done_at - start_at) * 1000.0
    ok = lat_ms[~np.isnan(lat_ms)]
    return {
        "config": to_dict(cfg),
        "requests": n, "completed": int(ok.size),
        "achieved_rate_rps": float(n / (start_at[-1] - start_at[0])) if n > 1 else float("nan"),
        **prefixed(summarize_values(ok), "latency_ms_"),
        "mean_batch_size": float(np.mean(batch_sizes)) if batch_sizes else 0.0,
        "encoder": to_dict(predictor.encoder.cfg),
        "head": predictor.train_cfg.head,
    }


def format_bench_runs(runs: list[dict]) -> str:
    """One row per run, then per model the median of its runs' p50 and p99."""
    lines = ["| model | run | p50 ms | p90 ms | p99 ms | mean batch |", "|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['model']} | {r['repeat'] + 1} | {r['latency_ms_p50']:.2f} | "
                     f"{r['latency_ms_p90']:.2f} | {r['latency_ms_p99']:.2f} | "
                     f"{r['mean_batch_size']:.2f} |")
    for model in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == model]
        lines.append(f"| {model} | median of {len(mine)} | "
                     f"{np.median([r['latency_ms_p50'] for r in mine]):.2f} | "
                     f"{np.median([r['latency_ms_p90'] for r in mine]):.2f} | "
                     f"{np.median([r['latency_ms_p99'] for r in mine]):.2f} | |")
    return "\n".join(lines)


def plot_bench_runs(runs: list[dict], path: pathlib.Path, targets_ms=(5.0, 15.0)) -> None:
    """p50 and p99 of every run, per model, beside the serving targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, target in zip(axes, ("latency_ms_p50", "latency_ms_p99"), targets_ms):
        for i, model in enumerate(models):
            vals = [r[key] for r in runs if r["model"] == model]
            ax.scatter([i] * len(vals), vals, color=f"C{i}")
            ax.hlines(np.median(vals), i - 0.25, i + 0.25, color=f"C{i}")
        ax.axhline(target, color="grey", linestyle="--", label=f"target {target:g} ms")
        ax.set_xticks(range(len(models)), [pathlib.Path(m).name for m in models])
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{key.split('_')[-1]} latency, ms ({runs[0]['config']['rate_rps']:g} req/s)")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_bench(path: pathlib.Path, res: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
