"""Arrival processes: Poisson, gamma (bursty) and piecewise-constant rate steps.

No real serving traces are obtainable here (DESIGN.md section 5), so arrivals are
generated. A schedule is a list of (rate, duration) steps; a single rate is one step.
Arrivals are a unit-rate renewal process (exponential gaps for Poisson, gamma gaps with
mean 1 and the requested coefficient of variation for bursty traffic) mapped through the
inverse of the cumulative rate (time rescaling). That keeps the gap distribution intact
across step boundaries and never truncates it (Vidur cut its "Poisson" gaps at 3x the
mean, which is not Poisson).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROCESSES = ("poisson", "gamma")


@dataclass(frozen=True)
class ArrivalConfig:
    process: str = "poisson"
    rate_rps: float = 4.0
    duration_s: float = 60.0
    cv: float = 1.0                                       # gamma only: std / mean of the gaps
    steps: tuple[tuple[float, float], ...] = ()           # (rate_rps, duration_s); replaces rate/duration

    def schedule(self) -> tuple[tuple[float, float], ...]:
        return self.steps or ((self.rate_rps, self.duration_s),)

    def check(self) -> None:
        if self.process not in PROCESSES:
            raise ValueError(f"unknown arrival process {self.process!r}; choose one of {', '.join(PROCESSES)}")
        if self.process == "gamma" and not self.cv > 0:
            raise ValueError(f"--cv must be > 0, got {self.cv}")
        for rate, duration in self.schedule():
            if not (np.isfinite(rate) and rate >= 0) or not (np.isfinite(duration) and duration > 0):
                raise ValueError(f"each step needs a rate >= 0 and a duration > 0, got {rate}:{duration}")
        if sum(r * d for r, d in self.schedule()) <= 0:
            raise ValueError("the arrival schedule expects no request (rate x duration is 0)")

    @property
    def total_duration_s(self) -> float:
        return float(sum(d for _, d in self.schedule()))


def parse_steps(spec: str) -> tuple[tuple[float, float], ...]:
    """`"2:30,8:30"`: 2 requests/s for 30 s, then 8 requests/s for 30 s."""
    steps = []
    for part in spec.split(","):
        if not part.strip():
            continue
        rate_s, sep, dur_s = part.partition(":")
        try:
            if not sep:
                raise ValueError
            steps.append((float(rate_s), float(dur_s)))
        except ValueError:
            raise ValueError(f"bad step {part.strip()!r}: expected RATE_RPS:DURATION_S, e.g. 2:30,8:30") from None
    if not steps:
        raise ValueError(f"no steps in {spec!r}")
    return tuple(steps)


def _unit_gaps(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    if cfg.process == "poisson":
        return rng.exponential(1.0, size=n)
    shape = 1.0 / cfg.cv**2
    return rng.gamma(shape, 1.0 / shape, size=n)


def arrival_times(cfg: ArrivalConfig, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in seconds from 0, sorted, all within the schedule's duration."""
    cfg.check()
    rates = np.array([r for r, _ in cfg.schedule()], dtype=np.float64)
    durations = np.array([d for _, d in cfg.schedule()], dtype=np.float64)
    starts = np.concatenate([[0.0], np.cumsum(durations)])
    cum_work = np.concatenate([[0.0], np.cumsum(rates * durations)])   # expected arrivals
    total = cum_work[-1]
    # Draw unit-rate gaps in chunks until the operational clock passes the total.
    chunks, clock = [], 0.0
    chunk = max(64, int(total * 1.2) + 16)
    while clock <= total:
        u = clock + np.cumsum(_unit_gaps(cfg, chunk, rng))
        chunks.append(u)
        clock = float(u[-1])
    u = np.concatenate(chunks)
    u = u[u < total]
    seg = np.searchsorted(cum_work, u, side="right") - 1     # zero-rate steps are never chosen
    times = starts[seg] + (u - cum_work[seg]) / rates[seg]
    return np.round(times, 6)


def first_arrivals(cfg: ArrivalConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """The first `n` arrival times of the process at its single rate (no steps): for
    workloads defined by a request count rather than a duration. The same unit-rate gaps
    as `arrival_times`, so Poisson gaps are exponential and never truncated."""
    cfg.check()
    if cfg.steps:
        raise ValueError("a fixed request count takes one rate, not rate steps")
    if n < 1:
        raise ValueError(f"need at least one request, got {n}")
    if not cfg.rate_rps > 0:
        raise ValueError(f"--rate-rps must be > 0, got {cfg.rate_rps}")
    return np.round(np.cumsum(_unit_gaps(cfg, n, rng)) / cfg.rate_rps, 6)
