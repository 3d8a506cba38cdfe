"""Which share of the oracle's gain over `max_new_tokens` predicted lengths capture.

For one policy (default `prefix_length_aware`) run with three length sources on the same
traces, per workload, GPU count and rate, and per metric (lower is better):

    share = (max_new_tokens - predicted) / (max_new_tokens - oracle)

on the means over seeds: 1 = the predictor does as well as knowing every output length,
0 = no better than planning for the cap, below 0 = worse than the cap. The per-seed shares
(each seed's traces are shared by the three cells, so the comparison is paired) are given
as a range.

A share is only meaningful if the oracle's gain stands out of seed-to-seed noise. The
oracle's gain is called "within the seed spread" when it is not larger than the wider of
the two seed ranges (max - min over seeds) of `max_new_tokens` and of `oracle`, the same
ranges `python -m cluster report` prints in brackets, or when any seed's own gain is not
positive; the share is then printed but marked as meaning nothing. With one seed there is
no spread, and no share is called meaningful.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import asdict, dataclass
from statistics import mean

from cluster.report import _stat, load_cells

# (title, summary key, statistic): the brief's metrics, named as in DESIGN.md section 6.
METRICS = (
    ("e2e mean s", "e2e_s", "mean"),
    ("e2e p99 s", "e2e_s", "p99"),
    ("norm latency s/tok", "norm_latency_s_per_token", "mean"),
)
SOURCES = ("max_new_tokens", "oracle", "predicted")


@dataclass(frozen=True)
class GainShare:
    workload: str
    gpus: int
    rate_rps: float
    metric: str
    seeds: int
    max_new_tokens: float      # mean over seeds
    oracle: float
    predicted: float
    oracle_gain: float         # max_new_tokens - oracle (means)
    seed_spread: float         # the wider seed range of max_new_tokens and oracle
    share: float | None        # None when the oracle's gain is exactly 0
    share_min: float | None    # per-seed shares (paired by seed)
    share_max: float | None
    meaningful: bool           # >= 2 seeds, the oracle's gain exceeds the seed spread, every seed gains


def _policy_entry(entry: str) -> tuple[str, str]:
    policy, _, source = entry.partition("@")
    return policy, source or "max_new_tokens"


def gain_shares(cells: dict[tuple, dict], policy: str = "prefix_length_aware") -> list[GainShare]:
    """From `report.load_cells` output: one row per (workload, gpus, rate, metric) where all
    three length sources have the same seeds finished."""
    by: dict[tuple, dict[str, dict[int, dict]]] = {}
    for (workload, gpus, rate, entry, seed), summary in cells.items():
        name, source = _policy_entry(entry)
        if name == policy and source in SOURCES:
            by.setdefault((workload, gpus, rate), {}).setdefault(source, {})[seed] = summary
    rows = []
    for (workload, gpus, rate), runs in sorted(by.items()):
        if set(runs) != set(SOURCES):
            continue
        seeds = sorted(set.intersection(*(set(runs[s]) for s in SOURCES)))
        for title, key, stat in METRICS:
            values = {s: [_stat(runs[s][seed], key, stat) for seed in seeds] for s in SOURCES}
            ok = [i for i in range(len(seeds)) if all(values[s][i] is not None for s in SOURCES)]
            if not ok:
                continue
            m, o, p = ([values[s][i] for i in ok] for s in SOURCES)
            gain = mean(m) - mean(o)
            spread = max(max(m) - min(m), max(o) - min(o))
            per_seed = [(mi - pi) / (mi - oi) for mi, oi, pi in zip(m, o, p) if mi != oi]
            rows.append(GainShare(
                workload, gpus, rate, title, len(ok), mean(m), mean(o), mean(p), gain, spread,
                (mean(m) - mean(p)) / gain if gain != 0 else None,
                min(per_seed) if per_seed else None, max(per_seed) if per_seed else None,
                len(ok) > 1 and gain > spread and all(mi > oi for mi, oi in zip(m, o))))
    return rows


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(rows: list[GainShare], policy: str = "prefix_length_aware") -> str:
    if not rows:
        return ""
    lines = [f"## Share of the oracle's gain captured by predicted lengths ({policy})", "",
             "share = (max_new_tokens - predicted) / (max_new_tokens - oracle), on seed means; per-seed "
             "shares in brackets. \"within seed spread\": the oracle's gain is not larger than the "
             "seed range of max_new_tokens or of oracle (or some seed did not gain), so the share "
             "means nothing.", ""]
    for workload in sorted({r.workload for r in rows}):
        lines += [f"### {workload}", "",
                  "| GPUs | rate rps | metric | max_new_tokens | oracle | predicted | oracle gain | seed spread "
                  "| share | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in (r for r in rows if r.workload == workload):
            fmt = "{:.4f}" if "norm" in r.metric else "{:.2f}"
            share = _num(r.share, "{:.2f}")
            if r.share_min is not None and r.seeds > 1:
                share += f" ({r.share_min:.2f} to {r.share_max:.2f})"
            if r.seeds < 2:
                verdict = "one seed: no spread to judge by"
            elif r.meaningful:
                verdict = "oracle gain exceeds seed spread"
            else:
                verdict = "within seed spread: share means nothing"
            lines.append(f"| {r.gpus} | {r.rate_rps:g} | {r.metric} | {fmt.format(r.max_new_tokens)} | "
                         f"{fmt.format(r.oracle)} | {fmt.format(r.predicted)} | {fmt.format(r.oracle_gain)} | "
                         f"{fmt.format(r.seed_spread)} | {share} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def write(root: pathlib.Path, out: pathlib.Path, policy: str = "prefix_length_aware") -> str:
    """The section's Markdown (empty when the sweep lacks the three sources), and
    `oracle_gain.json` in `out` when there is something to say."""
    rows = gain_shares(load_cells(root), policy)
    if rows:
        (out / "oracle_gain.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    return markdown(rows, policy)
