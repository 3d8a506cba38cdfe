"""`preble` (PREBLE's E2) and its tree / window helpers, on hand-built views."""

from __future__ import annotations

from sglang_ext.core.policies import make_policy
from sglang_ext.core.policies.preble import Preble
from sglang_ext.core.policies.preble_tree import PrebleTree
from sglang_ext.core.policies.preble_window import LoadWindow, prefill_time_s
from tests.factories import make_config, make_loads, make_request, make_view


def prefix(k: int, n: int = 1000) -> list[int]:
    return list(range(k * 100_000, k * 100_000 + n))


def req(k: int, rid: str, suffix: int = 50, max_new_tokens: int = 64):
    start = 900_000 + int(rid) * 1000  # a suffix unique to the request id
    ids = prefix(k) + list(range(start, start + suffix))
    return make_request(len(ids), max_new_tokens=max_new_tokens, rid=rid, prefix=ids)


def policy(n: int = 2, seed: int = 0, **options) -> Preble:
    return make_policy("preble", make_config(n, seed=seed), **options)


# ------------------------------------------------------------------ helpers

def test_tree_split_keeps_leaf_and_marks_important_nodes():
    tree = PrebleTree(2)
    a, _ = tree.insert(prefix(0) + [1, 2, 3], clock=1)
    assert a.is_large() and a.context_length == 1003
    b, splits = tree.insert(prefix(0) + [7, 8], clock=2)
    (head, tail), = splits
    assert tail is a and head.num_tokens == 1000 and a.num_tokens == 3
    assert head.is_large() and not a.is_large() and not b.is_large()
    assert tree.important_node(a) is head and tree.important_node(b) is head
    assert tree.find(prefix(0) + [1, 2, 3]) is a


def test_tree_never_deletes_nodes():
    tree = PrebleTree(1)
    leaf, _ = tree.insert(prefix(0), clock=1)
    tree.mark_routed(leaf, 0)
    tree.release(leaf, 0)
    assert tree.evict(0, 10_000) == [leaf]
    assert tree.allocated_tokens[0] == 0 and tree.find(prefix(0)) is leaf
    assert len(tree.nodes) == 1


def test_prefill_time_model():
    assert prefill_time_s(100, 100) == (22.0 + 0.32) / 0.9 / 1000
    big = prefill_time_s(2000, 2000)
    assert big == (0.1084 * 2000 + 4.21 + 1.86e-4 * 2000 + 0.159) / 0.9 / 1000
    assert prefill_time_s(192, 192) < prefill_time_s(300, 300) < prefill_time_s(384, 384)


def test_window_expires_and_resets_allocation():
    tree = PrebleTree(2)
    leaf, _ = tree.insert(prefix(0), clock=1)
    leaf.alloc = {1}
    window = LoadWindow(180.0)
    window.record(0.0, leaf, leaf, 64)
    assert window.stats[leaf].count == 1 and window.stats[leaf].miss_rate == 1.0
    window.expire(180.5)
    assert not window.stats and leaf.alloc == set()


# ------------------------------------------------------------------ decisions

def test_every_worker_empty_goes_to_gpu_0():
    p = policy(4)
    assert p.choose(req(0, "1"), make_view(make_loads(4))) == 0
    assert p.last_mode == "explore"


def test_exploit_follows_the_prefix_owner():
    p = policy(3)
    view = make_view(make_loads(3))
    first = p.choose(req(0, "1"), view)
    # Different prefix: explore to the cheapest GPU (not the one now busy with prefix 0).
    other = p.choose(req(1, "2"), view)
    assert other != first
    # Same prefix, short new suffix: exploit, back to prefix 0's GPU.
    assert p.choose(req(0, "3"), view) == first
    assert p.last_mode == "exploit"


def test_decode_cost_uses_max_new_tokens_and_active_requests():
    p = policy(2)
    view = make_view(make_loads(2))
    p.choose(req(0, "1", max_new_tokens=500), view)
    node = p.tree.important_node(p._inflight["1"].leaf)
    cost = p.allocation_costs()[0]
    prefill = 1.0 * 1 * prefill_time_s(node.num_tokens, node.context_length)
    assert abs(cost - (prefill + 1 * 500 * 0.15)) < 1e-9
    p.on_finished("1", 0, 500, 1.0)
    assert abs(p.allocation_costs()[0] - prefill) < 1e-9


