"""`python -m cluster report DIR`: a sweep's results as a Markdown table and PNG plots.

Per workload and GPU count, each policy's figures at each rate are the mean over seeds,
with the seed-to-seed range beside them (min-max), so a reader sees whether a gap between
two policies exceeds the spread. Plots: latency against rate per policy and GPU count,
decision time against GPU count, and requests in flight per worker over time for one cell
per policy (from its `requests.csv`).
"""

from __future__ import annotations

import csv
import json
import pathlib
from collections import defaultdict
from statistics import mean

# (column title, summary key, statistic, scale, format)
COLUMNS = [
    ("norm latency s/tok", "norm_latency_s_per_token", "mean", 1.0, "{:.4f}"),
    ("e2e mean s", "e2e_s", "mean", 1.0, "{:.2f}"),
    ("e2e p99 s", "e2e_s", "p99", 1.0, "{:.2f}"),
    ("TTFT mean s", "ttft_s", "mean", 1.0, "{:.3f}"),
    ("TTFT p99 s", "ttft_s", "p99", 1.0, "{:.3f}"),
]


def _cell_key(path: pathlib.Path, root: pathlib.Path) -> tuple[str, int, float, str, int]:
    workload, g, r, policy, s = path.relative_to(root / "cells").parts
    return workload, int(g[1:]), float(r[1:]), policy, int(s[1:])


def load_cells(root: pathlib.Path) -> dict[tuple, dict]:
    """Every finished cell's summary, keyed by (workload, gpus, rate, policy, seed)."""
    out = {}
    for summary in sorted((root / "cells").glob("*/*/*/*/*/summary.json")):
        out[_cell_key(summary.parent, root)] = json.loads(summary.read_text())
    return out


def _stat(summary: dict, key: str, stat: str) -> float | None:
    value = summary.get(key)
    if isinstance(value, dict):
        value = value.get(stat)
    return value if isinstance(value, (int, float)) else None


def decision_us(summary: dict, stat: str = "mean") -> float | None:
    return _stat(summary, "decision_time_us", stat)


def aggregate(cells: dict[tuple, dict]) -> dict[tuple, dict[str, tuple[float, float, float, int]]]:
    """(workload, gpus, rate, policy) -> column -> (mean, min, max, seeds)."""
    grouped: dict[tuple, list[dict]] = defaultdict(list)
    for (workload, gpus, rate, policy, _seed), summary in cells.items():
        grouped[(workload, gpus, rate, policy)].append(summary)
    table = {}
    for key, summaries in grouped.items():
        row = {}
        for title, metric, stat, scale, _fmt in COLUMNS:
            values = [v * scale for s in summaries if (v := _stat(s, metric, stat)) is not None]
            if values:
                row[title] = (mean(values), min(values), max(values), len(values))
        hits = [v for s in summaries if (v := s.get("prefix_hit_rate")) is not None]
        if hits:
            row["hit rate"] = (mean(hits), min(hits), max(hits), len(hits))
        dec = [v for s in summaries if (v := decision_us(s)) is not None]
        if dec:
            row["decision us"] = (mean(dec), min(dec), max(dec), len(dec))
        table[key] = row
    return table


def _fmt(cell: tuple[float, float, float, int] | None, fmt: str) -> str:
    if cell is None:
        return "-"
    m, lo, hi, n = cell
    return fmt.format(m) if n < 2 else f"{fmt.format(m)} ({fmt.format(lo)}-{fmt.format(hi)})"


def markdown(table: dict) -> str:
    titles = [c[0] for c in COLUMNS] + ["hit rate", "decision us"]
    fmts = {c[0]: c[4] for c in COLUMNS} | {"hit rate": "{:.2f}", "decision us": "{:.0f}"}
    lines = []
    groups = sorted({(w, g) for w, g, _r, _p in table})
    for workload, gpus in groups:
        lines += [f"### {workload}, {gpus} GPUs", "",
                  "| rate rps | policy | " + " | ".join(titles) + " |",
                  "|---|---|" + "---|" * len(titles)]
        keys = sorted((k for k in table if k[:2] == (workload, gpus)), key=lambda k: (k[2], k[3]))
        for key in keys:
            row = table[key]
            lines.append(f"| {key[2]:g} | {key[3]} | " + " | ".join(_fmt(row.get(t), fmts[t]) for t in titles) + " |")
        lines.append("")
    return "\n".join(lines)


