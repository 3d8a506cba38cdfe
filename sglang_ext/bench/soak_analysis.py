"""What a soak run's time series must show, checked: the host-free half of `bench soak`.

`soak.py` samples the live server; this module judges the samples. Nothing here reads a
clock or a process: the series are passed in, so a test can feed a synthetic leak.

The bounds (`SoakBounds`), each a check that prints PASS or FAIL:

- **no failures**: Locust counted no failed `/generate` turn, and some turns ran.
- **controller memory**: the controller's RSS over the second half of the run grows by
  at most `rss_growth_mib`. Growth is the least-squares slope of RSS over the second
  half times its length, so that one allocator step or a few noisy samples do not
  decide it, and a steady leak of a fraction of a MiB a minute does. The first half is
  left out: caches, the mirror and the interpreter's arenas fill while the workers'
  KV pools fill.
- **mirror bounded by the workers' KV**: at no sample does the mirror hold more tokens
  for a worker than that worker's KV pool (the ledger's capacity, which the load
  cross-check sets to the pool size the worker reports). A mirror that missed
  evictions would grow past it.
- **in-flight bounded**: the ledger never holds more requests than there are Locust
  users (closed-loop agents have one turn outstanding each), and holds none once the
  load has stopped (an entry whose completion was lost would stay).
- **latency stable**: the median over the second half of the per-interval p50 latency
  is at most `latency_factor` x that of the first half (after `warmup_s`).
- **rate sustained**: the second half's request rate is at least `min_rate_fraction` of
  the target; closed-loop users slow down when the server falls behind, so a rate the
  host cannot serve shows here rather than as a growing queue.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class SoakBounds:
    rss_growth_mib: float = 4.0       # controller RSS growth allowed over the second half
    latency_factor: float = 1.5       # second-half median p50 / first-half median p50, at most
    min_rate_fraction: float = 0.8    # second-half request rate / target rate, at least
    warmup_s: float = 15.0            # samples before this are left out of the first half


@dataclass
class ControllerSample:
    """One look at the controller: its process and its status file."""

    t_s: float                        # seconds since the load started
    rss_mib: float
    cpu_s: float                      # user + system CPU time of the controller process so far
    tree_tokens: list[int]            # mirror tokens per worker (status: tree.tokens_held)
    kv_capacity_tokens: list[int]     # ledger capacity per worker (status: loads[].kv_capacity_tokens)
    in_flight: int                    # ledger entries (status: in_flight)
    pages_indexed: int = 0


@dataclass
class LatencySample:
    """One Locust stats-history row of the `/generate` turns (a 10 s window)."""

    t_s: float
    users: int
    rate_rps: float                   # turns finished per second over the last window
    p50_ms: float | None
    p95_ms: float | None
    total_requests: int
    total_failures: int


@dataclass
class Check:
    name: str
    passed: bool
    value: float | None
    bound: str
    detail: str = ""

    def line(self) -> str:
        value = "-" if self.value is None else f"{self.value:.4g}"
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {value} ({self.bound}){' ' + self.detail if self.detail else ''}"


@dataclass
class SoakSeries:
    duration_s: float
    target_rate_rps: float
    users: int
    controller: list[ControllerSample] = field(default_factory=list)
    latency: list[LatencySample] = field(default_factory=list)
    in_flight_after_drain: int | None = None   # ledger entries once the load stopped and drained


def slope_growth(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over ts, times the span of ts (0 with under 2 points)."""
    if len(ts) < 2 or max(ts) == min(ts):
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sum((t - mt) ** 2 for t in ts)
    return slope * (max(ts) - min(ts))


def check(series: SoakSeries, bounds: SoakBounds = SoakBounds()) -> list[Check]:
    half = series.duration_s / 2
    checks = []

    last = series.latency[-1] if series.latency else None
    requests = last.total_requests if last else 0
    failures = last.total_failures if last else 0
    checks.append(Check("no failures", requests > 0 and failures == 0, float(failures),
                        "failed turns == 0, turns > 0", f"{requests} turns"))

    second = [s for s in series.controller if s.t_s >= half]
    growth = slope_growth([s.t_s for s in second], [s.rss_mib for s in second]) if len(second) >= 2 else None
    rss = [s.rss_mib for s in series.controller]
    checks.append(Check(
        "controller RSS growth, second half", growth is not None and growth <= bounds.rss_growth_mib, growth,
        f"<= {bounds.rss_growth_mib} MiB (slope x span)",
        f"RSS {min(rss):.1f}-{max(rss):.1f} MiB" if rss else "no samples"))

    over = [(s.t_s, w, tokens - cap) for s in series.controller
            for w, (tokens, cap) in enumerate(zip(s.tree_tokens, s.kv_capacity_tokens))]
    worst = max(over, key=lambda x: x[2]) if over else None
    peak = max((max(s.tree_tokens) for s in series.controller if s.tree_tokens), default=0)
    caps = sorted({c for s in series.controller for c in s.kv_capacity_tokens})
    checks.append(Check(
        "mirror tokens <= worker KV capacity", worst is not None and worst[2] <= 0, float(peak),
        f"<= {caps[0] if len(caps) == 1 else caps} tokens per worker",
        "" if worst is None or worst[2] <= 0 else f"worker {worst[1]} over by {worst[2]} at {worst[0]:.0f} s"))

    peak_in_flight = max((s.in_flight for s in series.controller), default=None)
    drained = series.in_flight_after_drain
    checks.append(Check(
        "ledger in-flight bounded", peak_in_flight is not None and peak_in_flight <= series.users and drained == 0,
        None if peak_in_flight is None else float(peak_in_flight),
        f"<= {series.users} users during, 0 after the load", f"after the load: {drained}"))

    first_p50 = [s.p50_ms for s in series.latency if bounds.warmup_s <= s.t_s < half and s.p50_ms is not None]
    second_p50 = [s.p50_ms for s in series.latency if s.t_s >= half and s.p50_ms is not None]
    if first_p50 and second_p50:
        ratio = statistics.median(second_p50) / statistics.median(first_p50)
        detail = f"median p50 {statistics.median(first_p50):.0f} -> {statistics.median(second_p50):.0f} ms"
    else:
        ratio, detail = None, "too few latency samples"
    checks.append(Check("latency stable (p50, second half / first half)",
                        ratio is not None and ratio <= bounds.latency_factor, ratio,
                        f"<= {bounds.latency_factor}", detail))

    rate = _rate_over(series.latency, half, series.duration_s)
    fraction = None if rate is None or series.target_rate_rps <= 0 else rate / series.target_rate_rps
    checks.append(Check("request rate sustained, second half", fraction is not None
                        and fraction >= bounds.min_rate_fraction, fraction,
                        f">= {bounds.min_rate_fraction} of {series.target_rate_rps:g} req/s",
                        "" if rate is None else f"{rate:.2f} req/s"))
    return checks


