"""Engine step-time models: what a prefill token and a co-running decode request cost.

The linear form, read by the policies (and the simulator's default):

    step time (us) = step_base_us + prefill_us_per_token x uncached prefill tokens
                     + decode_us_per_request x decode requests in the batch

A file may name another `form` for the simulator's step times, from the batch's shape
(uncached prefill tokens, decode requests, total context tokens): `step_time_s`.
Every file still carries the three linear coefficients, which the policies read;
`preble-a6000` (PREBLE's published simulator fit, see `PrebleForm`) is the one other
form today.

Coefficients live in JSON files that name their source, model, hardware and engine
(`sglang_ext/core/cost_models/*.json`; `load_cost_model` takes a file's name without `.json`
or a path). `OnlineCostFit` re-estimates them from what the workers report, for hardware
nobody calibrated, starting from (and bounded around) a file's values.

Host-free: no clock, no socket; times are passed in.
"""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass, field, fields

COST_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "cost_models"
DEFAULT_COST_MODEL = "h100-llama3.1-8b"
ONLINE = "online"


class CostModelError(ValueError):
    """A cost model that cannot be loaded; the message is one line."""


@dataclass(frozen=True, slots=True)
class PrebleForm:
    """PREBLE's fitted step time for Mistral-7B on an A6000 (the `preble-a6000` form).

    Figures as recorded in the project's design brief (section 4, "PREBLE's fitted
    Mistral-7B on A6000"), from PREBLE's published simulator: a batch of n tokens
    (uncached prefill tokens plus one per decode request) has a base of
    `per_token_ms` x n + `intercept_ms` when n >= `linear_from_tokens`, and `floor_ms`
    below `floor_below_tokens`; the brief gives nothing between the two, so we
    interpolate linearly from (`floor_below_tokens`, `floor_ms`) to the line's value at
    `linear_from_tokens`. Attention adds `attention_small_ms` when the batch's total
    context is at most `attention_small_max_context_tokens`, else
    `attention_ms_per_context_token` x context + `attention_intercept_ms`. Decode steps
    use the same base. The sum is divided by `efficiency` (0.9).
    """

    per_token_ms: float = 0.1084
    intercept_ms: float = 4.21
    linear_from_tokens: int = 384
    floor_ms: float = 22.0
    floor_below_tokens: int = 192
    attention_small_ms: float = 0.32
    attention_small_max_context_tokens: int = 1024
    attention_ms_per_context_token: float = 1.86e-4
    attention_intercept_ms: float = 0.159
    efficiency: float = 0.9

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise CostModelError(f"preble form: {f.name} must be a number >= 0, got {value!r}")
        if not self.floor_below_tokens <= self.linear_from_tokens:
            raise CostModelError("preble form: floor_below_tokens must be <= linear_from_tokens")
        if self.efficiency <= 0:
            raise CostModelError("preble form: efficiency must be > 0")

    def base_ms(self, tokens: int) -> float:
        if tokens >= self.linear_from_tokens:
            return self.per_token_ms * tokens + self.intercept_ms
        if tokens < self.floor_below_tokens:
            return self.floor_ms
        lo, hi = self.floor_below_tokens, self.linear_from_tokens
        at_hi = self.per_token_ms * hi + self.intercept_ms
        return self.floor_ms + (at_hi - self.floor_ms) * (tokens - lo) / (hi - lo)

    def attention_ms(self, context_tokens: int) -> float:
        if context_tokens <= self.attention_small_max_context_tokens:
            return self.attention_small_ms
        return self.attention_ms_per_context_token * context_tokens + self.attention_intercept_ms

    def step_s(self, prefill_tokens: int, decode_requests: int, context_tokens: int) -> float:
        ms = self.base_ms(prefill_tokens + decode_requests) + self.attention_ms(context_tokens)
        return ms / self.efficiency / 1e3


FORMS = ("linear", "preble-a6000")


