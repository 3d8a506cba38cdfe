"""`kv_cost` (NVIDIA Dynamo KV-router rule) on hand-built views."""

from __future__ import annotations

import math
from collections import Counter

from sglang_ext.core.policies import make_policy
from sglang_ext.core.policies.kv_cost import KvCost
from tests.factories import make_config, make_loads, make_request, make_view


def policy(n: int = 3, seed: int = 0, **options) -> KvCost:
    return make_policy("kv_cost", make_config(n, seed=seed), **options)


def test_cost_formula_in_blocks():
    p = policy(2)
    loads = make_loads(2, queued_prefill_tokens=[30, 0], kv_tokens_used=[100, 50],
                       pending_decode_tokens=[64, 640])
    view = make_view(loads, cached=[64, 0], page_size=16)
    req = make_request(100)
    # w0: prefill ceil((30 + 36) / 16) = 5; decode ceil(130 / 16) = 9 + ceil(36 / 16) = 3
    # w1: prefill ceil(100 / 16) = 7;        decode ceil(50 / 16) = 4 + ceil(100 / 16) = 7
    assert p.costs(req, view) == [5 + 12, 7 + 11]
    assert p.choose(req, view) == 0
    # Weight 0: Dynamo's pure load balancing; the overlap no longer matters.
    blind = policy(2, overlap_weight=0.0)
    assert blind.costs(req, view) == [12, 11]
    assert blind.choose(req, view) == 1


def test_pending_decode_option_adds_future_blocks():
    p = policy(2, include_pending_decode=True)
    loads = make_loads(2, pending_decode_tokens=[0, 500])
    view = make_view(loads, page_size=10)
    assert p.costs(make_request(100), view) == [20, 70]
    # Dynamo's rule does not see future output: a tie.
    assert policy(2).costs(make_request(100), view) == [20, 20]


def test_every_worker_empty_ties_are_seeded_random():
    view = make_view(make_loads(4))
    picks = [policy(4, seed=s).choose(make_request(100), view) for s in range(40)]
    assert set(picks) == {0, 1, 2, 3}  # Dynamo breaks ties randomly
    assert picks == [policy(4, seed=s).choose(make_request(100), view) for s in range(40)]


def test_hot_prefix_wins_until_its_queue_grows():
    p = policy(3)
    req = make_request(2000)
    cached = [1800, 0, 0]
    assert p.choose(req, make_view(make_loads(3), cached=cached)) == 0
    loads = make_loads(3, queued_prefill_tokens=[5000, 0, 0])
    assert p.choose(req, make_view(loads, cached=cached)) in (1, 2)


def test_dead_or_full_worker():
    p = policy(3)
    loads = make_loads(3)
    loads[0].alive = False
    view = make_view(loads, cached=[2000, 0, 0])
    assert math.isinf(p.costs(make_request(2000), view)[0])
    assert p.choose(make_request(2000), view) in (1, 2)
    # A worker full of running sequences loses to an empty one at equal overlap.
    loads = make_loads(2, kv_tokens_used=[90_000, 0])
    assert p.choose(make_request(100), make_view(loads)) == 1


def test_temperature_samples_but_prefers_cheap_workers():
    p = policy(2, seed=7, temperature=0.5)
    loads = make_loads(2, kv_tokens_used=[0, 4000])
    view = make_view(loads)
    counts = Counter(p.choose(make_request(100), view) for _ in range(400))
    assert counts[0] > counts[1] > 0
    # exp(-range / range / 0.5) = e^-2: about 12 % of picks go to the dearer worker.
    assert 20 <= counts[1] <= 90


def test_same_seed_same_choices():
    def run(seed: int) -> list[int]:
        p = policy(4, seed=seed, temperature=1.0)
        loads = make_loads(4)
        out = []
        for i in range(50):
            w = p.choose(make_request(200, rid=str(i)), make_view(loads))
            loads[w].kv_tokens_used += 200
            out.append(w)
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)