def _rate_over(latency: list[LatencySample], start_s: float, end_s: float) -> float | None:
    """Turns finished per second between start_s and end_s, from the cumulative counts."""
    inside = [s for s in latency if start_s <= s.t_s <= end_s]
    if len(inside) < 2 or inside[-1].t_s == inside[0].t_s:
        return None
    return (inside[-1].total_requests - inside[0].total_requests) / (inside[-1].t_s - inside[0].t_s)


# ------------------------------------------------------------------ table and plot

TABLE_HEADERS = ("minute", "RSS MiB", "ctl CPU %", "mirror tokens", "in-flight max", "req/s", "p50 ms", "p95 ms",
                 "failures")


def table_rows(series: SoakSeries, window_s: float = 60.0) -> list[list[str]]:
    """One row per window: the controller's state at its end, rates and latency over it."""
    rows = []
    start = 0.0
    while start < series.duration_s:
        end = min(start + window_s, series.duration_s)
        ctl = [s for s in series.controller if start <= s.t_s < end or (end == series.duration_s and s.t_s >= start)]
        lat = [s for s in series.latency if start <= s.t_s <= end]
        if ctl:
            cpu = (100 * (ctl[-1].cpu_s - ctl[0].cpu_s) / (ctl[-1].t_s - ctl[0].t_s)
                   if ctl[-1].t_s > ctl[0].t_s else None)
            p50 = [s.p50_ms for s in lat if s.p50_ms is not None]
            p95 = [s.p95_ms for s in lat if s.p95_ms is not None]
            rate = _rate_over(lat, start, end)
            rows.append([f"{start / 60:.0f}-{end / 60:.0f}", f"{ctl[-1].rss_mib:.1f}", _fmt(cpu, ".1f"),
                         "/".join(str(t) for t in ctl[-1].tree_tokens), str(max(s.in_flight for s in ctl)),
                         _fmt(rate, ".2f"), _fmt(statistics.median(p50) if p50 else None, ".0f"),
                         _fmt(statistics.median(p95) if p95 else None, ".0f"),
                         str(lat[-1].total_failures) if lat else "-"])
        start = end
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plain_table(series: SoakSeries, checks: list[Check]) -> str:
    body = table_rows(series)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(TABLE_HEADERS)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(TABLE_HEADERS, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in body]
    lines.append("p50/p95: median over the minute of Locust's 10 s-window percentiles of /generate turns; "
                 "mirror tokens per worker and RSS at the minute's last sample")
    lines += [c.line() for c in checks]
    return "\n".join(lines) + "\n"


def plot(series: SoakSeries, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ctl, lat = series.controller, series.latency
    fig, axes = plt.subplots(5, 1, figsize=(10, 12), sharex=True)
    t = [s.t_s / 60 for s in ctl]
    axes[0].plot(t, [s.rss_mib for s in ctl], color="C0")
    axes[0].set_ylabel("controller RSS (MiB)")
    for w in range(max((len(s.tree_tokens) for s in ctl), default=0)):
        axes[1].plot(t, [s.tree_tokens[w] for s in ctl], label=f"mirror, worker {w}", color=f"C{w}")
    caps = sorted({c for s in ctl for c in s.kv_capacity_tokens})
    for cap in caps:
        axes[1].axhline(cap, color="grey", linestyle="--", linewidth=1)
    axes[1].set_ylabel("tokens")
    axes[1].legend(fontsize=8, title="dashed: KV capacity per worker", title_fontsize=8)
    axes[2].plot(t, [s.in_flight for s in ctl], color="C2")
    axes[2].axhline(series.users, color="grey", linestyle="--", linewidth=1)
    axes[2].set_ylabel("ledger in-flight")
    tl = [s.t_s / 60 for s in lat]
    axes[3].plot(tl, [s.p50_ms for s in lat], label="p50", color="C0")
    axes[3].plot(tl, [s.p95_ms for s in lat], label="p95", color="C3")
    axes[3].set_ylabel("turn latency (ms)")
    axes[3].legend(fontsize=8)
    axes[4].plot(tl, [s.rate_rps for s in lat], color="C4")
    axes[4].axhline(series.target_rate_rps, color="grey", linestyle="--", linewidth=1)
    axes[4].set_ylabel("req/s (10 s window)")
    axes[4].set_xlabel("minutes since the load started")
    for ax in axes:
        ax.axvline(series.duration_s / 120, color="black", linewidth=0.5, alpha=0.4)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def to_dict(series: SoakSeries) -> dict:
    return asdict(series)