@dataclass
class CostModel:
    """Linear step-time coefficients, in microseconds. Mutable: `OnlineCostFit` updates
    the instance a policy holds, so the policy always reads the current estimate."""

    name: str
    step_base_us: float
    prefill_us_per_token: float
    decode_us_per_request: float
    model: str = ""
    hardware: str = ""
    engine: str = ""
    source: str = ""
    extra: dict = field(default_factory=dict)  # fields this form does not use, kept as read
    form: str = "linear"  # how `step_time_s` computes a step: one of FORMS
    preble: PrebleForm | None = None  # the `preble-a6000` form's figures

    def __post_init__(self):
        if isinstance(self.preble, dict):  # a copy made through asdict()
            self.preble = PrebleForm(**self.preble)
        if self.form not in FORMS:
            raise CostModelError(f"cost model {self.name}: unknown form {self.form!r}; known: {', '.join(FORMS)}")
        if self.form == "preble-a6000" and self.preble is None:
            self.preble = PrebleForm()

    @property
    def kv_capacity_tokens(self) -> int | None:
        """KV tokens per GPU the file names for its hardware and model (None: not named)."""
        value = self.extra.get("kv_capacity_tokens")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def step_us(self, prefill_tokens: int, decode_requests: int) -> float:
        """The linear estimate, whatever the form: what the policies reason with."""
        return (self.step_base_us + self.prefill_us_per_token * prefill_tokens
                + self.decode_us_per_request * decode_requests)

    def step_time_s(self, prefill_tokens: int, decode_requests: int, context_tokens: int) -> float:
        """Seconds one engine step takes, from the batch's shape: uncached prefill tokens
        computed, decode requests stepped, and the total context (cached + computed
        tokens) the batch's attention reads. The simulator's clock advances by this."""
        if self.preble is not None and self.form == "preble-a6000":
            return self.preble.step_s(prefill_tokens, decode_requests, context_tokens)
        return self.step_us(prefill_tokens, decode_requests) / 1e6

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        if out["preble"] is None:
            del out["preble"]
        return out


_FIELDS = ("step_base_us", "prefill_us_per_token", "decode_us_per_request")
_TEXT = ("model", "hardware", "engine", "source")


def cost_model_names() -> list[str]:
    return sorted(p.stem for p in COST_MODEL_DIR.glob("*.json"))


