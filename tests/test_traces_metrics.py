"""Replay metrics on hand-built results: definitions of DESIGN.md section 6."""

from __future__ import annotations

import pytest

from traces.metrics import RequestResult, busy_time_s, summarize
from traces.stats import shared_prefix_tokens


def result(i: int, worker: int, arrival: float, ttft: float, e2e: float, out: int, prompt: int = 100,
           cached: int = 50) -> RequestResult:
    r = RequestResult(id=f"r{i}", arrival_s=arrival, queue_delay_s=0.0, prompt_tokens=prompt, output_tokens=out,
                      cached_tokens=cached, worker=worker, ok=True)
    r.finish(ttft, e2e)
    return r


def test_per_request_definitions():
    r = result(0, 0, 0.0, 0.2, 1.2, 11)
    assert r.tpot_s == pytest.approx(0.1) and r.norm_latency_s_per_token == pytest.approx(1.2 / 11)
    one = result(1, 0, 0.0, 0.2, 0.2, 1)
    assert one.tpot_s is None and one.norm_latency_s_per_token == pytest.approx(0.2)


def test_busy_time_is_the_union_of_intervals():
    assert busy_time_s([(0, 2), (1, 3), (5, 6), (5.5, 5.7)]) == pytest.approx(4.0)
    assert busy_time_s([]) == 0.0


def test_summary_hit_rate_throughput_and_imbalance():
    rs = [result(0, 0, 0.0, 0.1, 1.0, 10), result(1, 0, 1.0, 0.1, 1.0, 10), result(2, 1, 0.0, 0.1, 0.5, 5, cached=0)]
    failed = RequestResult(id="x", arrival_s=0.5, error="boom")
    s = summarize(rs + [failed], dp_size=3)
    assert s["succeeded"] == 3 and s["failed"] == 1
    assert s["prefix_hit_rate"] == pytest.approx(100 / 300)
    assert s["throughput_rps"] == pytest.approx(3 / 2.0) and s["throughput_output_tokens_per_s"] == pytest.approx(25 / 2.0)
    assert s["per_worker"]["2"]["requests"] == 0                        # idle ranks count in the imbalance
    assert s["worker_imbalance_busy_max_over_mean"] == pytest.approx(2.0 / (2.5 / 3))
    assert s["e2e_s"]["p50"] == pytest.approx(1.0) and s["ttft_s"]["mean"] == pytest.approx(0.1)


def test_shared_prefix_counts_whole_pages_seen_before():
    a = list(range(40))
    b = list(range(20)) + [999] * 20
    shared = shared_prefix_tokens([a, b, a, [7] * 5], page_tokens=8)
    assert shared.tolist() == [0, 16, 40, 0]
