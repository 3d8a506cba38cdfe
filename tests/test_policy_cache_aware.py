"""`cache_aware` (SGLang Model Gateway rule) on hand-built views."""

from __future__ import annotations

from sglang_ext.core.policies import make_policy
from sglang_ext.core.policies.cache_aware import CacheAware
from tests.factories import make_config, make_loads, make_request, make_view

PREFIX = list(range(500))


def policy(n: int = 3, **options) -> CacheAware:
    return make_policy("cache_aware", make_config(n), **options)


def test_every_worker_empty_goes_to_lowest_index():
    p = policy(3)
    assert p.choose(make_request(100), make_view(make_loads(3))) == 0
    assert p.last_mode == "fallback"


def test_low_match_goes_to_smallest_tree():
    p = policy(3)
    loads = make_loads(3)
    # Workers 0 and 1 got a prompt each: worker 2 has the smallest (empty) tree.
    assert p.choose(make_request(100, rid="a"), make_view(loads)) == 0
    p.tree.insert_approximate(1, list(range(50_000, 50_200)), 10**9)
    assert p.choose(make_request(100, prefix=list(range(70_000, 70_100)), rid="b"),
                    make_view(loads)) == 2


def test_hot_prefix_follows_the_tree_not_the_view():
    p = policy(3)
    loads = make_loads(3)
    first = p.choose(make_request(600, prefix=PREFIX, rid="a"), make_view(loads))
    loads[first].requests = 5  # busier, but within the balance thresholds
    # The exact mirror in the view says worker 2 holds it: the gateway's rule ignores that.
    view = make_view(loads, cached=[0, 0, 600])
    assert p.choose(make_request(600, prefix=PREFIX, rid="b"), view) == first
    assert p.last_mode == "cache"


def test_exact_mirror_option_reads_the_view():
    p = policy(3, use_exact_mirror=True)
    loads = make_loads(3, requests=[0, 0, 4])
    view = make_view(loads, cached=[0, 0, 400])
    assert p.choose(make_request(600, prefix=PREFIX), view) == 2
    # Below the threshold: least loaded, ties to the lowest index.
    view = make_view(loads, cached=[0, 0, 100])
    assert p.choose(make_request(600, prefix=PREFIX), view) == 0


def test_match_rate_must_exceed_threshold():
    p = policy(2, use_exact_mirror=True)
    loads = make_loads(2, requests=[3, 0])
    # 30 % exactly is not "more than 0.3": fall back to the least loaded.
    assert p.choose(make_request(1000), make_view(loads, cached=[300, 0])) == 1
    assert p.choose(make_request(1000), make_view(loads, cached=[301, 0])) == 0


def test_imbalance_needs_both_thresholds():
    p = policy(2, use_exact_mirror=True)
    hot = make_request(100)
    # max - min = 65 > 64 and 100 > 1.5 x 35: imbalanced, least loaded wins over the cache.
    assert p.choose(hot, make_view(make_loads(2, requests=[100, 35]), cached=[100, 0])) == 1
    assert p.last_mode == "balance"
    # max - min = 64: not imbalanced, the cache wins.
    assert p.choose(hot, make_view(make_loads(2, requests=[99, 35]), cached=[100, 0])) == 0
    # Difference 100 but ratio 1.4: not imbalanced.
    assert p.choose(hot, make_view(make_loads(2, requests=[350, 250]), cached=[100, 0])) == 0


def test_imbalanced_route_still_inserts_into_the_tree():
    p = policy(2)
    loads = make_loads(2, requests=[200, 0])
    assert p.choose(make_request(600, prefix=PREFIX, rid="a"), make_view(loads)) == 1
    assert p.tree.match(make_request(600, prefix=PREFIX).input_ids)[1] == 600


def test_dead_worker_is_never_chosen():
    p = policy(3)
    loads = make_loads(3)
    first = p.choose(make_request(600, prefix=PREFIX, rid="a"), make_view(loads))
    loads[first].alive = False
    chosen = p.choose(make_request(600, prefix=PREFIX, rid="b"), make_view(loads))
    assert chosen != first and loads[chosen].alive
    # A dead worker with zero load does not make the cluster look imbalanced.
    loads = make_loads(2, requests=[0, 100])
    loads[0].alive = False
    assert p.choose(make_request(10), make_view(loads)) == 1


def test_tree_is_bounded_by_max_size():
    p = policy(1, max_tree_size_tokens=1000)
    loads = make_loads(1)
    for i in range(20):
        p.choose(make_request(300, prefix=list(range(i * 1000, i * 1000 + 300)), rid=str(i)),
                 make_view(loads))
    assert p.tree.tokens_held(0) <= 1000


def test_same_seed_same_choices():
    def run() -> list[int]:
        p = policy(4)
        loads = make_loads(4)
        out = []
        for i in range(60):
            prefix = list(range((i % 5) * 1000, (i % 5) * 1000 + 400))
            w = p.choose(make_request(450, prefix=prefix, rid=str(i)), make_view(loads))
            loads[w].requests += 1
            out.append(w)
        return out

    assert run() == run()