def load_cost_model(name_or_path: str) -> CostModel:
    """A shipped model by name (`h100-llama3.1-8b`) or a JSON file by path."""
    path = pathlib.Path(name_or_path)
    if path.suffix != ".json" and "/" not in name_or_path:
        path = COST_MODEL_DIR / f"{name_or_path}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CostModelError(f"no cost model {name_or_path!r}; shipped: {', '.join(cost_model_names())}, "
                             f"or a JSON file path") from None
    except (OSError, ValueError) as exc:
        raise CostModelError(f"cost model {path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise CostModelError(f"cost model {path}: expected a JSON object")
    missing = [k for k in _FIELDS if k not in data]
    if missing:
        raise CostModelError(f"cost model {path}: missing {', '.join(missing)}")
    values = {}
    for key in _FIELDS:
        value = data.pop(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise CostModelError(f"cost model {path}: {key} must be a number >= 0, got {value!r}")
        values[key] = float(value)
    text = {k: str(data.pop(k, "")) for k in _TEXT}
    name = str(data.pop("name", path.stem))
    form = data.pop("form", "linear")
    preble = data.pop("preble", None)
    if preble is not None:
        if not isinstance(preble, dict):
            raise CostModelError(f"cost model {path}: preble must be an object")
        known = {f.name for f in fields(PrebleForm)}
        unknown = sorted(set(preble) - known)
        if unknown:
            raise CostModelError(f"cost model {path}: unknown preble field(s) {', '.join(unknown)}")
        try:
            preble = PrebleForm(**preble)
        except CostModelError as exc:
            raise CostModelError(f"cost model {path}: {exc}") from None
    try:
        return CostModel(name=name, **values, **text, extra=data, form=form, preble=preble)
    except CostModelError as exc:
        raise CostModelError(f"cost model {path}: {exc}") from None


class _RidgeFit:
    """Least squares of y on features, shrunk toward prior coefficients, with forgetting.

    Coefficients are fitted relative to the prior (theta = beta / prior) and shrunk toward
    theta = 1 by `prior_weight` average observations per coefficient. Each coefficient
    is clipped to [prior / bound, prior x bound].
    """

    def __init__(self, prior: list[float], bound: float, prior_weight: float, forget: float):
        import numpy as np

        self._np = np
        self.prior = np.asarray(prior, dtype=float)
        self.bound = bound
        self.prior_weight = prior_weight
        self.forget = forget
        k = len(prior)
        self._xx = np.zeros((k, k))
        self._xy = np.zeros(k)
        self.samples = 0

    def add(self, features: list[float], y: float) -> None:
        x = self._np.asarray(features, dtype=float) * self.prior
        self._xx = self._xx * self.forget + self._np.outer(x, x)
        self._xy = self._xy * self.forget + x * y
        self.samples += 1

    def coefficients(self) -> list[float]:
        np = self._np
        # Shrinkage per coefficient in its own feature's units (a ridge on standardized
        # features): `prior_weight` average observations' worth of each feature.
        effective = max(1.0, min(self.samples, 1 / (1 - self.forget)))
        lam = self.prior_weight * np.maximum(np.diag(self._xx), 1e-12) / effective
        theta = np.linalg.solve(self._xx + np.diag(lam), self._xy + lam)
        theta = np.clip(theta, 1 / self.bound, self.bound)
        return [float(v) for v in theta * self.prior]


class OnlineCostFit:
    """Fits the prefill and decode coefficients from the workers' reports.

    Two regressions, both started from the prior model and bounded around it:
    - time to first token, dispatch to prefill-done, against the uncached tokens the
      worker had to prefill first (its queue at dispatch plus the request's own):
      y = c + b1 x tokens  ->  prefill_us_per_token;
    - decode time, prefill-done to finish, against the request's decode steps, the
      co-running requests and the prefill that ran on the worker meanwhile (SGLang runs
      a prefill batch before the next decode step, so it stalls the decode):
      y = b0 x steps + b2 x steps x batch + b1' x prefill  ->  step_base_us,
      decode_us_per_request (b1' is fitted too, not to confuse prefill with decode, and
      not used: the first regression measures prefill directly).
    Observations are fed by the router; the fitted values are written into `model` (the
    instance the policy reads) every `update_every` observations.
    """

    def __init__(self, model: CostModel, bound: float = 1000.0, prior_weight: float = 2.0,
                 forget: float = 0.995, update_every: int = 8):
        self.model = model
        self.prior = CostModel(**{**asdict(model)})
        self._prefill = _RidgeFit([model.step_base_us, model.prefill_us_per_token], bound, prior_weight, forget)
        self._decode = _RidgeFit([model.step_base_us, model.decode_us_per_request, model.prefill_us_per_token],
                                 bound, prior_weight, forget)
        self.update_every = update_every
        self._pending = 0
        # rid -> [dispatched_s, tokens_ahead, prefill_done_s, requests then, prefilled then]
        self._requests: dict[str, list] = {}

    # ---- request lifecycle, fed by the router (per-request records, bounded by in-flight)

    def on_dispatch(self, rid: str, now_s: float, tokens_ahead: int) -> None:
        self._requests[rid] = [now_s, tokens_ahead, None, 0, 0]

    def on_prefill_done(self, rid: str, now_s: float, requests: int, prefilled_total: int) -> None:
        record = self._requests.get(rid)
        if record is None or record[2] is not None:
            return
        self.observe_prefill(now_s - record[0], record[1])
        record[2:] = [now_s, requests, prefilled_total]

    def on_finished(self, rid: str, now_s: float, output_tokens: int, requests: int,
                    prefilled_total: int) -> None:
        record = self._requests.pop(rid, None)
        if record is None or record[2] is None:
            return
        prefill_done_s, requests_then, prefilled_then = record[2:]
        # Decode steps after the first token; the batch it shared, averaged over the ends.
        self.observe_decode(now_s - prefill_done_s, output_tokens - 1, (requests_then + requests) / 2,
                            prefilled_total - prefilled_then)

    def forget(self, rid: str) -> None:
        self._requests.pop(rid, None)

    # ---- observations

    def observe_prefill(self, ttft_s: float, tokens_ahead: int) -> None:
        if not (ttft_s >= 0 and math.isfinite(ttft_s)):
            return
        self._prefill.add([1.0, float(tokens_ahead)], ttft_s * 1e6)
        self._tick()

    def observe_decode(self, decode_s: float, steps: int, mean_batch: float, prefill_tokens: int) -> None:
        if steps < 1 or not (decode_s >= 0 and math.isfinite(decode_s)):
            return
        self._decode.add([float(steps), steps * mean_batch, float(prefill_tokens)], decode_s * 1e6)
        self._tick()

    def _tick(self) -> None:
        self._pending += 1
        if self._pending >= self.update_every:
            self._pending = 0
            self.update()

    def update(self) -> None:
        if self._prefill.samples:
            self.model.prefill_us_per_token = self._prefill.coefficients()[1]
        if self._decode.samples:
            base, per_request, _ = self._decode.coefficients()
            self.model.step_base_us = base
            self.model.decode_us_per_request = per_request

    def status(self) -> dict:
        return {
            "prefill_samples": self._prefill.samples, "decode_samples": self._decode.samples,
            "step_base_us": round(self.model.step_base_us, 2),
            "prefill_us_per_token": round(self.model.prefill_us_per_token, 3),
            "decode_us_per_request": round(self.model.decode_us_per_request, 3),
            "prior": self.prior.name,
        }
