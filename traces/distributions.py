"""Discrete output-length distributions given on the command line, and their samplers.

`"1:0.5,300:0.5"` means: half the requests produce 1 token, half produce 300. Weights
need not sum to one (they are normalised), so `"1:1,300:3"` works too.

Two samplers: `iid` draws each length independently (a multinomial sample), and
`stratified` fixes each value's count to its share of n by largest remainder, then
shuffles. Stratified is the default for generators: every value with n * p >= 1 really
occurs in the trace (the poster's generator silently lost its 300s, DESIGN.md 3.2) and
the variance of the workload is the variance asked for, not a sampling accident.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLERS = ("stratified", "iid")


@dataclass(frozen=True)
class DiscreteDistribution:
    values: tuple[int, ...]
    probs: tuple[float, ...]

    @classmethod
    def parse(cls, spec: str) -> DiscreteDistribution:
        """Parse `"v1:w1,v2:w2,..."` (a bare `"v"` means a point mass). Raises ValueError."""
        values: list[int] = []
        weights: list[float] = []
        for part in spec.split(","):
            part = part.strip()
            if not part:
                continue
            value_s, _, weight_s = part.partition(":")
            try:
                value = int(value_s)
                weight = float(weight_s) if weight_s else 1.0
            except ValueError:
                raise ValueError(f"bad length distribution item {part!r}: expected VALUE:WEIGHT, e.g. 1:0.5,300:0.5") from None
            if value < 1:
                raise ValueError(f"length {value} in {spec!r} must be >= 1 token")
            if not np.isfinite(weight) or weight < 0:
                raise ValueError(f"weight {weight_s!r} in {spec!r} must be a finite number >= 0")
            if value in values:
                raise ValueError(f"length {value} appears twice in {spec!r}")
            values.append(value)
            weights.append(weight)
        total = sum(weights)
        if not values or total <= 0:
            raise ValueError(f"length distribution {spec!r} has no value with positive weight")
        return cls(tuple(values), tuple(w / total for w in weights))

    def spec(self) -> str:
        return ",".join(f"{v}:{p:.6g}" for v, p in zip(self.values, self.probs))

    @property
    def max_value(self) -> int:
        return max(v for v, p in zip(self.values, self.probs) if p > 0)

    def sample(self, n: int, rng: np.random.Generator, method: str = "stratified") -> np.ndarray:
        """`n` lengths as int64."""
        values = np.asarray(self.values, dtype=np.int64)
        if method == "iid":
            return rng.choice(values, size=n, p=np.asarray(self.probs))
        if method != "stratified":
            raise ValueError(f"unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}")
        counts = stratified_counts(np.asarray(self.probs), n)
        out = np.repeat(values, counts)
        rng.shuffle(out)
        return out


def stratified_counts(probs: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to n, each within one of n * p (largest-remainder rounding;
    ties go to the earlier value so the result is deterministic)."""
    exact = probs * n
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    if short > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Bounded Zipf popularity over n items: p_i proportional to 1 / i**exponent."""
    if n < 1:
        raise ValueError("Zipf needs at least one item")
    if exponent < 0:
        raise ValueError("the Zipf exponent must be >= 0")
    w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return w / w.sum()
