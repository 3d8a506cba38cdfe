"""The controller's decision-time histogram: fixed memory, percentiles within one bucket
(9 %), and per-workload figures by subtracting two snapshots."""

import pytest

from sglang_ext.core.decision_times import DecisionTimes, bucket_of, bucket_upper_us, delta


def test_empty_record_reports_no_figures():
    s = DecisionTimes().status()
    assert s["count"] == 0 and s["p99_us"] is None and s["mean_us"] is None


@pytest.mark.parametrize("us", [0.5, 1.0, 1.05, 7.3, 99.0, 1234.5, 60e6])
def test_a_time_falls_in_the_bucket_whose_edges_hold_it(us):
    index = bucket_of(us)
    assert us <= bucket_upper_us(index) or index == len(DecisionTimes().counts) - 1
    if index > 0 and us < 1e7:
        assert us > bucket_upper_us(index - 1)


def test_percentiles_are_within_one_bucket_of_the_true_ones():
    times = DecisionTimes()
    for us in range(1, 1001):             # 1..1000 us, one each: p50 = 500, p99 = 990
        times.record(us * 1000)
    s = times.status()
    assert s["count"] == 1000 and s["mean_us"] == pytest.approx(500.5)
    assert 500 <= s["p50_us"] <= 500 * 1.091
    assert 990 <= s["p99_us"] <= 990 * 1.091
    assert s["max_us"] == pytest.approx(1000)


def test_delta_gives_the_figures_of_the_decisions_in_between():
    times = DecisionTimes()
    for _ in range(100):
        times.record(10_000_000)          # 10 ms each: an earlier, slow workload
    before = times.status()
    for _ in range(50):
        times.record(20_000)              # 20 us each
    d = delta(before, times.status())
    assert d["count"] == 50
    assert d["mean_us"] == pytest.approx(20.0)
    assert 20 <= d["p99_us"] <= 20 * 1.091
    assert delta(None, times.status())["p99_us"] >= 10_000
