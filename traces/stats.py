"""Length and prefix-sharing statistics of a trace, with histograms.

Prefix sharing is measured as the hit rate an infinite radix cache would see: for each
request in arrival order, the longest prefix (in whole pages of `page_tokens`) it shares
with any earlier request's prompt, over its prompt length. Pages are matched by a
chained hash of their token ids, the way SGLang's KV events name pages, so one pass over
the trace is linear in its tokens.
"""

from __future__ import annotations

import collections
import json
import pathlib
from dataclasses import asdict, dataclass

import numpy as np

from traces.format import Trace
from traces.summary import summarize_values
from traces.tokenizer import load_tokenizer


@dataclass(frozen=True)
class StatsConfig:
    trace: str
    out_dir: str | None = None
    page_tokens: int = 16
    tokenizer: str | None = None     # used when the trace has no token ids; None = the header's


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"count": 0}
    v = values.astype(np.float64)
    s = summarize_values(v)
    return {"count": s["count"], "mean": s["mean"], "std": float(v.std()), "min": float(v.min()),
            "p50": s["p50"], "p90": s["p90"], "p99": s["p99"], "max": s["max"]}


def shared_prefix_tokens(token_lists: list[list[int]], page_tokens: int) -> np.ndarray:
    seen: set[int] = set()
    out = np.zeros(len(token_lists), dtype=np.int64)
    for i, ids in enumerate(token_lists):
        h = 0
        matched = True
        for start in range(0, len(ids) - len(ids) % page_tokens, page_tokens):
            h = hash((h, tuple(ids[start:start + page_tokens])))
            if matched and h in seen:
                out[i] = start + page_tokens
            else:
                matched = False
                seen.add(h)
    return out


def compute(trace: Trace, page_tokens: int = 16, tokenizer: str | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    reqs = trace.requests
    if page_tokens < 1:
        raise ValueError("--page-tokens must be >= 1")
    missing = [i for i, r in enumerate(reqs) if not r.input_ids]
    token_lists: list[list[int]] = [r.input_ids or [] for r in reqs]
    if missing:
        tok = load_tokenizer(tokenizer or trace.header.tokenizer)
        for i, ids in zip(missing, tok.encode_many([reqs[i].prompt or "" for i in missing])):
            token_lists[i] = ids
    prompt = np.array([len(t) for t in token_lists], dtype=np.int64)
    output = np.array([r.output_tokens for r in reqs], dtype=np.int64)
    cap = np.array([r.max_new_tokens for r in reqs], dtype=np.int64)
    arrivals = np.array([r.arrival_s for r in reqs], dtype=np.float64)
    shared = shared_prefix_tokens(token_lists, page_tokens)
    groups = collections.Counter(r.prefix_group for r in reqs)
    sessions = collections.Counter(r.session for r in reqs)
    duration = float(arrivals[-1]) if len(arrivals) else 0.0
    out_values, out_counts = np.unique(output, return_counts=True)
    stats = {
        "generator": trace.header.generator, "seed": trace.header.seed, "requests": len(reqs),
        "duration_s": duration, "rate_rps": len(reqs) / duration if duration > 0 else None,
        "prompt_tokens": _summary(prompt), "output_tokens": _summary(output), "max_new_tokens": _summary(cap),
        "output_tokens_distribution": {str(int(v)): int(c) for v, c in zip(out_values, out_counts)},
        "interarrival_s": _summary(np.diff(arrivals)),
        "prefix_groups": len(groups),
        "top_prefix_group_share": (groups.most_common(1)[0][1] / len(reqs)) if reqs else None,
        "sessions": len(sessions), "turns_per_session": _summary(np.array(list(sessions.values()))),
        "ideal_prefix_hit_rate": float(shared.sum() / prompt.sum()) if prompt.sum() else 0.0,
        "shared_prefix_tokens": _summary(shared), "page_tokens": page_tokens,
    }
    series = {"prompt_tokens": prompt, "output_tokens": output, "interarrival_s": np.diff(arrivals),
              "shared_prefix_fraction": shared / np.maximum(prompt, 1),
              "prefix_group_requests": np.array(sorted(groups.values(), reverse=True))}
    return stats, series


def plot(series: dict[str, np.ndarray], path: pathlib.Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    specs = [("prompt_tokens", "prompt length (tokens)"), ("output_tokens", "true output length (tokens)"),
             ("interarrival_s", "inter-arrival time (s)"), ("shared_prefix_fraction", "prompt share cached by earlier requests")]
    for ax, (key, label) in zip(axes.flat, specs):
        ax.hist(series[key], bins=50, color="tab:blue")
        ax.set_xlabel(label)
        ax.set_ylabel("requests")
    ax = axes.flat[4]
    ax.bar(np.arange(len(series["prefix_group_requests"])), series["prefix_group_requests"], color="tab:orange")
    ax.set_xlabel("prefix group (by popularity)")
    ax.set_ylabel("requests")
    axes.flat[5].axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(cfg: StatsConfig, trace: Trace) -> dict:
    stats, series = compute(trace, cfg.page_tokens, cfg.tokenizer)
    if cfg.out_dir:
        out = pathlib.Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        plot(series, out / "histograms.png", f"{pathlib.Path(cfg.trace).name}: {stats['requests']} requests")
    return stats
