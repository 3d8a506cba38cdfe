"""The one percentile definition shared by the trace tools, the simulator and the benchmarks."""

from __future__ import annotations

import pytest

from traces.summary import percentile, prefixed, summarize_values


def test_percentile_interpolates_between_ranks_instead_of_taking_the_next_sample():
    # 1..100: rank 0.99 * 99 = 98.01 lies between 99 and 100; nearest rank would say 100.
    values = list(range(1, 101))
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile([7.0], 99) == 7.0


def test_summary_fields_scale_and_order():
    s = summarize_values([1e-6, 2e-6, 3e-6, 4e-6], scale=1e6)
    assert list(s) == ["count", "mean", "p50", "p90", "p99", "max"]
    assert s["count"] == 4 and s["mean"] == pytest.approx(2.5) and s["max"] == pytest.approx(4.0)
    assert s["p50"] == pytest.approx(2.5) and s["p90"] == pytest.approx(3.7) and s["p99"] == pytest.approx(3.97)
    picked = summarize_values([3.0, 1.0], keys=("count", "p99", "max"))
    assert picked == {"count": 2, "p99": pytest.approx(2.98), "max": 3.0}


def test_an_empty_sample_has_count_zero_and_no_figures():
    assert summarize_values([]) == {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    with pytest.raises(ValueError, match="empty sample"):
        percentile([], 50)


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="within 0-100"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="unknown summary keys"):
        summarize_values([1.0], keys=("p95",))


def test_prefixed_names_flat_result_fields():
    row = prefixed(summarize_values([1.0, 3.0]), "cpu_", "_us", keys=("p50", "max"))
    assert row == {"cpu_p50_us": 2.0, "cpu_max_us": 3.0}


def test_replay_summary_and_simulator_decision_times_use_the_shared_definition():
    from cluster.results import _decision_stats
    from traces.metrics import _dist

    values = [float(v) for v in range(1, 101)]
    assert _dist(values) == {"count": 100, "mean": 50.5, "p50": 50.5, "p90": pytest.approx(90.1),
                             "p99": pytest.approx(99.01)}
    decisions = _decision_stats([v * 1e-6 for v in values])
    assert list(decisions) == ["count", "mean", "p50", "p99", "max"]
    assert decisions["p99"] == pytest.approx(99.01)
