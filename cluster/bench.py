"""`python -m cluster bench`: what the simulator itself costs on this host.

The target (the simulator issue): 16 GPUs x 128 requests/s x 10 simulated minutes in under
60 s on one core. The benchmark generates ReAct traces (cached in `OUT/traces/`), then for
each rate x GPU count times, separately, reading the trace and `run_simulation`, in CPU
seconds of this process (`time.process_time`: one core, whatever else the host runs) and
in wall seconds. It prints a table, writes `bench.json`, and plots simulator seconds per
simulated second against GPUs, one line per rate (`bench.png`).

These are host measurements (the simulator's own outputs never read the host clock); the
JSON says which host and load average they were taken under.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

from cluster.config import SimConfig

# The poster's ReAct shape (as `cluster/sweeps/poster.toml`): outputs of 1 and 300 tokens,
# 10 workloads, 4 in-context examples, tokens counted by SmolLM2's tokenizer.
REACT_ARGS = ("--output-lengths", "1:0.5,300:0.5", "--max-new-tokens", "300", "--workloads", "10",
              "--examples", "4", "--token-ids", "--tokenizer", "models/smollm2-135m")


@dataclass(frozen=True)
class BenchRow:
    gpus: int
    rate_rps: float
    duration_s: float
    requests: int
    read_trace_cpu_s: float
    simulate_cpu_s: float
    simulate_wall_s: float
    simulated_s: float
    steps: int

    @property
    def cpu_per_simulated_s(self) -> float:
        return self.simulate_cpu_s / max(self.simulated_s, 1e-9)


def react_trace(out: pathlib.Path, rate_rps: float, duration_s: float, seed: int) -> pathlib.Path:
    path = out / "traces" / f"react-r{rate_rps:g}-d{duration_s:g}-s{seed}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        subprocess.run([sys.executable, "-m", "traces", "generate", "react", "--out", str(tmp), "--rate-rps",
                        f"{rate_rps:g}", "--duration-s", f"{duration_s:g}", "--seed", str(seed), *REACT_ARGS],
                       check=True, capture_output=True)
        tmp.rename(path)
    return path


def measure(trace_path: pathlib.Path, gpus: int, rate_rps: float, duration_s: float, policy: str,
            cost_model: str, seed: int) -> BenchRow:
    from cluster.engine import run_simulation
    from traces.format import read_trace

    c0 = time.process_time()
    trace = read_trace(trace_path)
    c1 = time.process_time()
    w1 = time.perf_counter()
    outcome = run_simulation(trace, SimConfig(gpus=gpus, policy=policy, cost_model=cost_model, seed=seed))
    w2 = time.perf_counter()
    c2 = time.process_time()
    sim = outcome.summary["simulator"]
    return BenchRow(gpus, rate_rps, duration_s, len(trace.requests), c1 - c0, c2 - c1, w2 - w1,
                    sim["simulated_duration_s"], int(sum(sim["steps"])))


def print_rows(rows: list[BenchRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="simulator cost on this host (CPU seconds of one process)")
    for col in ("GPUs", "rate rps", "trace s", "requests", "read trace s", "simulate s (cpu)",
                "simulate s (wall)", "simulated s", "cpu s / simulated s", "steps"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r.gpus), f"{r.rate_rps:g}", f"{r.duration_s:g}", str(r.requests),
                      f"{r.read_trace_cpu_s:.1f}", f"{r.simulate_cpu_s:.1f}", f"{r.simulate_wall_s:.1f}",
                      f"{r.simulated_s:.0f}", f"{r.cpu_per_simulated_s:.3f}", str(r.steps))
    Console(width=150).print(table)


def plot(rows: list[BenchRow], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for rate in sorted({r.rate_rps for r in rows}):
        pts = sorted((r.gpus, r.cpu_per_simulated_s) for r in rows if r.rate_rps == rate)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{rate:g} rps")
    ax.axhline(0.1, color="grey", linestyle="--", linewidth=0.8, label="target: 60 s per 600 s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("simulated GPUs")
    ax.set_ylabel("simulator CPU s per simulated s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_bench(out: pathlib.Path, gpus: list[int], rates: list[float], duration_s: float, policy: str,
              cost_model: str, seed: int) -> list[BenchRow]:
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    cells = [(rate, g) for rate in rates for g in gpus]
    for rate, g in tqdm(cells, desc="bench", unit="cell"):
        path = react_trace(out, rate, duration_s, seed)
        rows.append(measure(path, g, rate, duration_s, policy, cost_model, seed))
    print_rows(rows)
    (out / "bench.json").write_text(json.dumps({
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                 "load_average_1m_at_end": os.getloadavg()[0]},
        "policy": policy, "cost_model": cost_model, "seed": seed,
        "rows": [asdict(r) | {"cpu_per_simulated_s": r.cpu_per_simulated_s} for r in rows],
    }, indent=2) + "\n")
    plot(rows, out / "bench.png")
    return rows
