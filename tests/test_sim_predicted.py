"""Predicted lengths in the simulated study: a sweep whose workload says `predict = true`
predicts every trace and runs `@predicted` cells on them; a spec asking for `@predicted`
without predictions is refused; the share of the oracle's gain on hand-made summaries."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from cluster import oracle_gain, sweep
from traces.format import read_trace

SWEEPS = pathlib.Path(sweep.__file__).parent / "sweeps"

TINY = """
name = "tiny-predicted"
seeds = [1]
gpus = [2]
rates_rps = [4]
policies = ["prefix_length_aware@max_new_tokens", "prefix_length_aware@oracle", "prefix_length_aware@predicted"]
[sim]
cost_model = "h100-llama3.1-8b"
kv_capacity_tokens = 200000
[workloads.chat]
generator = "sharegpt"
args = ["--duration-s", "2", "--max-turns", "2", "--scan-records", "100", "--token-ids"]
predict = true
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("predicted")
    (root / "tiny.toml").write_text(TINY)
    done = subprocess.run([sys.executable, "-m", "cluster", "sweep", str(root / "tiny.toml"), "--out",
                           str(root / "out"), "--processes", "2"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "out"


def test_a_predicting_workload_runs_a_predicted_cell_end_to_end(swept):
    predicted = swept / "traces" / "chat-r4-s1.predicted.jsonl"
    trace = read_trace(predicted)
    assert trace.requests and all(r.predicted_output_tokens is not None for r in trace.requests)
    assert len({r.predicted_output_tokens for r in trace.requests}) > 1
    assert list((swept / "traces").glob("chat-r4-s1.jsonl.predictions-*.json"))   # the cache, beside the trace
    cell = swept / "cells" / "chat" / "g2" / "r4" / "prefix_length_aware@predicted" / "s1"
    summary = json.loads((cell / "summary.json").read_text())
    assert summary["failed"] == 0 and summary["succeeded"] == summary["requests"] == len(trace.requests)
    config = json.loads((cell / "config.json").read_text())
    assert config["simulate"]["sim"]["length_source"] == "predicted"
    assert pathlib.Path(config["trace"]).name == predicted.name
    # The report gets the oracle-gain section for the three length sources.
    report = (swept / "report" / "report.md").read_text()
    assert "Share of the oracle's gain" in report and (swept / "report" / "oracle_gain.json").exists()


def test_a_predicted_policy_without_predictions_is_one_line(tmp_path):
    spec = tmp_path / "bad.toml"
    spec.write_text(TINY.replace("predict = true\n", ""))
    with pytest.raises(sweep.SweepError, match="workload chat does not predict") as err:
        sweep.load_spec(spec)
    assert "\n" not in str(err.value)
    spec.write_text(TINY.replace("predict = true", 'predict = "yes"'))
    with pytest.raises(sweep.SweepError, match="predict must be true/false"):
        sweep.load_spec(spec)
    spec.write_text(TINY.replace("predict = true", 'predict_model = "length_model/artifacts"'))
    assert sweep.load_spec(spec).workloads[0].predict   # a model folder implies predict


def test_the_study_specs_load_and_only_sharegpt_predicts():
    poster, sharegpt, toolbench = (sweep.load_spec(SWEEPS / f"{n}.toml") for n in ("poster", "sharegpt", "toolbench"))
    assert toolbench.policies == poster.policies
    assert sharegpt.policies == (*poster.policies, "prefix_length_aware@predicted")
    assert all(w.predict for w in sharegpt.workloads) and not any(w.predict for w in toolbench.workloads)
    for spec in (sharegpt, toolbench):
        assert spec.sim == {"cost_model": "preble-a6000-mistral-7b", "decision_time": "model"}
        assert spec.gpus == (8, 16) and len(spec.seeds) == 3


def _summary(e2e_mean: float, e2e_p99: float, norm: float) -> dict:
    return {"e2e_s": {"mean": e2e_mean, "p99": e2e_p99}, "norm_latency_s_per_token": {"mean": norm}}


def _cells(values: dict[str, list[tuple[float, float, float]]], rate: float = 32.0) -> dict:
    return {("chat", 8, rate, f"prefix_length_aware@{source}", seed): _summary(*v)
            for source, per_seed in values.items() for seed, v in enumerate(per_seed, start=1)}


def test_the_share_of_the_oracles_gain_by_hand():
    cells = _cells({"max_new_tokens": [(10, 40, 0.10), (12, 44, 0.12)],
                    "oracle": [(6, 20, 0.05), (8, 24, 0.07)],
                    "predicted": [(7, 30, 0.10), (10, 34, 0.12)]})
    rows = {r.metric: r for r in oracle_gain.gain_shares(cells)}
    e2e = rows["e2e mean s"]
    # means 11, 7, 8.5: gain 4, predicted captures 2.5 of it; seeds: (10-7)/4, (12-10)/4.
    assert (e2e.oracle_gain, e2e.seed_spread, e2e.share) == (4, 2, 2.5 / 4)
    assert (e2e.share_min, e2e.share_max, e2e.seeds, e2e.meaningful) == (0.5, 0.75, 2, True)
    assert rows["e2e p99 s"].share == pytest.approx(0.5)
    assert rows["norm latency s/tok"].share == pytest.approx(0.0)   # no better than the cap


def test_an_oracle_gain_inside_the_seed_spread_is_called_meaningless():
    cells = _cells({"max_new_tokens": [(10, 40, 0.10), (14, 44, 0.12)],
                    "oracle": [(9, 39, 0.09), (13.5, 43, 0.115)],    # gain 0.75 < spread 4
                    "predicted": [(9.5, 39, 0.095), (13.8, 43, 0.118)]})
    rows = oracle_gain.gain_shares(cells)
    assert rows and not any(r.meaningful for r in rows)
    assert "within seed spread: share means nothing" in oracle_gain.markdown(rows)
    # A seed that did not gain makes it meaningless even with a large mean gain.
    cells = _cells({"max_new_tokens": [(10, 40, 0.1), (12, 40, 0.1), (12, 40, 0.1)],
                    "oracle": [(10, 40, 0.1), (8, 40, 0.1), (8, 40, 0.1)],
                    "predicted": [(10, 40, 0.1), (9, 40, 0.1), (9, 40, 0.1)]})
    row = next(r for r in oracle_gain.gain_shares(cells) if r.metric == "e2e mean s")
    assert row.oracle_gain == pytest.approx(8 / 3) and row.seed_spread == 2 and not row.meaningful


def test_one_seed_is_never_called_meaningful():
    cells = _cells({"max_new_tokens": [(10, 40, 0.1)], "oracle": [(6, 20, 0.05)], "predicted": [(8, 30, 0.07)]})
    rows = oracle_gain.gain_shares(cells)
    assert rows[0].share == 0.5 and rows[0].seed_spread == 0 and not any(r.meaningful for r in rows)
    assert "one seed: no spread to judge by" in oracle_gain.markdown(rows)


def test_no_row_without_all_three_length_sources():
    cells = _cells({"max_new_tokens": [(10, 40, 0.1)], "oracle": [(6, 20, 0.05)]})
    cells[("chat", 8, 32.0, "round_robin", 1)] = _summary(1, 1, 1)
    assert oracle_gain.gain_shares(cells) == [] and oracle_gain.markdown([]) == ""
