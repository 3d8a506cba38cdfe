"""Report of `python -m sglang_ext.bench live`: summary.json, report.md and PNG plots.

A live run counts only when its deployment started and every request was answered
(latencies of a run that lost requests are not comparable); the report lists the runs it
left out. Figures are the median over seeds with the range; ratios to our round robin
are taken per seed, between runs that replayed the same trace back to back, and a
difference "exceeds the seed spread" only when every seed's ratio lies on the same side
of 1. Simulated figures sit beside the live ones; relative differences above 15 % are
flagged (the calibration target of the simulator issue).
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics

BASELINE = "round_robin"
OURS = "prefix_length_aware"
SIM_TOLERANCE = 0.15
# (row key, label, format); lower is better for every one but the hit rate.
LATENCY_METRICS = (
    ("e2e_mean_s", "e2e mean s", ".3f"), ("e2e_p90_s", "e2e p90 s", ".3f"), ("e2e_p99_s", "e2e p99 s", ".3f"),
    ("ttft_mean_s", "TTFT mean s", ".3f"), ("ttft_p90_s", "TTFT p90 s", ".3f"), ("ttft_p99_s", "TTFT p99 s", ".3f"),
    ("norm_latency_mean", "norm lat s/tok", ".4f"), ("norm_latency_p99", "norm lat p99", ".4f"),
)
PLACEMENT_METRICS = (
    ("prefix_hit_rate", "hit rate", ".2f"), ("rank_imbalance", "requests max/mean rank", ".2f"),
    ("decision_mean_us", "decision mean us", ".0f"), ("decision_p99_us", "decision p99 us", ".0f"),
)
METRICS = LATENCY_METRICS + PLACEMENT_METRICS
HIGHER_IS_BETTER = {"prefix_hit_rate"}
RATIO_METRICS = ("e2e_mean_s", "e2e_p99_s", "ttft_mean_s", "norm_latency_mean")
SIM_METRICS = ("e2e_mean_s", "e2e_p90_s", "ttft_mean_s", "ttft_p90_s", "prefix_hit_rate")


def answered(row: dict) -> bool:
    return (row.get("error") is None and not row.get("failed") and bool(row.get("requests"))
            and row.get("succeeded") == row.get("requests"))


def _spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize(rows: list[dict], config: dict) -> dict:
    """{"entries": [...], "left_out": [...]}: one entry per (workload, target) with live
    and simulated spreads, per-seed ratios to round robin, and sim-vs-live errors."""
    live = [r for r in rows if r["side"] == "live"]
    sim = [r for r in rows if r["side"] == "sim"]
    left_out = [{k: r.get(k) for k in ("seed", "target", "workload", "error", "failed", "run_dir")}
                for r in live if not answered(r)]
    entries = []
    for workload in config["workloads"]:
        rr = {r["seed"]: r for r in live if r["workload"] == workload and r["target"] == BASELINE and answered(r)}
        for target in config["targets"]:
            mine = sorted((r for r in live if r["workload"] == workload and r["target"] == target and answered(r)),
                          key=lambda r: r["seed"])
            sims = {r["seed"]: r for r in sim if r["workload"] == workload and r["target"] == target
                    and r.get("error") is None}
            if not mine:
                continue
            entry = {"workload": workload, "target": target, "model": mine[0]["model"],
                     "seeds": [r["seed"] for r in mine],
                     "live": {m: _spread([r.get(m) for r in mine]) for m, _, _ in METRICS},
                     "sim": {m: _spread([sims[r["seed"]].get(m) for r in mine if r["seed"] in sims])
                             for m in SIM_METRICS},
                     "vs_round_robin": {}, "sim_error": {}}
            for m in RATIO_METRICS:
                per_seed = {r["seed"]: r[m] / rr[r["seed"]][m] for r in mine
                            if r["seed"] in rr and r.get(m) and rr[r["seed"]].get(m)}
                if per_seed and target != BASELINE:
                    vals = list(per_seed.values())
                    entry["vs_round_robin"][m] = {
                        "median": statistics.median(vals), "min": min(vals), "max": max(vals),
                        # One seed has no spread to exceed.
                        "beyond_spread": len(vals) >= 2 and (all(v < 1 for v in vals) or all(v > 1 for v in vals)),
                        "per_seed": {str(k): v for k, v in per_seed.items()}}
            for m in SIM_METRICS:
                errs = []
                for r in mine:
                    s = sims.get(r["seed"])
                    if s is None or r.get(m) is None or s.get(m) is None:
                        continue
                    # Rates compare in points, latencies relative to the live figure.
                    errs.append(abs(s[m] - r[m]) if m == "prefix_hit_rate" else abs(s[m] / r[m] - 1) if r[m] else None)
                errs = [e for e in errs if e is not None]
                if errs:
                    worst = max(errs)
                    entry["sim_error"][m] = {"median": statistics.median(errs), "max": worst,
                                             "flag": statistics.median(errs) > SIM_TOLERANCE}
            entries.append(entry)
    return {"entries": entries, "left_out": left_out}


def _cell(spread: dict | None, fmt: str) -> str:
    if spread is None:
        return "-"
    if spread["n"] == 1 or spread["min"] == spread["max"]:
        return f"{spread['median']:{fmt}}"
    return f"{spread['median']:{fmt}} [{spread['min']:{fmt}}-{spread['max']:{fmt}}]"


def _ratio_cell(ratio: dict | None) -> str:
    if ratio is None:
        return "-"
    mark = " *" if ratio["beyond_spread"] else ""
    return f"{ratio['median']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]{mark}"


def _md_table(headers: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)] + \
        ["| " + " | ".join(r) + " |" for r in body]


def _best(entries: list[dict], metric: str) -> dict | None:
    scored = [e for e in entries if e["live"].get(metric)]
    if not scored:
        return None
    key = (lambda e: -e["live"][metric]["median"]) if metric in HIGHER_IS_BETTER else \
        (lambda e: e["live"][metric]["median"])
    return min(scored, key=key)


def reading(summary: dict, config: dict) -> list[str]:
    """The plain-words part: where ours wins, loses, and what exceeds the seed spread."""
    lines = []
    for workload in config["workloads"]:
        entries = [e for e in summary["entries"] if e["workload"] == workload]
        ours = next((e for e in entries if e["target"] == OURS), None)
        if ours is None:
            continue
        for metric, label in (("e2e_mean_s", "mean e2e"), ("e2e_p99_s", "p99 e2e"), ("ttft_mean_s", "mean TTFT"),
                              ("norm_latency_mean", "normalized latency")):
            best = _best(entries, metric)
            if best is None or ours["live"].get(metric) is None:
                continue
            mine, theirs = ours["live"][metric]["median"], best["live"][metric]["median"]
            ratio = ours["vs_round_robin"].get(metric)
            spread = "" if ratio is None else (
                f"; vs round robin {ratio['median']:.2f}x, "
                + ("beyond the seed spread" if ratio["beyond_spread"] else
                   "within the seed spread" if len(ratio["per_seed"]) > 1 else "one seed, no spread"))
            if best["target"] == OURS:
                lines.append(f"- {workload}: {OURS} has the lowest {label} ({mine:.3f}){spread}.")
            else:
                lines.append(f"- {workload}: {OURS} LOSES on {label}: {mine:.3f} against {best['target']}'s "
                             f"{theirs:.3f} ({mine / theirs:.2f}x){spread}.")
    flagged = [(e, m, err) for e in summary["entries"] for m, err in e["sim_error"].items() if err["flag"]]
    if flagged:
        lines.append(f"- The simulator differs from the live run by more than {SIM_TOLERANCE:.0%} (median over "
                     f"seeds) in {len(flagged)} figures, e.g. "
                     + "; ".join(f"{e['workload']} {e['target']} {m} {err['median']:.0%}" for e, m, err in flagged[:6])
                     + ".")
    return lines


HOST_NOTE = (
    "This host has 2 cores for 2 ranks, the client and the tokenizer: every deployment shares them, so "
    "absolute latencies are the host's, decode of co-running requests is CPU-bound, and seed-to-seed "
    "drift is large. The gateway's two dp=1 servers are pinned one core each; our dp=2 ranks get one "
    "compute thread each (sglang_ext/cpu_host.py). Only differences marked * (every seed's ratio on one "
    "side of 1) are beyond the seed-to-seed spread. The tiny model's prefill is nearly free, so cache "
    "hits barely matter there; SmolLM2 (shared-prefix) is where they do.")


def markdown(summary: dict, config: dict, host: dict) -> str:
    lines = ["# Live comparison on real SGLang (CPU)", "",
             f"Seeds {config['seeds']}; targets {', '.join(config['targets'])}; SGLang dp={config['dp_size']} "
             f"(ours) or 2 x dp=1 behind sglang-router (gateway:*). Host: {host.get('cores')} cores, load average "
             f"{host.get('load_avg')} at the end. Figures: median [min-max] over seeds; ratios to round_robin of "
             "the same seed, * = beyond the seed spread.", "", HOST_NOTE, ""]
    for workload, w in config["workloads"].items():
        entries = [e for e in summary["entries"] if e["workload"] == workload]
        if not entries:
            continue
        lines += [f"## {workload} ({w['model']}): {w['about']}", ""]
        headers = ["target", "seeds"] + [label for _, label, _ in LATENCY_METRICS]
        body = [[e["target"], str(len(e["seeds"]))] + [_cell(e["live"][m], f) for m, _, f in LATENCY_METRICS]
                for e in entries]
        lines += _md_table(headers, body) + [""]
        headers = ["target"] + [f"{m} / RR" for m in ("e2e mean", "e2e p99", "TTFT mean", "norm lat")] + \
            [label for _, label, _ in PLACEMENT_METRICS]
        body = [[e["target"]] + [_ratio_cell(e["vs_round_robin"].get(m)) for m in RATIO_METRICS] +
                [_cell(e["live"][m], f) for m, _, f in PLACEMENT_METRICS] for e in entries]
        lines += _md_table(headers, body) + [""]
        sim_body = []
        for e in entries:
            if not any(e["sim"].values()):
                continue
            cells = [e["target"]]
            for m in SIM_METRICS:
                err = e["sim_error"].get(m)
                fmt = ".2f" if m == "prefix_hit_rate" else ".3f"
                flag = "" if err is None else (f" ({err['median'] * 100:.0f} pt" if m == "prefix_hit_rate"
                                               else f" ({err['median']:.0%}") + (", FLAG)" if err["flag"] else ")")
                cells.append(f"{_cell(e['live'].get(m), fmt)} / {_cell(e['sim'].get(m), fmt)}{flag}")
            sim_body.append(cells)
        if sim_body:
            lines += ["Live / simulated (difference, median over seeds; FLAG above 15 % or 15 points):", ""]
            lines += _md_table(["target"] + list(SIM_METRICS), sim_body) + [""]
        elif config.get("simulate"):
            lines += ["Simulated rows: missing (no simulator run finished for this workload).", ""]
    lines += ["## Reading", ""] + (reading(summary, config) or ["- Our policy was not in this run."]) + [""]
    if summary["left_out"]:
        lines += ["## Runs left out (not every request answered)", ""]
        lines += [f"- seed {r['seed']} {r['target']} {r['workload']}: {r['error'] or str(r['failed']) + ' failed'}"
                  for r in summary["left_out"]] + [""]
    lines += ["Per-request CSVs: `runs/<seed>_<target>_<model>/<workload>/requests.csv`; simulated: `sim/...`.", ""]
    return "\n".join(lines)


def plot(rows: list[dict], summary: dict, config: dict, path: pathlib.Path) -> None:
    """Rows = workloads, columns = mean e2e, p99 e2e, mean TTFT, normalized latency.
    Bar: live median; dots: live seeds; hollow diamond: simulated median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w for w in config["workloads"] if any(e["workload"] == w for e in summary["entries"])]
    if not workloads:
        return
    metrics = (("e2e_mean_s", "mean e2e (s)"), ("e2e_p99_s", "p99 e2e (s)"), ("ttft_mean_s", "mean TTFT (s)"),
               ("norm_latency_mean", "normalized latency (s/token)"))
    fig, axes = plt.subplots(len(workloads), len(metrics), figsize=(4.2 * len(metrics), 3.6 * len(workloads)),
                             squeeze=False)
    for axrow, workload in zip(axes, workloads):
        entries = [e for e in summary["entries"] if e["workload"] == workload]
        for ax, (metric, title) in zip(axrow, metrics):
            for i, e in enumerate(entries):
                vals = [r[metric] for r in rows if r["side"] == "live" and r["workload"] == workload
                        and r["target"] == e["target"] and answered(r) and r.get(metric) is not None]
                if not vals:
                    continue
                ax.bar(i, statistics.median(vals), color=f"C{i}", alpha=0.8)
                ax.scatter([i] * len(vals), vals, color="black", s=12, zorder=3)
                sim = e["sim"].get(metric) if metric in SIM_METRICS else None
                if sim:
                    ax.scatter([i], [sim["median"]], marker="D", facecolors="none", edgecolors="red", s=30, zorder=4)
            ax.set_xticks(range(len(entries)), [e["target"] for e in entries], fontsize=7, rotation=30, ha="right")
            ax.set_title(f"{workload}: {title}", fontsize=9)
            ax.margins(y=0.15)
    fig.suptitle("live on CPU: bars = median over seeds, dots = seeds, red diamonds = simulator", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(rows: list[dict], config: dict, out: pathlib.Path) -> list[pathlib.Path]:
    summary = summarize(rows, config)
    host = {"cores": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()]}
    (out / "summary.json").write_text(json.dumps({"host": host, **summary}, indent=1) + "\n")
    (out / "report.md").write_text(markdown(summary, config, host))
    plot(rows, summary, config, out / "live.png")
    return [out / "summary.json", out / "report.md", out / "live.png"]
