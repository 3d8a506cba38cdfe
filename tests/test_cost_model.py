"""Cost-model files and the online fit (`sglang_ext.core.cost_model`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sglang_ext.core.cost_model import (
    CostModel,
    CostModelError,
    OnlineCostFit,
    cost_model_names,
    load_cost_model,
)
from sglang_ext.core.router import Router, RouterConfig, build_cost_model
from factories import make_request


def test_every_shipped_file_loads_and_names_its_source():
    names = cost_model_names()
    assert {"h100-llama3.1-8b", "a100-llama3.1-8b"} <= set(names)
    for name in names:
        model = load_cost_model(name)
        assert model.name == name and model.source and model.hardware and model.model
        assert model.prefill_us_per_token > 0 and model.decode_us_per_request > 0


def test_h100_figures_are_the_published_fit():
    model = load_cost_model("h100-llama3.1-8b")
    assert (model.step_base_us, model.prefill_us_per_token, model.decode_us_per_request) == (5750.0, 17.3, 6.0)
    assert model.step_us(1000, 10) == pytest.approx(5750 + 17300 + 60)


def test_bad_names_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(CostModelError, match="no cost model 'nope'"):
        load_cost_model("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"step_base_us": 1, "prefill_us_per_token": -2, "decode_us_per_request": 1}))
    with pytest.raises(CostModelError, match="prefill_us_per_token must be a number >= 0"):
        load_cost_model(str(bad))
    bad.write_text("{not json")
    with pytest.raises(CostModelError, match="cannot read it"):
        load_cost_model(str(bad))


def test_a_file_by_path_keeps_unknown_fields(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"step_base_us": 1, "prefill_us_per_token": 2, "decode_us_per_request": 3,
                                "source": "measured", "note": "kept"}))
    model = load_cost_model(str(path))
    assert model.name == "mine" and model.extra == {"note": "kept"} and model.to_dict()["note"] == "kept"


def _truth_fit(seed: int, b0=20_000.0, b1=900.0, b2=3_000.0, noise=0.05) -> OnlineCostFit:
    """Observations from a worker whose true coefficients are (b0, b1, b2)."""
    rng = np.random.default_rng(seed)
    fit = OnlineCostFit(load_cost_model("h100-llama3.1-8b"), bound=1000.0)
    for _ in range(400):
        tokens = int(rng.integers(50, 3000))
        fit.observe_prefill((b0 + b1 * tokens) * (1 + noise * rng.standard_normal()) / 1e6, tokens)
        steps, batch, prefill = int(rng.integers(4, 300)), float(rng.uniform(1, 12)), int(rng.integers(0, 4000))
        decode_us = steps * (b0 + b2 * batch) + b1 * prefill
        fit.observe_decode(decode_us * (1 + noise * rng.standard_normal()) / 1e6, steps, batch, prefill)
    fit.update()
    return fit


def test_online_fit_recovers_the_coefficients_of_the_hardware_it_runs_on():
    for seed in (0, 1, 2):
        m = _truth_fit(seed).model
        assert m.prefill_us_per_token == pytest.approx(900, rel=0.1)
        assert m.decode_us_per_request == pytest.approx(3000, rel=0.15)
        assert m.step_base_us == pytest.approx(20_000, rel=0.15)


def test_online_fit_stays_within_its_bounds_and_starts_at_the_prior():
    prior = load_cost_model("h100-llama3.1-8b")
    fit = OnlineCostFit(CostModel(**{**prior.__dict__}), bound=4.0)
    fit.update()
    assert fit.model.prefill_us_per_token == prior.prefill_us_per_token  # no data: the file
    for _ in range(200):
        fit.observe_prefill(10.0, 100)  # absurdly slow: 100 ms per token
    fit.update()
    assert fit.model.prefill_us_per_token == pytest.approx(4 * prior.prefill_us_per_token)


def test_router_feeds_the_online_fit_and_the_policy_reads_it():
    config = RouterConfig(policy="prefix_length_aware", num_workers=2, cost_model="online")
    router = Router(config)
    assert router.policy.cost is router.cost_model  # one instance, updated in place
    before = router.cost_model.prefill_us_per_token
    for i in range(200):
        rid, tokens = f"r{i}", 100 + 50 * (i % 9)
        router.route(make_request(prompt_tokens=tokens, max_new_tokens=8, rid=rid, prefix=[i + 1]), 10.0 * i)
        router.prefill_done(rid, 10.0 * i + tokens / 1000)  # 1 ms per prompt token: no H100
        router.finished(rid, 8, 10.0 * i + 0.6)
    assert router.cost_fit.status()["prefill_samples"] == 200
    assert router.cost_model.prefill_us_per_token == pytest.approx(1000, rel=0.2)
    assert before == 17.3


def test_build_cost_model_names():
    assert build_cost_model("a100-llama3.1-8b")[1] is None
    model, fit = build_cost_model("online:a100-llama3.1-8b")
    assert fit is not None and model.name == "a100-llama3.1-8b"
    with pytest.raises(CostModelError):
        build_cost_model("online:nope")


# ---- the preble-a6000 form (figures checked by hand from DESIGN section 4's fit)

def test_preble_file_names_its_form_capacity_and_derived_linear_coefficients():
    model = load_cost_model("preble-a6000-mistral-7b")
    assert model.form == "preble-a6000" and model.kv_capacity_tokens == 198516
    assert "PREBLE" in model.source and model.hardware and model.model == "Mistral-7B"
    # The policies' linear view: slope of a big prefill, the decode floor, attention per request.
    assert model.prefill_us_per_token == pytest.approx(108.4 / 0.9, rel=1e-4)
    assert model.step_base_us == pytest.approx(22159 / 0.9, rel=1e-4)
    assert model.decode_us_per_request == pytest.approx(0.186 * 2048 / 0.9, rel=1e-4)


@pytest.mark.parametrize("prefill, decode, context, expected_ms", [
    (100, 0, 500, (22 + 0.32) / 0.9),                                # below 192: the floor, small attention
    (1000, 0, 1000, (0.1084 * 1000 + 4.21 + 0.32) / 0.9),            # the line, small attention
    (1000, 0, 5000, (0.1084 * 1000 + 4.21 + 0.186 * 5 + 0.159) / 0.9),
    (288, 0, 288, ((22 + (0.1084 * 384 + 4.21)) / 2 + 0.32) / 0.9),  # halfway between 192 and 384
    (0, 50, 100_000, (22 + 18.6 + 0.159) / 0.9),                     # a decode step: same base
    (0, 400, 1024, (0.1084 * 400 + 4.21 + 0.32) / 0.9),              # 400 decode tokens: on the line
    (0, 1, 1025, (22 + 1.86e-4 * 1025 + 0.159) / 0.9),               # just past the small-context case
])
def test_preble_step_times_by_hand(prefill, decode, context, expected_ms):
    model = load_cost_model("preble-a6000-mistral-7b")
    assert model.step_time_s(prefill, decode, context) * 1e3 == pytest.approx(expected_ms, rel=1e-9)


def test_linear_form_step_time_ignores_context_and_matches_step_us():
    model = load_cost_model("h100-llama3.1-8b")
    assert model.form == "linear"
    assert model.step_time_s(1000, 10, 10**6) == pytest.approx((5750 + 17300 + 60) / 1e6)


def test_preble_form_survives_the_online_fit_copy_and_to_dict():
    model = load_cost_model("preble-a6000-mistral-7b")
    fit = OnlineCostFit(model)
    assert fit.prior.form == "preble-a6000" and fit.prior.preble == model.preble
    assert fit.prior.step_time_s(0, 1, 10) == model.step_time_s(0, 1, 10)
    assert model.to_dict()["preble"]["floor_ms"] == 22.0


def test_bad_form_files_are_one_line_errors(tmp_path):
    base = {"step_base_us": 1, "prefill_us_per_token": 2, "decode_us_per_request": 3}
    path = tmp_path / "m.json"
    path.write_text(json.dumps({**base, "form": "cubic"}))
    with pytest.raises(CostModelError, match="unknown form 'cubic'"):
        load_cost_model(str(path))
    path.write_text(json.dumps({**base, "form": "preble-a6000", "preble": {"floor_ms": -1}}))
    with pytest.raises(CostModelError, match="floor_ms must be a number >= 0"):
        load_cost_model(str(path))
    path.write_text(json.dumps({**base, "form": "preble-a6000", "preble": {"flor_ms": 1}}))
    with pytest.raises(CostModelError, match="unknown preble field"):
        load_cost_model(str(path))
