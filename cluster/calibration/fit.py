"""Least squares of the linear step-time model on live probes.

The simulator's step time is `b0 + b1 x uncached prefill tokens + b2 x decode requests`
(`sglang_ext/core/cost_model.py`). The probes (`probes.py`) see it through the request
path around the engine, so the fit has two more terms, which the simulator gets as its
per-request dispatch delay rather than as engine time:

    prefill probe:  ttft = c + d x prompt tokens + b0 + b1 x uncached tokens
    decode probe:   step = b0 + b2 x batch

`c` is the fixed path (HTTP, tokenizer manager, controller, detokenizer, streaming),
`d` a cost per prompt token whether cached or not: on the tiny model a 3,072-token
prompt with all but 16 tokens cached took 60 % of the time of a fresh one. `d` grows
with the model (tiny 45 us, SmolLM2 612 us per token here), so it is at least partly
engine time that the linear step model has no term for; the simulator charges it as a
per-request delay (docs/results/calibration/README.md says what that misses). `d` and
`b1` are told apart by probes that repeat a prompt with only its tail changed.

Every coefficient is >= 0 (non-negative least squares, scipy's `nnls`); rows are
weighted by 1 / y so that a 5 ms decode step counts as much as a 500 ms prefill
(relative residuals are what the targets are stated in).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster.calibration.probes import DecodeSample, PrefillSample

COEFFICIENTS = ("overhead_s", "per_prompt_token_s", "step_base_s", "prefill_s_per_token", "decode_s_per_request")


class FitError(ValueError):
    pass


@dataclass(frozen=True)
class Fit:
    setting: str
    overhead_s: float
    per_prompt_token_s: float
    step_base_s: float
    prefill_s_per_token: float
    decode_s_per_request: float
    prefill_residuals: dict     # relative residuals (fit / measured - 1) of the prefill probes
    decode_residuals: dict
    prefill_rows: int
    decode_rows: int

    def predict_ttft_s(self, prompt_tokens: int, uncached_tokens: int) -> float:
        return (self.overhead_s + self.per_prompt_token_s * prompt_tokens + self.step_base_s
                + self.prefill_s_per_token * uncached_tokens)

    def predict_step_s(self, batch: int) -> float:
        return self.step_base_s + self.decode_s_per_request * batch

    def request_delay_ms(self, mean_prompt_tokens: float) -> float:
        """The path around the engine for a request of this prompt length: the
        simulator's `--dispatch-delay-ms`."""
        return (self.overhead_s + self.per_prompt_token_s * mean_prompt_tokens) * 1e3

    def to_dict(self) -> dict:
        return {
            "setting": self.setting,
            "overhead_ms": self.overhead_s * 1e3,
            "per_prompt_token_us": self.per_prompt_token_s * 1e6,
            "step_base_us": self.step_base_s * 1e6,
            "prefill_us_per_token": self.prefill_s_per_token * 1e6,
            "decode_us_per_request": self.decode_s_per_request * 1e6,
            "prefill_rows": self.prefill_rows, "decode_rows": self.decode_rows,
            "prefill_residuals": self.prefill_residuals, "decode_residuals": self.decode_residuals,
        }


def _residual_stats(predicted: np.ndarray, measured: np.ndarray) -> dict:
    if len(measured) == 0:
        return {"rms_rel": None, "max_abs_rel": None, "mean_rel": None}
    rel = predicted / measured - 1.0
    return {"rms_rel": float(np.sqrt(np.mean(rel ** 2))), "max_abs_rel": float(np.max(np.abs(rel))),
            "mean_rel": float(np.mean(rel))}


