"""The existing policies (round_robin, total_requests, total_tokens, prefix_length_aware)
on hand-built views."""

from __future__ import annotations

import pytest

from sglang_ext.core.policies import POLICIES, STOCK_METHODS, make_policy
from tests.factories import make_config, make_loads, make_request, make_view


def policy(name: str, n: int):
    return make_policy(name, make_config(n))


# ------------------------------------------------------------------ round_robin

def test_round_robin_rotates():
    p = policy("round_robin", 3)
    view = make_view(make_loads(3))
    assert [p.choose(make_request(), view) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_skips_dead_workers():
    p = policy("round_robin", 4)
    loads = make_loads(4)
    loads[1].alive = False
    loads[2].alive = False
    view = make_view(loads)
    assert [p.choose(make_request(), view) for _ in range(5)] == [0, 3, 0, 3, 0]


def test_round_robin_ignores_load_and_cache():
    p = policy("round_robin", 2)
    view = make_view(make_loads(2, requests=[50, 0]), cached=[100, 0])
    assert [p.choose(make_request(), view) for _ in range(2)] == [0, 1]


# ------------------------------------------------------------- total_requests

def test_total_requests_least_loaded_ties_to_lowest_index():
    p = policy("total_requests", 4)
    assert p.choose(make_request(), make_view(make_loads(4, requests=[3, 1, 1, 2]))) == 1
    assert p.choose(make_request(), make_view(make_loads(4))) == 0


def test_total_requests_skips_dead():
    p = policy("total_requests", 3)
    loads = make_loads(3, requests=[5, 0, 2])
    loads[1].alive = False
    assert p.choose(make_request(), make_view(loads)) == 2


# --------------------------------------------------------------- total_tokens

def test_total_tokens_counts_kv_and_queued_prefill():
    p = policy("total_tokens", 3)
    loads = make_loads(3, kv_tokens_used=[100, 50, 0], queued_prefill_tokens=[0, 0, 200])
    assert p.choose(make_request(), make_view(loads)) == 1


def test_total_tokens_ties_by_requests_then_index():
    p = policy("total_tokens", 3)
    loads = make_loads(3, kv_tokens_used=[100, 100, 100], requests=[2, 1, 1])
    assert p.choose(make_request(), make_view(loads)) == 1


def test_stock_methods_are_content_blind():
    for name in STOCK_METHODS:
        assert POLICIES[name].uses_prefix_match is False


# ------------------------------------------------------- prefix_length_aware

def test_pla_prefix_affinity_when_loads_equal():
    p = policy("prefix_length_aware", 3)
    view = make_view(make_loads(3), cached=[0, 900, 0])
    assert p.choose(make_request(1000), view) == 1


def test_pla_every_worker_empty_lowest_index():
    p = policy("prefix_length_aware", 3)
    assert p.choose(make_request(1000), make_view(make_loads(3))) == 0


def test_pla_moves_off_a_hot_worker_with_large_queued_prefill():
    p = policy("prefix_length_aware", 2)
    # Worker 0 holds the prefix but has 20k tokens of prefill queued: waiting for it
    # costs more than recomputing 1,800 tokens on the idle worker.
    loads = make_loads(2, queued_prefill_tokens=[20_000, 0], requests=[10, 0])
    view = make_view(loads, cached=[1800, 0])
    assert p.choose(make_request(2000), view) == 1
    # With a small queue the prefix wins.
    loads = make_loads(2, queued_prefill_tokens=[300, 0], requests=[1, 0])
    assert p.choose(make_request(2000), make_view(loads, cached=[1800, 0])) == 0


def test_pla_length_awareness_long_request_avoids_long_pending_decode():
    p = policy("prefix_length_aware", 2)
    # Equal prefix, equal request counts; worker 0's in-flight requests still have long
    # decodes ahead, worker 1's are about to finish.
    loads = make_loads(2, requests=[8, 8], pending_decode_tokens=[8 * 500, 8 * 5])
    view = make_view(loads, cached=[500, 500])
    long_req = make_request(600, max_new_tokens=500)
    assert p.choose(long_req, view) == 1
    costs = p.costs(long_req, view)
    assert costs[0] > costs[1]


def test_pla_short_request_barely_cares_about_pending_decode():
    p = policy("prefix_length_aware", 2)
    loads = make_loads(2, requests=[8, 8], pending_decode_tokens=[8 * 500, 8 * 5])
    view = make_view(loads, cached=[500, 500])
    short, long = make_request(600, max_new_tokens=1), make_request(600, max_new_tokens=500)
    gap_short = p.costs(short, view)[0] - p.costs(short, view)[1]
    gap_long = p.costs(long, view)[0] - p.costs(long, view)[1]
    assert 0 <= gap_short < gap_long


def test_pla_dead_worker_never_chosen():
    p = policy("prefix_length_aware", 2)
    loads = make_loads(2)
    loads[1].alive = False
    assert p.choose(make_request(1000), make_view(loads, cached=[0, 1000])) == 0


def test_pla_eviction_term_for_a_full_worker():
    p = policy("prefix_length_aware", 2)
    loads = make_loads(2, capacity=10_000, kv_tokens_committed=[9_900, 0])
    view = make_view(loads, cached=[200, 0])
    assert p.choose(make_request(1000), view) == 1


@pytest.mark.parametrize("name", ["round_robin", "total_requests", "total_tokens",
                                  "prefix_length_aware"])
def test_same_seed_same_choices(name):
    def run() -> list[int]:
        p = policy(name, 4)
        loads = make_loads(4)
        out = []
        for i in range(40):
            view = make_view(loads, cached=[(i * 37 + 100 * w) % 400 for w in range(4)])
            w = p.choose(make_request(500, rid=str(i)), view)
            loads[w].requests += 1
            loads[w].kv_tokens_used += 500
            out.append(w)
        return out

    assert run() == run()