def in_flight_series(requests_csv: pathlib.Path, bins: int = 200) -> tuple[list[float], dict[int, list[int]]]:
    """Requests in flight per worker at `bins` evenly spaced times."""
    spans: dict[int, list[tuple[float, float]]] = defaultdict(list)
    with requests_csv.open() as f:
        for row in csv.DictReader(f):
            if row.get("worker") and row.get("e2e_s"):
                start = float(row["arrival_s"])
                spans[int(row["worker"])].append((start, start + float(row["e2e_s"])))
    if not spans:
        return [], {}
    end = max(e for ws in spans.values() for _s, e in ws)
    times = [end * i / (bins - 1) for i in range(bins)]
    series = {w: [sum(1 for s, e in ws if s <= t < e) for t in times] for w, ws in sorted(spans.items())}
    return times, series


def plots(root: pathlib.Path, cells: dict[tuple, dict], table: dict, out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for workload, gpus in sorted({(w, g) for w, g, _r, _p in table}):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for ax, title in zip(axes, ("norm latency s/tok", "e2e mean s", "e2e p99 s")):
            for policy in sorted({k[3] for k in table if k[:2] == (workload, gpus)}):
                keys = sorted(k for k in table if k[:2] == (workload, gpus) and k[3] == policy and title in table[k])
                if not keys:
                    continue
                rates = [k[2] for k in keys]
                m = [table[k][title][0] for k in keys]
                lo = [table[k][title][0] - table[k][title][1] for k in keys]
                hi = [table[k][title][2] - table[k][title][0] for k in keys]
                ax.errorbar(rates, m, yerr=[lo, hi], marker="o", capsize=3, label=policy)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("request rate (rps)")
            ax.set_title(title)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{workload}, {gpus} GPUs (mean over seeds; bars: min-max)")
        fig.tight_layout()
        path = out / f"latency_{workload}_g{gpus}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    by_policy: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (_w, gpus, _r, policy, _s), summary in cells.items():
        if (v := decision_us(summary)) is not None and v > 0:  # decision time off: nothing to draw
            by_policy[policy][gpus].append(v)
    if by_policy:
        fig, ax = plt.subplots(figsize=(6, 4))
        for policy, per_gpus in sorted(by_policy.items()):
            gs = sorted(per_gpus)
            ax.plot(gs, [mean(per_gpus[g]) for g in gs], marker="o", label=policy)
        ax.set_xlabel("GPUs")
        ax.set_ylabel("decision time, mean (us)")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "decision_time_vs_gpus.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # Load over time: the busiest cell (highest rate, most GPUs, first seed) per policy.
    if cells:
        workload, gpus, rate = max((k[0], k[1], k[2]) for k in cells)
        policies = sorted({k[3] for k in cells if k[:3] == (workload, gpus, rate)})
        fig, axes = plt.subplots(len(policies), 1, figsize=(9, 1.8 * len(policies)), sharex=True, squeeze=False)
        for ax, policy in zip(axes[:, 0], policies):
            seed = min(k[4] for k in cells if k[:4] == (workload, gpus, rate, policy))
            cell_dir = root / "cells" / workload / f"g{gpus}" / f"r{rate:g}" / policy / f"s{seed}"
            times, series = in_flight_series(cell_dir / "requests.csv")
            for worker, counts in series.items():
                ax.plot(times, counts, linewidth=0.7)
            ax.set_ylabel(policy, fontsize=7, rotation=0, ha="right")
        axes[-1, 0].set_xlabel("simulated time (s)")
        fig.suptitle(f"requests in flight per worker: {workload}, {gpus} GPUs, {rate:g} rps")
        fig.tight_layout()
        path = out / "load_over_time.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def write_report(root: pathlib.Path, out: pathlib.Path | None = None) -> pathlib.Path:
    out = out or root / "report"
    out.mkdir(parents=True, exist_ok=True)
    cells = load_cells(root)
    if not cells:
        raise FileNotFoundError(f"{root}: no finished cells (cells/*/*/*/*/*/summary.json)")
    table = aggregate(cells)
    images = plots(root, cells, table, out)
    seeds = sorted({k[4] for k in cells})
    text = [f"# Sweep report: {root.name}", "",
            f"{len(cells)} cells, seeds {seeds}. Figures: mean over seeds (min-max in brackets).", "",
            markdown(table), "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    from cluster import oracle_gain

    # Appended, so the tables above read as before; empty unless the sweep ran
    # prefix_length_aware with max_new_tokens, oracle and predicted lengths.
    if gain := oracle_gain.write(root, out):
        text += ["", gain]
    path = out / "report.md"
    path.write_text("\n".join(text) + "\n")
    (out / "table.json").write_text(json.dumps(
        [{"workload": k[0], "gpus": k[1], "rate_rps": k[2], "policy": k[3],
          **{col: {"mean": v[0], "min": v[1], "max": v[2], "seeds": v[3]} for col, v in row.items()}}
         for k, row in sorted(table.items())], indent=2) + "\n")
    return path

