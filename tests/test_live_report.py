"""The live comparison's summary: which runs count, per-seed ratios, the seed-spread and
simulator flags, the plain-words reading, and option errors (no server started)."""

from __future__ import annotations

import pytest

from sglang_ext.bench import live_report
from sglang_ext.bench.__main__ import main

CONFIG = {"workloads": {"react": {"model": "tiny", "about": "x"}}, "seeds": [1, 2],
          "targets": ["round_robin", "prefix_length_aware"], "dp_size": 2, "simulate": True}


def _row(target, seed, e2e, side="live", **kw):
    return {"side": side, "target": target, "seed": seed, "workload": "react", "model": "tiny", "requests": 10,
            "succeeded": 10, "failed": 0, "error": None, "e2e_mean_s": e2e, "e2e_p99_s": 2 * e2e,
            "ttft_mean_s": e2e / 10, "norm_latency_mean": e2e / 100, "prefix_hit_rate": 0.5, **kw}


def test_ratios_are_per_seed_and_beyond_spread_only_when_every_seed_agrees():
    rows = [_row("round_robin", 1, 2.0), _row("round_robin", 2, 4.0),
            _row("prefix_length_aware", 1, 1.0), _row("prefix_length_aware", 2, 3.0)]
    entry = live_report.summarize(rows, CONFIG)["entries"][1]
    ratio = entry["vs_round_robin"]["e2e_mean_s"]
    assert ratio["per_seed"] == {"1": 0.5, "2": 0.75} and ratio["beyond_spread"]
    rows[3]["e2e_mean_s"] = 5.0                                # seed 2 now loses
    ratio = live_report.summarize(rows, CONFIG)["entries"][1]["vs_round_robin"]["e2e_mean_s"]
    assert not ratio["beyond_spread"] and ratio["max"] == pytest.approx(1.25)


def test_one_seed_is_never_beyond_the_spread():
    rows = [_row("round_robin", 1, 2.0), _row("prefix_length_aware", 1, 1.0)]
    ratio = live_report.summarize(rows, CONFIG)["entries"][1]["vs_round_robin"]["e2e_mean_s"]
    assert ratio["median"] == 0.5 and not ratio["beyond_spread"]


def test_a_run_that_lost_requests_is_left_out_and_listed():
    rows = [_row("round_robin", 1, 2.0), _row("prefix_length_aware", 1, 1.0, failed=1, succeeded=9),
            _row("prefix_length_aware", 2, 1.0, error="SGLang exited")]
    summary = live_report.summarize(rows, CONFIG)
    assert [e["target"] for e in summary["entries"]] == ["round_robin"]
    assert {(r["target"], r["seed"]) for r in summary["left_out"]} == {("prefix_length_aware", 1),
                                                                      ("prefix_length_aware", 2)}
    text = live_report.markdown(summary, CONFIG, {"cores": 2, "load_avg": [0, 0, 0]})
    assert "Runs left out" in text and "SGLang exited" in text


def test_simulator_differences_above_15_percent_are_flagged():
    rows = [_row("round_robin", 1, 2.0), _row("round_robin", 1, 2.2, side="sim"),
            _row("prefix_length_aware", 1, 1.0), _row("prefix_length_aware", 1, 0.5, side="sim")]
    entries = live_report.summarize(rows, CONFIG)["entries"]
    assert not entries[0]["sim_error"]["e2e_mean_s"]["flag"]           # 10 %
    assert entries[1]["sim_error"]["e2e_mean_s"]["flag"]               # 50 %
    assert entries[1]["sim_error"]["e2e_mean_s"]["median"] == pytest.approx(0.5)


def test_the_reading_says_where_ours_loses():
    rows = [_row("round_robin", 1, 1.0), _row("round_robin", 2, 1.0),
            _row("prefix_length_aware", 1, 1.5), _row("prefix_length_aware", 2, 1.2)]
    lines = live_report.reading(live_report.summarize(rows, CONFIG), CONFIG)
    assert any("LOSES on mean e2e" in line and "beyond the seed spread" in line for line in lines)


@pytest.mark.parametrize("argv, message", [
    (["--policies", "fastest"], "unknown policy 'fastest'"),
    (["--gateway-policies", "magic"], "unknown gateway policy 'magic'"),
    (["--policies", "--gateway-policies"], "nothing to run"),
    (["--seeds", "1", "1"], "must not repeat"),
    (["--duration-s", "0"], "--duration-s must be > 0"),
])
def test_bad_options_are_one_line_errors_before_any_server(argv, message, capsys, tmp_path):
    assert main(["live", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
