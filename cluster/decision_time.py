"""How much simulated time a routing decision costs: `--decision-time off | fixed:US |
model:PATH[#CURVE][@mean|@p99] | measured`.

The simulator charges each decision's cost to the scheduler thread before the request is
dispatched. Four sources:

- `off`: decisions are free (an ideal router).
- `fixed:US`: every decision costs US microseconds.
- `model:PATH`: a decision-time model file (JSON, below), or a folder holding one file per
  policy (`PATH/<policy>.json`, e.g. `cluster/decision_models/`). The figure depends only
  on the policy, the number of workers and how many decisions came before, so a run is
  host-independent and repeatable. `#CURVE` picks a named curve of the file for its policy
  (e.g. `#preble+eviction`); `@p99` charges the p99 instead of the mean (default `@mean`).
- `measured`: the CPU time the host actually spent in this decision. This makes simulated
  results depend on the host, which is what PREBLE's simulator did (DESIGN.md 3.1: it
  charged the host's wall-clock time into simulated time); `host_dependent` is True only
  here, so callers can say so next to their results.

Model file (one JSON object):

    {"format": "decision-time-model/1",
     "source": "where the figures come from", "host": "the machine they were measured on",
     "curves": {"<curve name>": {
         "policy": "<policy name>",
         "workers": [2, 8, ...],            # increasing worker counts
         "mean_us": [630.0, ...],           # mean decision time at each count
         "p99_us": [null, ..., 9000.0],     # p99 where known (null elsewhere)
         "reference_decisions": 4500,       # history at which those figures hold
         "history": {"decisions": [...], "factor": [...]}}}}   # optional

Between worker counts the figures are interpolated linearly in log(time) over
log(workers) (a power law per segment: decision loops are polynomial in the worker
count); outside the measured range the nearest segment's power law is extended, or the
figure is held flat when only one count was measured. A p99 missing at some count is the
mean there times the p99/mean ratio interpolated the same way from the counts where both
are known. The history term (for policies whose cost grows with requests served, as
PREBLE's never-pruned tree does) multiplies the figure by factor(n) / factor(reference),
factor interpolated linearly in n and held flat beyond the measured range (the model
does not invent growth it did not see).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

FORMAT = "decision-time-model/1"
STATISTICS = ("mean", "p99")


class DecisionTime(Protocol):
    """Seconds of scheduler time one decision costs."""

    host_dependent: bool

    def seconds(self, policy: str, num_workers: int, decisions_so_far: int,
                measured_cpu_s: float) -> float: ...


def _check_args(num_workers: int, decisions_so_far: int, measured_cpu_s: float) -> None:
    if num_workers < 1:
        raise ValueError(f"decision time: num_workers must be >= 1, got {num_workers}")
    if decisions_so_far < 0:
        raise ValueError(f"decision time: decisions_so_far must be >= 0, got {decisions_so_far}")
    if not (measured_cpu_s >= 0.0 and math.isfinite(measured_cpu_s)):
        raise ValueError(f"decision time: measured_cpu_s must be finite and >= 0, "
                         f"got {measured_cpu_s}")


@dataclass(frozen=True)
class Off:
    host_dependent: bool = False

    def seconds(self, policy: str, num_workers: int, decisions_so_far: int,
                measured_cpu_s: float) -> float:
        _check_args(num_workers, decisions_so_far, measured_cpu_s)
        return 0.0


@dataclass(frozen=True)
class Fixed:
    decision_us: float
    host_dependent: bool = False

    def seconds(self, policy: str, num_workers: int, decisions_so_far: int,
                measured_cpu_s: float) -> float:
        _check_args(num_workers, decisions_so_far, measured_cpu_s)
        return self.decision_us * 1e-6


@dataclass(frozen=True)
class Measured:
    host_dependent: bool = True

    def seconds(self, policy: str, num_workers: int, decisions_so_far: int,
                measured_cpu_s: float) -> float:
        _check_args(num_workers, decisions_so_far, measured_cpu_s)
        return measured_cpu_s


@dataclass(frozen=True)
class Curve:
    """One policy's decision time against workers and history (see the module doc)."""

    name: str
    policy: str
    workers: tuple[int, ...]
    mean_us: tuple[float, ...]
    p99_us: tuple[float | None, ...]
    reference_decisions: int
    history_decisions: tuple[int, ...] = ()
    history_factor: tuple[float, ...] = ()

    def at_workers(self, num_workers: int, statistic: str) -> float:
        """Microseconds at the reference history."""
        mean = _power_law(self.workers, self.mean_us, num_workers)
        if statistic == "mean":
            return mean
        known = [(w, p / m) for w, m, p in zip(self.workers, self.mean_us, self.p99_us)
                 if p is not None]
        if not known:
            raise ValueError(f"decision-time curve {self.name!r} has no p99 figures")
        ws, ratios = zip(*known)
        return mean * _power_law(ws, ratios, num_workers)

    def history_scale(self, decisions_so_far: int) -> float:
        if not self.history_decisions:
            return 1.0
        return (_linear(self.history_decisions, self.history_factor, decisions_so_far)
                / _linear(self.history_decisions, self.history_factor, self.reference_decisions))

    def micros(self, num_workers: int, decisions_so_far: int, statistic: str = "mean") -> float:
        return self.at_workers(num_workers, statistic) * self.history_scale(decisions_so_far)


