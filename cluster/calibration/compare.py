"""Live against simulated: one held-out trace, the same policy, the error per metric.

Targets (the calibration issue): mean and p90 of e2e and TTFT within 15 % of the live
run (relative error, |sim / live - 1|); each rank's share of the requests and the prefix
hit rate within 5 points (absolute difference of fractions, x 100). Inputs are the
`summary.json` dicts that `traces replay` writes, live and `--simulate` alike
(`traces/metrics.py`, `summarize`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LATENCY_TARGET_REL = 0.15
SHARE_TARGET_POINTS = 5.0
LATENCY_ROWS = (("e2e_s", "mean"), ("e2e_s", "p90"), ("ttft_s", "mean"), ("ttft_s", "p90"))


@dataclass(frozen=True)
class Row:
    metric: str
    live: float | None
    sim: float | None
    error: float | None       # relative (latencies) or points (shares)
    unit: str                 # "rel" or "points"
    target: float
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def to_dict(self) -> dict:
        return {"metric": self.metric, "live": self.live, "sim": self.sim, "error": self.error, "unit": self.unit,
                "target": self.target, "verdict": self.verdict}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


def rank_shares(summary: dict) -> dict[str, float]:
    per = summary.get("per_worker") or {}
    total = sum(w.get("requests", 0) for w in per.values())
    return {rank: (w.get("requests", 0) / total if total else 0.0) for rank, w in sorted(per.items())}


def _within(error: float | None, target: float) -> bool:
    # Inclusive, and blind to float noise below 1e-9 (a 0.55 - 0.50 share is 5 points).
    return error is not None and round(error, 9) <= target


def compare(live: dict, sim: dict, ranks: int) -> list[Row]:
    """One row per latency figure, per rank share and for the prefix hit rate. A figure
    missing on either side is a MISS (never a silent PASS)."""
    rows = []
    for metric, stat in LATENCY_ROWS:
        a = _number((live.get(metric) or {}).get(stat))
        b = _number((sim.get(metric) or {}).get(stat))
        err = abs(b / a - 1.0) if a and b is not None else None
        rows.append(Row(f"{metric} {stat}", a, b, err, "rel", LATENCY_TARGET_REL,
                        _within(err, LATENCY_TARGET_REL)))
    live_shares, sim_shares = rank_shares(live), rank_shares(sim)
    for rank in (str(r) for r in range(ranks)):
        a, b = live_shares.get(rank, 0.0), sim_shares.get(rank, 0.0)
        err = abs(b - a) * 100
        rows.append(Row(f"rank {rank} request share", a, b, err, "points", SHARE_TARGET_POINTS,
                        _within(err, SHARE_TARGET_POINTS)))
    a, b = _number(live.get("prefix_hit_rate")), _number(sim.get("prefix_hit_rate"))
    err = abs(b - a) * 100 if a is not None and b is not None else None
    rows.append(Row("prefix hit rate", a, b, err, "points", SHARE_TARGET_POINTS,
                    _within(err, SHARE_TARGET_POINTS)))
    return rows


def format_table(title: str, rows: list[Row]) -> str:
    def num(v, unit="s"):
        if v is None:
            return "-"
        return f"{v:.3f}" if unit == "s" else f"{v:.3f}"

    lines = [title, f"{'metric':26s} {'live':>9s} {'sim':>9s} {'error':>10s} {'target':>9s}  verdict"]
    for r in rows:
        if r.unit == "rel":
            err = "-" if r.error is None else f"{r.error * 100:.1f} %"
            target = f"<= {r.target * 100:.0f} %"
        else:
            err = "-" if r.error is None else f"{r.error:.1f} pt"
            target = f"<= {r.target:.0f} pt"
        lines.append(f"{r.metric:26s} {num(r.live):>9s} {num(r.sim):>9s} {err:>10s} {target:>9s}  {r.verdict}")
    return "\n".join(lines)
