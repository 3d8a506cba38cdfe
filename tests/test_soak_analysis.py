"""`bench soak`'s checks on synthetic series: a flat run passes, each kind of leak or drift
fails the check that names it (and only that one)."""

from __future__ import annotations

import random

import pytest

from sglang_ext.bench.soak import read_history
from sglang_ext.bench.soak_analysis import (
    ControllerSample,
    LatencySample,
    SoakSeries,
    check,
    plain_table,
    slope_growth,
)

DURATION_S, USERS, CAPACITY = 600.0, 4, 16384


def flat_series(seed: int = 0, rss_leak_mib_per_min: float = 0.0, tree_overshoot: int = 0,
                p50_drift: float = 1.0, in_flight_after: int = 0, failures: int = 0,
                rate_rps: float = 4.0) -> SoakSeries:
    """A healthy 10-minute run with noise; the arguments inject one fault each."""
    rng = random.Random(seed)
    s = SoakSeries(duration_s=DURATION_S, target_rate_rps=4.0, users=USERS, in_flight_after_drain=in_flight_after)
    for i in range(121):  # every 5 s
        t = 5.0 * i
        rss = 700.0 + min(t, 120) / 120 * 20 + rng.uniform(-0.8, 0.8) + rss_leak_mib_per_min * t / 60
        fill = min(CAPACITY, int(t * 100))
        tree = [fill, max(0, fill - 500)]
        if tree_overshoot and t >= 400:
            tree[1] = CAPACITY + tree_overshoot
        s.controller.append(ControllerSample(t, rss, 0.05 * t, tree, [CAPACITY, CAPACITY],
                                             rng.randint(0, USERS), 0))
    for i in range(601):  # a row a second, as Locust writes
        t = float(i)
        p50 = 200.0 * (p50_drift if t >= DURATION_S / 2 else 1.0) * rng.uniform(0.9, 1.1)
        s.latency.append(LatencySample(t, USERS, rate_rps, p50, 2.5 * p50, int(rate_rps * t),
                                       failures if t > 100 else 0))
    return s


def failed(series: SoakSeries) -> set[str]:
    return {c.name for c in check(series) if not c.passed}


def test_a_flat_run_passes_every_check():
    for seed in range(5):
        assert failed(flat_series(seed)) == set()


def test_a_controller_that_leaks_a_mib_a_minute_fails_the_memory_check_only():
    # 5 MiB over the second half, under +-0.8 MiB of sample noise and a start-up rise.
    assert failed(flat_series(rss_leak_mib_per_min=1.0)) == {"controller RSS growth, second half"}
    assert failed(flat_series(rss_leak_mib_per_min=0.1)) == set()  # 0.5 MiB in 5 minutes: within 4 MiB


def test_a_mirror_that_misses_evictions_fails_the_capacity_check():
    assert failed(flat_series(tree_overshoot=1)) == {"mirror tokens <= worker KV capacity"}


def test_a_ledger_that_keeps_lost_requests_fails_the_in_flight_check():
    assert failed(flat_series(in_flight_after=2)) == {"ledger in-flight bounded"}
    s = flat_series()
    s.controller[50].in_flight = USERS + 1
    assert failed(s) == {"ledger in-flight bounded"}


def test_latency_that_doubles_in_the_second_half_fails_the_stability_check():
    assert failed(flat_series(p50_drift=2.0)) == {"latency stable (p50, second half / first half)"}
    assert failed(flat_series(p50_drift=1.2)) == set()


def test_failures_and_a_falling_rate_fail_their_checks():
    assert failed(flat_series(failures=3)) == {"no failures"}
    assert failed(flat_series(rate_rps=2.0)) == {"request rate sustained, second half"}


def test_an_empty_run_passes_nothing():
    s = SoakSeries(duration_s=DURATION_S, target_rate_rps=4.0, users=USERS)
    assert all(not c.passed for c in check(s))


def test_slope_growth_is_the_fitted_rise_over_the_span():
    assert slope_growth([0, 1, 2, 3], [5, 6, 7, 8]) == pytest.approx(3.0)
    assert slope_growth([0, 1, 2, 3], [5, 5, 5, 5]) == 0.0
    assert slope_growth([1.0], [3.0]) == 0.0


def test_table_has_a_row_a_minute_and_a_line_per_check():
    text = plain_table(flat_series(), check(flat_series()))
    lines = text.splitlines()
    assert sum(1 for line in lines if line.startswith(("PASS", "FAIL"))) == 6
    assert any(line.strip().startswith("9-10") for line in lines)


def test_read_history_keeps_the_generate_rows_with_times_from_the_start(tmp_path):
    path = tmp_path / "h.csv"
    header = ("Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,"
              "100%,Total Request Count,Total Failure Count,Total Median Response Time,Total Average Response Time,"
              "Total Min Response Time,Total Max Response Time,Total Average Content Size")
    rows = ["1000,4,POST,/generate,3.9,0,210,,,,,480,,,,,,40,0,200,220,50,900,0",
            "1000,4,TTFT,/generate,3.9,0,20,,,,,40,,,,,,40,0,20,22,5,90,0",
            "1001,4,POST,/generate,4.1,0,N/A,,,,,N/A,,,,,,44,1,200,220,50,900,0",
            "1001,4,,Aggregated,8,0,100,,,,,400,,,,,,88,1,100,120,5,900,0"]
    path.write_text("\n".join([header, *rows]) + "\n")
    got = read_history(path, t0_wall=998.5)
    assert [(s.t_s, s.p50_ms, s.p95_ms, s.total_requests, s.total_failures) for s in got] == [
        (1.5, 210.0, 480.0, 40, 0), (2.5, None, None, 44, 1)]