def _power_law(xs: tuple[int, ...] | tuple[float, ...], ys, x: float) -> float:
    if len(xs) == 1:
        return float(ys[0])
    # The segment holding x, or the nearest end segment when x lies outside.
    i = 0
    while i < len(xs) - 2 and x > xs[i + 1]:
        i += 1
    lx0, lx1 = math.log(xs[i]), math.log(xs[i + 1])
    ly0, ly1 = math.log(ys[i]), math.log(ys[i + 1])
    return math.exp(ly0 + (ly1 - ly0) * (math.log(x) - lx0) / (lx1 - lx0))


def _linear(xs: tuple[int, ...], ys: tuple[float, ...], x: float) -> float:
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = 0
    while x > xs[i + 1]:
        i += 1
    return ys[i] + (ys[i + 1] - ys[i]) * (x - xs[i]) / (xs[i + 1] - xs[i])


def _positive_increasing(values, what: str, where: str, strict_positive: bool = True) -> None:
    if not values:
        raise ValueError(f"{where}: {what} is empty")
    if any(not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v)
           or (v <= 0 if strict_positive else v < 0) for v in values):
        raise ValueError(f"{where}: {what} must be {'positive' if strict_positive else '>= 0'} "
                         f"numbers, got {values}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{where}: {what} must be strictly increasing, got {values}")


def _positive(values, what: str, where: str, allow_null: bool = False) -> None:
    for v in values:
        if v is None and allow_null:
            continue
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{where}: {what} must be positive numbers"
                             f"{' or null' if allow_null else ''}, got {values}")


def curve_from_json(name: str, raw: dict, where: str) -> Curve:
    where = f"{where} curve {name!r}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be an object")
    missing = [k for k in ("policy", "workers", "mean_us", "reference_decisions") if k not in raw]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    workers = raw["workers"]
    mean = raw["mean_us"]
    p99 = raw.get("p99_us", [None] * len(workers) if isinstance(workers, list) else None)
    if not all(isinstance(x, list) for x in (workers, mean, p99)) \
            or not len(workers) == len(mean) == len(p99):
        raise ValueError(f"{where}: workers, mean_us and p99_us must be lists of one length")
    if any(not isinstance(w, int) or isinstance(w, bool) for w in workers):
        raise ValueError(f"{where}: workers must be integers, got {workers}")
    _positive_increasing(workers, "workers", where)
    _positive(mean, "mean_us", where)
    _positive(p99, "p99_us", where, allow_null=True)
    ref = raw["reference_decisions"]
    if not isinstance(ref, int) or isinstance(ref, bool) or ref < 0:
        raise ValueError(f"{where}: reference_decisions must be an integer >= 0, got {ref!r}")
    hd: tuple[int, ...] = ()
    hf: tuple[float, ...] = ()
    if raw.get("history") is not None:
        h = raw["history"]
        if not isinstance(h, dict) or not isinstance(h.get("decisions"), list) \
                or not isinstance(h.get("factor"), list) \
                or len(h["decisions"]) != len(h["factor"]):
            raise ValueError(f"{where}: history must hold lists 'decisions' and 'factor' "
                             f"of one length")
        _positive_increasing(h["decisions"], "history decisions", where, strict_positive=False)
        _positive(h["factor"], "history factor", where)
        hd, hf = tuple(h["decisions"]), tuple(float(f) for f in h["factor"])
    return Curve(name=name, policy=str(raw["policy"]), workers=tuple(workers),
                 mean_us=tuple(float(m) for m in mean),
                 p99_us=tuple(None if p is None else float(p) for p in p99),
                 reference_decisions=ref, history_decisions=hd, history_factor=hf)


