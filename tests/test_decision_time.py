"""Decision-time sources for the simulator: spec parsing, model files, published PREBLE."""

from __future__ import annotations

import json
import math
import pathlib

import pytest

from cluster.decision_time import FORMAT, parse_decision_time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODELS = ROOT / "cluster" / "decision_models"
PUBLISHED = MODELS / "preble-published.json"


def write_model(path: pathlib.Path, curves: dict, **top) -> pathlib.Path:
    payload = {"format": FORMAT, "source": "test", "host": "test", "curves": curves, **top}
    path.write_text(json.dumps(payload))
    return path


def curve(policy="p", workers=(2, 8), mean=(10.0, 40.0), p99=(None, None), ref=100, **extra):
    return {"policy": policy, "workers": list(workers), "mean_us": list(mean),
            "p99_us": list(p99), "reference_decisions": ref, **extra}


def test_off_fixed_measured():
    assert parse_decision_time("off").seconds("x", 8, 0, 0.5) == 0.0
    assert parse_decision_time("fixed:250").seconds("x", 8, 0, 0.5) == pytest.approx(250e-6)
    measured = parse_decision_time("measured")
    assert measured.seconds("x", 8, 0, 0.0123) == 0.0123
    assert measured.host_dependent is True
    assert parse_decision_time("off").host_dependent is False
    assert parse_decision_time("fixed:1").host_dependent is False


@pytest.mark.parametrize("spec", ["", "on", "fixed:", "fixed:abc", "fixed:-1", "fixed:inf",
                                  "model:", "model:/no/such/file.json", "measured:3", "fixed"])
def test_bad_specs_are_one_line_value_errors(spec):
    with pytest.raises(ValueError) as info:
        parse_decision_time(spec)
    assert "\n" not in str(info.value)


def test_bad_call_arguments():
    src = parse_decision_time("fixed:1")
    for args in ((0, 0, 0.0), (4, -1, 0.0), (4, 0, -1.0), (4, 0, math.nan)):
        with pytest.raises(ValueError):
            src.seconds("x", *args)


def test_model_reproduces_points_and_interpolates_in_log_workers(tmp_path):
    path = write_model(tmp_path / "m.json", {"p": curve()})
    src = parse_decision_time(f"model:{path}")
    assert src.host_dependent is False
    assert src.seconds("p", 2, 100, 0.0) == pytest.approx(10e-6)
    assert src.seconds("p", 8, 100, 0.0) == pytest.approx(40e-6)
    # 10 us at 2, 40 at 8: a power law of exponent 1, so 20 us at 4 (not 20 at 5).
    assert src.seconds("p", 4, 100, 0.0) == pytest.approx(20e-6)
    # Beyond the range the last segment's power law continues: 160 us at 32.
    assert src.seconds("p", 32, 100, 0.0) == pytest.approx(160e-6)
    # The host's measured CPU time is ignored by a model.
    assert src.seconds("p", 4, 100, 1.0) == pytest.approx(20e-6)


def test_single_point_is_flat_and_p99_from_ratio(tmp_path):
    path = write_model(tmp_path / "m.json", {
        "p": curve(workers=(4,), mean=(10.0,), p99=(30.0,)),
        "q": curve(policy="q", workers=(2, 8), mean=(10.0, 40.0), p99=(None, 80.0)),
    })
    mean = parse_decision_time(f"model:{path}")
    p99 = parse_decision_time(f"model:{path}@p99")
    assert mean.seconds("p", 128, 100, 0.0) == pytest.approx(10e-6)
    assert p99.seconds("p", 1, 100, 0.0) == pytest.approx(30e-6)
    # q's p99/mean ratio is 2 where known, so 20 us at 2 workers.
    assert p99.seconds("q", 2, 100, 0.0) == pytest.approx(20e-6)


def test_p99_without_figures_fails_at_parse(tmp_path):
    path = write_model(tmp_path / "m.json", {"p": curve()})
    with pytest.raises(ValueError, match="no p99"):
        parse_decision_time(f"model:{path}@p99")


def test_history_term_scales_relative_to_reference(tmp_path):
    hist = {"decisions": [0, 1000, 3000], "factor": [1.0, 2.0, 4.0]}
    path = write_model(tmp_path / "m.json", {"p": curve(ref=1000, history=hist)})
    src = parse_decision_time(f"model:{path}")
    assert src.seconds("p", 2, 1000, 0.0) == pytest.approx(10e-6)
    assert src.seconds("p", 2, 0, 0.0) == pytest.approx(5e-6)
    assert src.seconds("p", 2, 2000, 0.0) == pytest.approx(15e-6)
    # Held flat beyond what was measured.
    assert src.seconds("p", 2, 10_000, 0.0) == pytest.approx(20e-6)