def medians(prefill: list[PrefillSample], decode: list[DecodeSample]
            ) -> tuple[list[PrefillSample], list[DecodeSample]]:
    """One sample per probe shape (setting, rank, prompt and uncached tokens; setting,
    rank, batch): the median time of its repeats. On a shared 2-core host a probe now and
    then lands on another process's burst; the median drops that, a mean would not."""
    groups: dict = {}
    for p in prefill:
        groups.setdefault((p.setting, p.rank, p.prompt_tokens, p.uncached_tokens), []).append(p)
    pre = [PrefillSample(k[0], k[1], k[2], k[2] - k[3], float(np.median([x.ttft_s for x in v])))
           for k, v in groups.items()]
    groups = {}
    for d in decode:
        groups.setdefault((d.setting, d.rank, d.batch), []).append(d)
    dec = [DecodeSample(k[0], k[1], k[2], float(np.median([x.step_s for x in v])),
                        min(x.tokens_in_window for x in v)) for k, v in groups.items()]
    return pre, dec


def fit_step_model(setting: str, prefill: list[PrefillSample], decode: list[DecodeSample]) -> Fit:
    """Fit the five coefficients (see the module doc) on one setting's probes, taken as
    the median of each probe shape's repeats (`medians`)."""
    from scipy.optimize import nnls

    prefill, decode = medians(prefill, decode)

    if len(decode) < 2 or len({d.batch for d in decode}) < 2:
        raise FitError(f"{setting}: need decode probes at two batch sizes at least, got {len(decode)}")
    if len({p.uncached_tokens for p in prefill}) < 2:
        raise FitError(f"{setting}: need prefill probes at two uncached lengths at least")
    for s in [*prefill, *decode]:
        y = s.ttft_s if isinstance(s, PrefillSample) else s.step_s
        if not (np.isfinite(y) and y > 0):
            raise FitError(f"{setting}: a probe measured {y!r} s; every time must be > 0")
    rows, ys = [], []
    for p in prefill:
        rows.append([1.0, p.prompt_tokens, 1.0, p.uncached_tokens, 0.0])
        ys.append(p.ttft_s)
    for d in decode:
        rows.append([0.0, 0.0, 1.0, 0.0, d.batch])
        ys.append(d.step_s)
    x, y = np.asarray(rows, dtype=float), np.asarray(ys, dtype=float)
    # Column scaling keeps nnls well conditioned (token counts are in the thousands).
    scale = np.maximum(np.abs(x).max(axis=0), 1.0)
    w = 1.0 / y
    coef, _ = nnls((x / scale) * w[:, None], y * w)
    coef = coef / scale
    pred = x @ coef
    n_pre = len(prefill)
    return Fit(setting, *[float(v) for v in coef],
               prefill_residuals=_residual_stats(pred[:n_pre], y[:n_pre]),
               decode_residuals=_residual_stats(pred[n_pre:], y[n_pre:]),
               prefill_rows=n_pre, decode_rows=len(decode))


def cost_model_file(fit: Fit, *, name: str, model: str, hardware: str, engine: str, source: str,
                    kv_capacity_tokens: int, extra: dict | None = None) -> dict:
    """The cost-model JSON (`sglang_ext/core/cost_models/`): the three linear
    coefficients the policies and the simulator read, plus the fit's other terms."""
    return {
        "name": name, "model": model, "hardware": hardware, "engine": engine, "source": source,
        "step_base_us": round(fit.step_base_s * 1e6, 1),
        "prefill_us_per_token": round(fit.prefill_s_per_token * 1e6, 3),
        "decode_us_per_request": round(fit.decode_s_per_request * 1e6, 3),
        "kv_capacity_tokens": int(kv_capacity_tokens),
        "request_path": {"overhead_ms": round(fit.overhead_s * 1e3, 3),
                         "per_prompt_token_us": round(fit.per_prompt_token_s * 1e6, 3),
                         "note": "terms of the probes beyond the step model, charged by the simulator as "
                                 "--dispatch-delay-ms = overhead_ms + per_prompt_token_us x mean prompt tokens / 1000 "
                                 "(per_prompt_token_us grows with the model: partly engine time, "
                                 "docs/results/calibration/README.md)"},
        "fit": fit.to_dict(),
        **(extra or {}),
    }
