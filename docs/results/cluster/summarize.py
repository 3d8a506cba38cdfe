"""Ours against the best baseline at every point of the recorded simulated sweeps.

    .venv/bin/python docs/results/cluster/summarize.py     # writes summary.md and summary.png here

Reads each sweep's `table.json` (written by `python -m cluster sweep` / `cluster report`): the
mean over seeds of every (GPUs, rate, policy). "Best baseline" is, per point and metric, the
lowest of the policies that are not ours. Each length source of ours is a row of its own.
"""

from __future__ import annotations

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SWEEPS = {"poster": "ReAct 1-vs-300", "sharegpt": "ShareGPT 3-turn", "toolbench": "toolbench Zipf"}
METRICS = ["norm latency s/tok", "e2e mean s", "e2e p99 s", "TTFT mean s", "TTFT p99 s"]
OURS = "prefix_length_aware@"


def ratios(table: list[dict], ours: str, metric: str) -> list[tuple[int, float, float]]:
    """(GPUs, rate, ours / best baseline) per point."""
    out = []
    for gpus, rate in sorted({(r["gpus"], r["rate_rps"]) for r in table}):
        rows = [r for r in table if r["gpus"] == gpus and r["rate_rps"] == rate]
        mine = [r for r in rows if r["policy"] == ours]
        if not mine:
            continue
        best = min(r[metric]["mean"] for r in rows if not r["policy"].startswith(OURS))
        out.append((gpus, rate, mine[0][metric]["mean"] / best))
    return out


def main() -> None:
    lines = ["| workload | ours with | points | " + " | ".join(METRICS) + " |",
             "|---|---|---|" + "---|" * len(METRICS)]
    fig, axes = plt.subplots(1, len(SWEEPS), figsize=(5 * len(SWEEPS), 4), sharey=True)
    for ax, (folder, label) in zip(axes, SWEEPS.items()):
        table = json.loads((HERE / folder / "table.json").read_text())
        for ours in sorted({r["policy"] for r in table if r["policy"].startswith(OURS)}):
            cells = []
            for metric in METRICS:
                rs = [q for _, _, q in ratios(table, ours, metric)]
                below = sum(q < 1 for q in rs)
                cells.append(f"{below}/{len(rs)} below, {min(rs):.2f}-{max(rs):.2f}")
            lines.append(f"| {label} | {ours.split('@')[1]} | {len(rs)} | " + " | ".join(cells) + " |")
        for ours, style in ((OURS + "oracle", "-"), (OURS + "max_new_tokens", "--")):
            for gpus, marker in ((8, "o"), (16, "s")):
                pts = [(rate, q) for g, rate, q in ratios(table, ours, "norm latency s/tok") if g == gpus]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker,
                        label=f"{ours.split('@')[1]}, {gpus} GPUs")
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_xscale("log", base=2)
        rates = sorted({r["rate_rps"] for r in table})
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
        ax.set_title(label)
        ax.set_xlabel("requests/s")
    axes[0].set_ylabel("normalized latency, ours / best baseline")
    axes[0].legend(fontsize=8)
    fig.suptitle("Simulated A6000s (Mistral-7B fit), mean of 3 seeds: below 1 = ours beats every baseline")
    fig.tight_layout()
    fig.savefig(HERE / "summary.png", dpi=110)
    text = ("Cells: points where ours is below the best baseline / points, then the range of "
            "ours / best baseline over the points.\n\n" + "\n".join(lines) + "\n")
    (HERE / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