def test_explore_hit_ratio_sends_duplicates_home():
    p = policy(2)
    view = make_view(make_loads(2))
    home = p.choose(req(0, "1"), view)
    p.choose(req(1, "2", max_new_tokens=900), view)  # load the other GPU... then
    p.choose(req(2, "3", max_new_tokens=900), view)  # ...both carry in-flight work
    # The identical prompt again: its leaf is the whole 1,050-token node (explore), but
    # the GPU that holds it has a 100 % hit ratio.
    assert p.choose(req(0, "1"), view) == home
    assert p.last_mode == "explore-hit"


def test_dead_worker_is_never_chosen():
    p = policy(3)
    loads = make_loads(3)
    home = p.choose(req(0, "1"), make_view(loads))
    loads[home].alive = False
    chosen = p.choose(req(0, "2"), make_view(loads))
    assert chosen != home and loads[chosen].alive


def test_full_worker_eviction_term():
    p = policy(2, capacity_tokens=1500, enable_rebalancing=False)
    view = make_view(make_loads(2))
    assert p.choose(req(0, "1"), view) == 0
    p.on_finished("1", 0, 64, 1.0)
    leaf, _ = p.tree.insert(prefix(5) + [1], clock=99)
    # GPU 0 would have to evict prefix 0 (an important node with a windowed request).
    assert p._eviction_cost(leaf, 0, view) > 0
    assert p._eviction_cost(leaf, 1, view) == 0
    # The real eviction marks nodes and keeps them in the tree.
    p.tree.mark_routed(leaf, 0)
    p.tree.evict(0, p.tree.allocated_tokens[0] - 1500)
    assert p.tree.allocated_tokens[0] <= 1500 and p.tree.find(prefix(0)) is not None


def test_assume_full_memory_charges_even_when_not_full():
    p = policy(2, assume_full_memory=True)
    view = make_view(make_loads(2))
    p.choose(req(0, "1"), view)
    p.on_finished("1", 0, 64, 1.0)
    leaf, _ = p.tree.insert(prefix(5), clock=99)
    assert p._eviction_cost(leaf, 0, view) > 0
    assert policy(2)._eviction_cost(leaf, 0, view) == 0


def test_rebalancing_moves_important_nodes_to_the_light_gpu():
    p = policy(2, warmup_requests=0)
    loads = make_loads(2)
    loads[1].alive = False
    rid = 0
    for k in (0, 1, 2):  # three prefixes, two requests each, all on GPU 0
        for _ in range(2):
            rid += 1
            assert p.choose(req(k, str(rid), max_new_tokens=300), make_view(loads)) == 0
    loads[1].alive = True
    rid += 1
    p.choose(req(3, str(rid)), make_view(loads))
    assert p.moves >= 1
    moved = [s.node for s in p.window.stats.values() if s.node.alloc == {1}]
    assert moved
    # A later request for a moved prefix is exploited on its new GPU.
    k = next(k for k in (0, 1, 2) if p.tree.find(prefix(k)).alloc == {1})
    assert p.choose(req(k, "99"), make_view(loads)) == 1


def test_hot_prefix_replicated_when_its_ttft_doubled():
    p = policy(2, warmup_requests=0)
    loads = make_loads(2)
    loads[1].alive = False
    for i in range(1, 7):  # one hot prefix on GPU 0; TTFT 0.1 s early, 1 s late
        now = 10.0 * i
        p.choose(req(0, str(i), max_new_tokens=300), make_view(loads, now_s=now))
        p.on_prefill_done(str(i), 0, now + (0.1 if i <= 3 else 1.0))
    loads[1].alive = True
    p.choose(req(0, "7"), make_view(loads, now_s=140.0))
    node = p.tree.find(prefix(0))
    assert p.replications == 1 and node.alloc == {0, 1}


def test_tpot_learned_from_feedback():
    p = policy(2)
    p.choose(req(0, "1"), make_view(make_loads(2)))
    p.on_prefill_done("1", 0, 1.0)
    p.on_finished("1", 0, 11, 2.0)
    assert list(p.tpot_s[0]) == [0.15, 0.1]


def test_same_seed_same_choices():
    def run() -> list[int]:
        p = policy(4, warmup_requests=10)
        loads = make_loads(4)
        out = []
        for i in range(120):
            now = i * 0.5
            w = p.choose(req(i % 5, str(i), max_new_tokens=50 + 40 * (i % 3)),
                         make_view(loads, now_s=now))
            out.append(w)
            if i >= 8:
                done = str(i - 8)
                p.on_prefill_done(done, out[i - 8], now)
                p.on_finished(done, out[i - 8], 30, now + 0.2)
        return out

    first = run()
    assert first == run() and len(set(first)) > 1