def load_model_file(path: Path) -> dict[str, Curve]:
    """Curves of one model file, by curve name."""
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"decision-time model {path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"decision-time model {path}: not JSON ({e.msg}, line {e.lineno})") \
            from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f"decision-time model {path}: 'format' must be {FORMAT!r}")
    for key in ("source", "host"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ValueError(f"decision-time model {path}: {key!r} must name where the "
                             f"figures come from")
    curves = raw.get("curves")
    if not isinstance(curves, dict) or not curves:
        raise ValueError(f"decision-time model {path}: 'curves' must be a non-empty object")
    return {name: curve_from_json(name, c, f"decision-time model {path}")
            for name, c in curves.items()}


class Model:
    """`model:PATH`: figures from model files (a file, or a folder of `<policy>.json`)."""

    host_dependent = False

    def __init__(self, path: Path, curve: str | None = None, statistic: str = "mean"):
        self.path = path
        self.statistic = statistic
        self._by_policy: dict[str, Curve] = {}
        self._folder = path.is_dir()
        if not self._folder:
            curves = load_model_file(path)
            for c in curves.values():
                self._by_policy.setdefault(c.policy, c)
            # A curve named after its policy is that policy's default.
            for c in curves.values():
                if c.name == c.policy:
                    self._by_policy[c.policy] = c
            if curve is not None:
                if curve not in curves:
                    raise ValueError(f"decision-time model {path}: no curve {curve!r}; "
                                     f"has {', '.join(curves)}")
                self._by_policy[curves[curve].policy] = curves[curve]
            if statistic == "p99":
                for c in self._by_policy.values():
                    c.at_workers(c.workers[0], "p99")  # fails now, not mid-run
        elif curve is not None:
            raise ValueError(f"decision-time model {path}: #CURVE needs a file, not a folder")

    def curve(self, policy: str) -> Curve:
        if policy not in self._by_policy:
            if self._folder:
                file = self.path / f"{policy}.json"
                if not file.is_file():
                    raise ValueError(f"decision-time model: no {file} for policy {policy!r}")
                curves = load_model_file(file)
                chosen = curves.get(policy) or next(
                    (c for c in curves.values() if c.policy == policy), None)
                if chosen is None:
                    raise ValueError(f"decision-time model {file}: no curve for policy "
                                     f"{policy!r}")
                chosen.at_workers(chosen.workers[0], self.statistic)
                self._by_policy[policy] = chosen
            else:
                raise ValueError(f"decision-time model {self.path}: no curve for policy "
                                 f"{policy!r}; has {', '.join(sorted(self._by_policy))}")
        return self._by_policy[policy]

    def seconds(self, policy: str, num_workers: int, decisions_so_far: int,
                measured_cpu_s: float) -> float:
        _check_args(num_workers, decisions_so_far, measured_cpu_s)
        return self.curve(policy).micros(num_workers, decisions_so_far, self.statistic) * 1e-6


def parse_decision_time(spec: str) -> DecisionTime:
    """`off | fixed:US | model:PATH[#CURVE][@mean|@p99] | measured` -> a decision-time source."""
    usage = "expected off, fixed:US, model:PATH[#CURVE][@mean|@p99] or measured"
    if not isinstance(spec, str):
        raise ValueError(f"--decision-time: {usage}, got {spec!r}")
    spec = spec.strip()
    if spec == "off":
        return Off()
    if spec == "measured":
        return Measured()
    kind, sep, rest = spec.partition(":")
    if sep and kind == "fixed":
        try:
            us = float(rest)
        except ValueError:
            raise ValueError(f"--decision-time {spec!r}: US must be a number of "
                             f"microseconds") from None
        if not math.isfinite(us) or us < 0:
            raise ValueError(f"--decision-time {spec!r}: US must be finite and >= 0")
        return Fixed(us)
    if sep and kind == "model":
        statistic = "mean"
        head, at, stat = rest.rpartition("@")
        if at and stat in STATISTICS:
            rest, statistic = head, stat
        path_text, hash_, curve = rest.partition("#")
        if not path_text:
            raise ValueError(f"--decision-time {spec!r}: model needs a file or folder")
        if hash_ and not curve:
            raise ValueError(f"--decision-time {spec!r}: empty curve name after '#'")
        path = Path(path_text)
        if not path.exists():
            raise ValueError(f"--decision-time {spec!r}: no such file or folder {path}")
        return Model(path, curve or None, statistic)
    raise ValueError(f"--decision-time {spec!r}: {usage}")