def test_curve_selection_and_unknown_policy(tmp_path):
    path = write_model(tmp_path / "m.json", {"p": curve(), "p+slow": curve(mean=(100.0, 400.0))})
    assert parse_decision_time(f"model:{path}").seconds("p", 2, 0, 0.0) == pytest.approx(10e-6)
    slow = parse_decision_time(f"model:{path}#p+slow")
    assert slow.seconds("p", 2, 0, 0.0) == pytest.approx(100e-6)
    with pytest.raises(ValueError, match="no curve 'nope'"):
        parse_decision_time(f"model:{path}#nope")
    with pytest.raises(ValueError, match="no curve for policy 'other'"):
        parse_decision_time(f"model:{path}").seconds("other", 2, 0, 0.0)


def test_folder_of_policy_files(tmp_path):
    write_model(tmp_path / "a.json", {"a": curve(policy="a", mean=(1.0, 4.0))})
    src = parse_decision_time(f"model:{tmp_path}")
    assert src.seconds("a", 8, 0, 0.0) == pytest.approx(4e-6)
    with pytest.raises(ValueError, match="b.json"):
        src.seconds("b", 8, 0, 0.0)


@pytest.mark.parametrize("mutate, message", [
    (lambda m: m.update(format="other"), "format"),
    (lambda m: m.update(source=""), "source"),
    (lambda m: m.update(curves={}), "curves"),
    (lambda m: m["curves"]["p"].update(workers=[8, 2]), "increasing"),
    (lambda m: m["curves"]["p"].update(mean_us=[1.0]), "one length"),
    (lambda m: m["curves"]["p"].update(mean_us=[0.0, 1.0]), "positive"),
    (lambda m: m["curves"]["p"].pop("reference_decisions"), "missing reference_decisions"),
    (lambda m: m["curves"]["p"].update(history={"decisions": [0], "factor": []}), "history"),
])
def test_malformed_model_files(tmp_path, mutate, message):
    model = {"format": FORMAT, "source": "s", "host": "h", "curves": {"p": curve()}}
    mutate(model)
    path = tmp_path / "m.json"
    path.write_text(json.dumps(model))
    with pytest.raises(ValueError, match=message) as info:
        parse_decision_time(f"model:{path}")
    assert "\n" not in str(info.value)


def test_not_json(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{")
    with pytest.raises(ValueError, match="not JSON"):
        parse_decision_time(f"model:{path}")


@pytest.mark.parametrize("workers, mean_ms", [(2, 0.63), (8, 1.2), (16, 2.3), (32, 3.7),
                                              (64, 7.1)])
def test_published_preble_means(workers, mean_ms):
    # DESIGN.md 3.1: PREBLE's own scheduler, mean over the last 1,000 of 5,000 requests.
    src = parse_decision_time(f"model:{PUBLISHED}")
    assert src.seconds("preble", workers, 4500, 0.0) == pytest.approx(mean_ms * 1e-3)


def test_published_preble_p99_and_eviction_term():
    assert parse_decision_time(f"model:{PUBLISHED}@p99").seconds("preble", 64, 4500, 0.0) \
        == pytest.approx(9.0e-3)
    evict = f"model:{PUBLISHED}#preble+eviction"
    assert parse_decision_time(evict).seconds("preble", 64, 4500, 0.0) == pytest.approx(9.7e-3)
    assert parse_decision_time(evict + "@p99").seconds("preble", 64, 4500, 0.0) \
        == pytest.approx(36e-3)


def test_shipped_model_files_load():
    files = sorted(MODELS.glob("*.json"))
    assert PUBLISHED in files
    for file in files:
        src = parse_decision_time(f"model:{file}")
        for c in src._by_policy.values():
            assert src.seconds(c.policy, 128, 0, 0.0) > 0


def test_published_preble_grows_with_history_up_to_the_published_steady_state():
    src = parse_decision_time(f"model:{PUBLISHED}")
    early, steady, later = (src.seconds("preble", 64, n, 0.0) for n in (500, 4500, 20_000))
    assert early < steady == pytest.approx(7.1e-3) == later


def test_measured_models_name_this_host_and_cover_every_registered_policy():
    from sglang_ext.core.policies import POLICIES

    for policy in POLICIES:
        raw = json.loads((MODELS / f"{policy}.json").read_text())
        assert "bench policies" in raw["source"] and "host" in raw["host"]
        assert parse_decision_time(f"model:{MODELS}").seconds(policy, 16, 1000, 0.0) > 0
