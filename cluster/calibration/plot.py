"""PNG figures of a calibration: the fit against its probes, and live against simulated."""

from __future__ import annotations

import pathlib

import numpy as np


def plot_all(payload: dict, out: pathlib.Path) -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model = payload["config"]["model"]
    paths = []
    settings = sorted({p["setting"] for p in payload["probes"]["prefill"]})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = dict(zip(settings, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fits = payload["fits"]
    for s in settings:
        pre = [p for p in payload["probes"]["prefill"] if p["setting"] == s]
        dec = [d for d in payload["probes"]["decode"] if d["setting"] == s]
        axes[0].scatter([p["prompt_tokens"] - p["cached_tokens"] for p in pre], [p["ttft_s"] * 1e3 for p in pre],
                        s=14, color=colors[s], label=f"{s} (fresh and cached-prefix prompts)")
        axes[1].scatter([d["batch"] for d in dec], [d["step_s"] * 1e3 for d in dec], s=14, color=colors[s], label=s)
    fit_key = "dp2" if "dp2" in fits else next(iter(fits))
    f = fits[fit_key]
    xs = np.linspace(0, max(p["prompt_tokens"] for p in payload["probes"]["prefill"]), 50)
    base = f["overhead_ms"] + f["step_base_us"] / 1e3
    axes[0].plot(xs, base + (f["per_prompt_token_us"] + f["prefill_us_per_token"]) * xs / 1e3, color="k",
                 label=f"{fit_key} fit, fresh prompt")
    bs = np.linspace(1, max(d["batch"] for d in payload["probes"]["decode"]), 20)
    axes[1].plot(bs, (f["step_base_us"] + f["decode_us_per_request"] * bs) / 1e3, color="k", label=f"{fit_key} fit")
    axes[0].set(xlabel="uncached prompt tokens", ylabel="time to first token (ms)", title=f"{model}: prefill probes")
    axes[1].set(xlabel="decode batch (requests)", ylabel="decode step (ms)", title=f"{model}: decode probes")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out / "fit.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    runs = payload["runs"]
    if runs:
        metrics = [("e2e_s", "mean"), ("e2e_s", "p90"), ("ttft_s", "mean"), ("ttft_s", "p90")]
        fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4), squeeze=False)
        for ax, (policy, run) in zip(axes[0], runs.items()):
            x = np.arange(len(metrics))
            live = [run["live"][m][q] or 0 for m, q in metrics]
            sim = [run["sim"][m][q] or 0 for m, q in metrics]
            ax.bar(x - 0.2, live, 0.4, label="live")
            ax.bar(x + 0.2, sim, 0.4, label="simulated")
            ax.set_xticks(x, [f"{m[:-2]} {q}" for m, q in metrics])
            ax.set(ylabel="seconds", title=f"{model} {policy}, dp=2")
            ax.legend()
            ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        paths.append(out / "live_vs_sim.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths
