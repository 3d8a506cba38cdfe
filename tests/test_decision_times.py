"""The controller's decision-time record: totals over all decisions, percentiles over a
bounded recent window."""

import pytest

from sglang_ext.core.decision_times import DecisionTimes


def test_empty_record_reports_no_figures():
    assert DecisionTimes().status()["count"] == 0
    assert DecisionTimes().status()["p99_us"] is None


def test_totals_cover_every_decision_and_percentiles_the_window():
    times = DecisionTimes(window=4)
    for us in (1000, 1, 2, 3, 4):          # the 1000 us decision falls out of the window
        times.record(us * 1000)
    s = times.status()
    assert s["count"] == 5
    assert s["mean_us"] == pytest.approx(1010 / 5)
    assert s["max_us"] == pytest.approx(1000)
    assert s["window"] == 4
    assert s["p50_us"] == pytest.approx(2.5)
    assert s["p99_us"] < 4.0 + 1e-9


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        DecisionTimes(window=0)
