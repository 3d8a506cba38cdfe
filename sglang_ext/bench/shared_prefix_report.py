"""Summary, table and plot of `python -m sglang_ext.bench shared-prefix`.

A run counts in the summary only when its server started and every request succeeded
(latencies of a run that lost requests are not comparable). Ratios to round robin are
taken per seed, between runs that replayed the same trace back to back, and then
summarised over seeds (median and range): the host's speed drifts between seeds far
more than between neighbouring runs.
"""

from __future__ import annotations

import pathlib
import statistics

BASELINE = "round_robin"
SPREAD_METRICS = ("e2e_mean_s", "e2e_p99_s", "ttft_mean_s", "prefix_hit_rate")
RATIO_METRICS = {"e2e_mean_s": "e2e_mean_vs_rr", "e2e_p99_s": "e2e_p99_vs_rr"}


def _ok(row: dict) -> bool:
    return row.get("error") is None and not row.get("failed")


def _spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _ordered(seen: list[str], preferred: list[str]) -> list[str]:
    return [x for x in preferred if x in seen] + [x for x in dict.fromkeys(seen) if x not in preferred]


def summarize(rows: list[dict], config: dict) -> list[dict]:
    """One entry per (model, policy) that has rows, in the order of the options."""
    models = _ordered([r["model"] for r in rows], list(config["models"]))
    policies = _ordered([r["policy"] for r in rows], list(config["args"]["policies"]))
    out = []
    for model in models:
        baseline = {r["seed"]: r for r in rows if r["model"] == model and r["policy"] == BASELINE and _ok(r)}
        for policy in policies:
            mine = [r for r in rows if r["model"] == model and r["policy"] == policy]
            if not mine:
                continue
            good = sorted((r for r in mine if _ok(r)), key=lambda r: r["seed"])
            entry = {"model": model, "policy": policy, "runs": len(mine), "ok_seeds": [r["seed"] for r in good]}
            for metric in SPREAD_METRICS:
                entry[metric] = _spread([r[metric] for r in good if r[metric] is not None])
            for metric, name in RATIO_METRICS.items():
                per_seed = {str(r["seed"]): r[metric] / baseline[r["seed"]][metric] for r in good
                            if r["seed"] in baseline and r[metric] is not None and baseline[r["seed"]][metric]}
                vals = list(per_seed.values())
                entry[name] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
                               "per_seed": per_seed} if vals else None
            out.append(entry)
    return out


def _cell(spread: dict | None, fmt: str, center: str = "mean") -> str:
    if spread is None:
        return "-"
    return f"{spread[center]:{fmt}} [{spread['min']:{fmt}}-{spread['max']:{fmt}}]"


HEADERS = ("model", "policy", "seeds ok", "e2e mean s", "e2e p99 s", "ttft mean s", "hit rate",
           "e2e mean / RR", "e2e p99 / RR")


def table_rows(summary: list[dict]) -> list[list[str]]:
    return [[e["model"], e["policy"], f"{len(e['ok_seeds'])}/{e['runs']}",
             _cell(e["e2e_mean_s"], ".2f"), _cell(e["e2e_p99_s"], ".2f"), _cell(e["ttft_mean_s"], ".3f"),
             _cell(e["prefix_hit_rate"], ".2f"), _cell(e["e2e_mean_vs_rr"], ".2f", "median"),
             _cell(e["e2e_p99_vs_rr"], ".2f", "median")] for e in summary]


def plain_table(summary: list[dict]) -> str:
    body = table_rows(summary)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    note = "mean [min-max] over seeds; ratios to round_robin of the same seed: median [min-max]"
    return "\n".join(lines + [note]) + "\n"


def write_table(summary: list[dict], path: pathlib.Path) -> None:
    """Save the plain table; print it through rich."""
    from traces.console import print_table

    path.write_text(plain_table(summary))
    print_table(table_rows(summary), HEADERS, left_columns=2,
                title="shared-prefix: mean [min-max] over seeds; / RR: median [min-max] of per-seed ratios")


def plot(rows: list[dict], summary: list[dict], config: dict, path: pathlib.Path) -> None:
    """Per model: mean e2e and p99 e2e per policy; bar = median over seeds, dots = seeds,
    text = median ratio to round robin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(e["model"] for e in summary))
    if not models:
        return
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 3.8 * len(models)), squeeze=False)
    for axrow, model in zip(axes, models):
        entries = [e for e in summary if e["model"] == model]
        for ax, metric, title in zip(axrow, ("e2e_mean_s", "e2e_p99_s"), ("mean e2e (s)", "p99 e2e (s)")):
            for i, e in enumerate(entries):
                vals = [r[metric] for r in rows if r["model"] == model and r["policy"] == e["policy"]
                        and _ok(r) and r[metric] is not None]
                if not vals:
                    continue
                height = statistics.median(vals)
                ax.bar(i, height, color=f"C{i}", alpha=0.8)
                ax.scatter([i] * len(vals), vals, color="black", s=14, zorder=3)
                ratio = e[RATIO_METRICS[metric]]
                if ratio is not None and e["policy"] != BASELINE:
                    ax.annotate(f"x{ratio['median']:.2f} RR", (i, max(vals)), textcoords="offset points",
                                xytext=(0, 4), ha="center", fontsize=8)
            ax.set_xticks(range(len(entries)), [e["policy"] for e in entries], fontsize=8, rotation=15)
            ax.set_title(f"{model}: {title}")
            ax.margins(y=0.15)
    w = config["workload"]
    fig.suptitle(f"shared prefixes: {w['groups']} groups x {w['prompts_per_group']} prompts, "
                 f"{w['prefix_tokens']}+{w['question_tokens']} prompt tokens, {w['output_tokens']} out, "
                 f"{w['rate_rps']} req/s; SGLang dp={config['dp_size']} on CPU (bars: median, dots: seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
