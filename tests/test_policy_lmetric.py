"""`lmetric` (uncached prefill tokens x (requests + 1), lowest wins) on hand-built views."""

from __future__ import annotations

import random

from sglang_ext.core.policies import POLICIES, make_policy
from sglang_ext.core.policies.base import LoadColumns
from tests.factories import make_config, make_loads, make_request, make_view


def policy(n: int = 3):
    return make_policy("lmetric", make_config(n))


def test_registered_by_its_command_line_name():
    assert "lmetric" in POLICIES


def test_score_is_uncached_tokens_times_load_plus_one():
    loads = make_loads(3, requests=[0, 3, 1])
    view = make_view(loads, cached=[0, 600, 200])
    # 1000 uncached x 1 = 1000;  400 x 4 = 1600;  800 x 2 = 1600
    assert policy().scores(make_request(1000), view).tolist() == [1000, 1600, 1600]
    assert policy().choose(make_request(1000), view) == 0


def test_a_cache_hit_beats_a_lighter_worker_without_thresholds():
    # 100 uncached x 9 = 900 < 1000 x 1: locality wins while the product says so ...
    loads = make_loads(2, requests=[8, 0])
    assert policy(2).choose(make_request(1000), make_view(loads, cached=[900, 0])) == 0
    # ... and one more request on the hot worker tips it (100 x 11 = 1100 > 1000).
    loads = make_loads(2, requests=[10, 0])
    assert policy(2).choose(make_request(1000), make_view(loads, cached=[900, 0])) == 1


def test_queued_prefill_and_decode_work_do_not_enter():
    # The rule counts requests, not tokens: a long queue of prefill tokens is invisible.
    loads = make_loads(2, requests=[1, 1], queued_prefill_tokens=[50_000, 0],
                       pending_decode_tokens=[9_000, 0])
    assert policy(2).choose(make_request(500), make_view(loads, cached=[100, 0])) == 0


def test_full_hits_tie_at_zero_and_go_to_fewer_requests_then_lowest_index():
    loads = make_loads(4, requests=[5, 2, 2, 0])
    view = make_view(loads, cached=[300, 300, 300, 0])
    assert policy(4).scores(make_request(300), view).tolist()[:3] == [0, 0, 0]
    assert policy(4).choose(make_request(300), view) == 1
    # All empty and idle: the lowest index.
    assert policy(4).choose(make_request(300), make_view(make_loads(4))) == 0


def test_dead_workers_never_win():
    loads = make_loads(3, requests=[4, 0, 9])
    loads[1].alive = False
    view = make_view(loads, cached=[0, 500, 0])
    assert policy().choose(make_request(500), view) == 0
    loads[0].alive = False
    assert policy().choose(make_request(500), make_view(loads, cached=[0, 500, 0])) == 2


def test_same_choice_as_the_rule_written_per_worker():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.choice([1, 2, 5, 128])
        loads = make_loads(n, requests=[rng.randrange(4) for _ in range(n)])
        for load in loads:
            load.alive = rng.random() > 0.2
        loads[rng.randrange(n)].alive = True
        cached = [rng.choice([0, 50, 100]) for _ in range(n)]
        view = make_view(loads, cached=cached)
        view.columns = LoadColumns.from_loads(loads)
        req = make_request(rng.choice([0, 100, 400]))
        expected = min((w for w in range(n) if loads[w].alive),
                       key=lambda w: (max(0, req.prompt_tokens - cached[w]) * (loads[w].requests + 1),
                                      loads[w].requests, w))
        assert policy(n).choose(req, view) == expected
