"""Unit tests of the global radix mirror on small hand-built event streams."""

from __future__ import annotations

import pytest
from sglang.srt.mem_cache.utils import get_hash_str, hash_str_to_int64

from sglang_ext.core.global_tree import GlobalTree


def chain(tokens: list[int], page: int, parent: int | None = None) -> list[int]:
    """Chained page hashes (deterministic: Python hashes ints and tuples stably)."""
    out = []
    for start in range(0, len(tokens) // page * page, page):
        parent = hash((parent, tuple(tokens[start : start + page])))
        out.append(parent)
    return out


def store(tree: GlobalTree, worker: int, prefix: list[int], new: list[int]) -> list[int]:
    """Worker stores the pages of `new` after the (already stored) `prefix`; returns
    the hashes of the new pages."""
    page = tree.page_size
    before = chain(prefix, page)
    parent = before[-1] if before else None
    hashes = chain(new, page, parent)
    tree.apply_stored(worker, hashes, parent, new)
    return hashes


# ----------------------------------------------------------------- page size 1


def test_match_per_worker_and_partial_match():
    tree = GlobalTree(3, page_size=1)
    store(tree, 0, [], [1, 2, 3, 4])
    store(tree, 1, [], [1, 2])
    assert tree.match([1, 2, 3, 4, 5]) == [4, 2, 0]
    assert tree.match([1, 2, 9]) == [2, 2, 0]  # diverges inside worker 0's node
    assert tree.match([1, 2, 3]) == [3, 2, 0]  # prompt ends inside a node
    assert tree.match([7]) == [0, 0, 0]
    assert tree.match([]) == [0, 0, 0]
    assert tree.tokens_held(0) == 4 and tree.tokens_held(1) == 2


def test_store_under_a_mid_node_parent_splits():
    tree = GlobalTree(2, page_size=1)
    store(tree, 0, [], [1, 2, 3, 4])
    assert tree.num_nodes() == 1
    store(tree, 1, [], [1, 2])  # shares the first half: split at the worker boundary
    store(tree, 1, [1, 2], [5, 6])  # parent is the 2nd page of the old node
    assert tree.num_nodes() == 3
    assert tree.match([1, 2, 5, 6]) == [2, 4]
    assert tree.match([1, 2, 3, 4]) == [4, 2]
    assert tree.num_pages_indexed() == 6


def test_removal_of_a_suffix_keeps_the_shared_prefix():
    tree = GlobalTree(2, page_size=1)
    store(tree, 0, [], [1, 2, 3, 4])
    store(tree, 1, [], [1, 2, 3, 4])
    tree.apply_removed(0, chain([1, 2, 3, 4], 1)[2:])  # worker 0 evicts pages 3..4
    assert tree.match([1, 2, 3, 4]) == [2, 4]
    assert tree.tokens_held(0) == 2
    tree.apply_removed(1, chain([1, 2, 3, 4], 1))
    assert tree.match([1, 2, 3, 4]) == [2, 0]
    assert tree.num_pages_indexed() == 2


def test_coalesced_removal_spanning_nodes_in_eviction_order():
    """SGLang evicts a leaf, then its parent, and coalesces both into one event."""
    tree = GlobalTree(1, page_size=1)
    parent = store(tree, 0, [], [1, 2])
    leaf = store(tree, 0, [1, 2], [3, 4])
    other = store(tree, 0, [1, 2], [5])
    tree.apply_removed(0, leaf + other + parent)
    assert tree.num_nodes() == 0 and tree.tokens_held(0) == 0 and tree.num_pages_indexed() == 0


def test_removal_by_a_non_holder_or_of_unknown_pages_changes_nothing():
    tree = GlobalTree(2, page_size=1)
    hashes = store(tree, 0, [], [1, 2, 3, 4])
    tree.apply_removed(1, hashes[1:3])  # worker 1 never held them
    tree.apply_removed(0, [12345, -1])  # unknown hashes (e.g. of skipped stores)
    assert tree.num_nodes() == 1  # no needless split
    assert tree.match([1, 2, 3, 4]) == [4, 0]


def test_removing_middle_pages_of_a_node():
    tree = GlobalTree(1, page_size=1)
    hashes = store(tree, 0, [], [1, 2, 3, 4, 5])
    tree.apply_removed(0, hashes[1:3])
    assert tree.match([1, 2, 3, 4, 5]) == [1]
    assert tree.tokens_held(0) == 3


def test_unknown_parent_is_skipped_and_counted():
    tree = GlobalTree(1, page_size=1)
    tree.apply_stored(0, chain([5, 6], 1, parent=999), 999, [5, 6])
    assert tree.skipped_pages == 2
    assert tree.num_nodes() == 0 and tree.match([5, 6]) == [0]


def test_clear_forgets_one_worker_only():
    tree = GlobalTree(2, page_size=1)
    store(tree, 0, [], [1, 2, 3])
    store(tree, 1, [], [1, 2])
    store(tree, 1, [1, 2], [8])
    tree.apply_cleared(1)
    assert tree.match([1, 2, 3]) == [3, 0]
    assert tree.match([1, 2, 8]) == [2, 0]
    assert tree.tokens_held(1) == 0
    tree.apply_cleared(0)
    assert tree.num_nodes() == 0 and tree.num_pages_indexed() == 0


def test_clear_finds_holds_that_are_not_prefix_closed():
    """After lost events a worker may hold a page without its parent; a clear still
    forgets all of it (by a whole-tree pass, counted)."""
    tree = GlobalTree(2, page_size=1)
    store(tree, 0, [], [1, 2])
    store(tree, 1, [1, 2], [3, 4])  # worker 1 never reported storing [1, 2]
    assert tree.match([1, 2, 3, 4]) == [2, 0]
    assert tree.tokens_held(1) == 2
    tree.apply_cleared(1)
    assert tree.tokens_held(1) == 0 and tree.clear_full_scans == 1
    assert tree.match([1, 2, 3]) == [2, 0]
    tree.apply_cleared(0)
    assert tree.num_nodes() == 0 and tree.clear_full_scans == 1


def test_ids_that_are_not_token_ids_raise_a_clear_error():
    tree = GlobalTree(1, page_size=1)
    store(tree, 0, [], [1, 2])
    for bad in ([1, -1], [1, 2**32], [1, "x"]):
        with pytest.raises((OverflowError, TypeError)):
            tree.match(bad)
    assert tree.match([1, 2]) == [2]


def test_restoring_after_eviction():
    tree = GlobalTree(1, page_size=1)
    hashes = store(tree, 0, [], [1, 2])
    tree.apply_removed(0, hashes)
    store(tree, 0, [], [1, 2])
    assert tree.match([1, 2]) == [2] and tree.tokens_held(0) == 2


# ---------------------------------------------------------------- page size 16


def test_page_size_16_matches_whole_pages_only():
    tree = GlobalTree(2, page_size=16)
    prompt = list(range(1000, 1048))  # three pages
    store(tree, 0, [], prompt)
    assert tree.match(prompt) == [48, 0]
    assert tree.match(prompt[:40]) == [32, 0]  # a partial page is never a hit
    assert tree.match(prompt[:15]) == [0, 0]
    diverge = prompt[:20] + [1] * 28  # differs inside the 2nd page
    assert tree.match(diverge) == [16, 0]


def test_page_size_16_split_and_trailing_partial_page():
    tree = GlobalTree(2, page_size=16)
    a = list(range(64))
    b = a[:32] + list(range(500, 532))
    store(tree, 0, [], a)
    store(tree, 1, [], a[:32])
    store(tree, 1, a[:32], b[32:])
    assert tree.match(b) == [32, 64]
    assert tree.match(a) == [64, 32]
    assert tree.num_nodes() == 3
    # An event whose tokens end in a partial page keeps its whole pages only.
    c = list(range(900, 940))  # 2.5 pages
    tree.apply_stored(0, chain(c, 16) + [77], None, c)
    assert tree.match(c) == [32, 0]


def test_page_size_16_with_sglang_hashes():
    """SGLang's own chained SHA-256 page hashes, truncated to int64."""
    tree = GlobalTree(1, page_size=16)
    system = list(range(64))
    turn = list(range(7000, 7032))
    sys_hex = get_hash_str(system, None, page_size=16)
    turn_hex = get_hash_str(turn, sys_hex[-1], page_size=16)
    tree.apply_stored(0, [hash_str_to_int64(h) for h in sys_hex], None, system)
    tree.apply_stored(0, [hash_str_to_int64(h) for h in turn_hex], hash_str_to_int64(sys_hex[-1]), turn)
    assert tree.match(system + turn + [1, 2, 3]) == [96]
    tree.apply_removed(0, [hash_str_to_int64(h) for h in turn_hex])
    assert tree.match(system + turn) == [64]


# ------------------------------------------------------------- uncertain marking


def test_uncertain_marking():
    tree = GlobalTree(3)
    assert tree.uncertain_mask == 0 and not tree.is_uncertain(1)
    tree.mark_uncertain(1)
    tree.mark_uncertain(2)
    assert tree.is_uncertain(1) and tree.is_uncertain(2) and not tree.is_uncertain(0)
    assert tree.uncertain_mask == 0b110
    tree.mark_uncertain(1, False)
    assert not tree.is_uncertain(1) and tree.uncertain_mask == 0b100
    tree.mark_uncertain(1, False)  # idempotent
    assert tree.uncertain_mask == 0b100


def test_invalid_sizes_rejected():
    with pytest.raises(ValueError):
        GlobalTree(0)
    with pytest.raises(ValueError):
        GlobalTree(1, page_size=0)


# ------------------------------------------------------------- approximate mode


def test_approximate_insert_and_lru_eviction():
    tree = GlobalTree(2, page_size=1)
    tree.insert_approximate(0, [1, 2, 3], capacity_tokens=6)
    tree.insert_approximate(0, [4, 5, 6], capacity_tokens=6)
    tree.touch_approximate(0, [1, 2, 3])  # now [4, 5, 6] is the oldest
    tree.insert_approximate(0, [7, 8], capacity_tokens=6)
    assert tree.match([1, 2, 3]) == [3, 0]
    assert tree.match([4, 5, 6]) == [0, 0]
    assert tree.match([7, 8]) == [2, 0]
    assert tree.tokens_held(0) == 5


def test_approximate_deep_chain_respects_capacity():
    """Regression: a chat that grows turn by turn makes a deep chain of nodes; eviction
    used to give up after one pass over the LRU and leave the worker over capacity."""
    tree = GlobalTree(1, page_size=1)
    ids: list[int] = []
    for turn in range(12):
        ids = ids + [turn]
        tree.insert_approximate(0, ids, capacity_tokens=1000)
    assert tree.num_nodes() == 12
    tree.insert_approximate(0, [99], capacity_tokens=1)
    assert tree.tokens_held(0) == 1 and tree.match([99]) == [1]
    assert tree.num_nodes() == 1


def test_approximate_evicts_when_nothing_is_inserted():
    """Regression: a prompt shorter than one page skipped the capacity check."""
    tree = GlobalTree(1, page_size=2)
    tree.insert_approximate(0, [1, 2, 3, 4], capacity_tokens=4)
    tree.insert_approximate(0, [9], capacity_tokens=0)
    assert tree.tokens_held(0) == 0 and tree.num_nodes() == 0


def test_approximate_never_evicts_an_inner_node_first():
    tree = GlobalTree(1, page_size=1)
    tree.insert_approximate(0, [1, 2], capacity_tokens=100)
    tree.insert_approximate(0, [1, 2, 3, 4], capacity_tokens=100)
    tree.insert_approximate(0, [1, 2, 5], capacity_tokens=100)
    tree.touch_approximate(0, [1, 2, 3, 4])
    tree.insert_approximate(0, [6], capacity_tokens=5)  # 6 tokens held: one leaf goes
    assert tree.match([1, 2, 5]) == [2]  # the oldest leaf went, its parent stayed
    assert tree.match([1, 2, 3, 4]) == [4]


@pytest.mark.parametrize("workers", [3, 17, 64, 130, 300])
def test_match_at_many_workers(workers):
    """Worker w holds the first w % 7 pages of a chain (both spreading paths of `match`)."""
    page = 2
    tree = GlobalTree(workers, page_size=page)
    chain_tokens = list(range(100, 114))  # 7 pages
    for w in range(workers):
        depth = w % 7
        if depth:
            tree.apply_stored(w, chain(chain_tokens[: depth * page], page), None, chain_tokens[: depth * page])
    expected = [(w % 7) * page for w in range(workers)]
    assert tree.match(chain_tokens + [1, 2, 3]) == expected
    assert tree.match(chain_tokens[:5]) == [min(e, 4) for e in expected]
    assert tree.match([5, 5]) == [0] * workers
    tree.mark_uncertain(workers - 1)
    assert tree.match(chain_tokens) == expected  # uncertainty is the host's call


def test_page_by_page_stores_do_not_fragment_the_tree():
    """Decode pages arrive one per event; the mirror keeps one node per run of pages
    with the same holders instead of one node per event."""
    tree = GlobalTree(2, page_size=2)
    tokens = list(range(40))
    hashes = chain(tokens, 2)
    for worker in (0, 1):
        parent = None
        for j, h in enumerate(hashes):
            tree.apply_stored(worker, [h], parent, tokens[2 * j : 2 * j + 2])
            parent = h
        assert tree.num_nodes() == 1
    assert tree.match(tokens) == [40, 40]


def test_removal_merges_what_a_split_separated():
    tree = GlobalTree(2, page_size=1)
    store(tree, 0, [], [1, 2, 3, 4])
    c = store(tree, 1, [1, 2], [9, 9])
    store(tree, 1, [], [1, 2])
    assert tree.num_nodes() == 3
    tree.apply_removed(1, c)
    assert tree.num_nodes() == 2  # [1, 2] held by both, [3, 4] by worker 0 only
    tree.apply_cleared(1)
    assert tree.num_nodes() == 1 and tree.match([1, 2, 3, 4]) == [4, 0]


@pytest.mark.parametrize("page", [1, 16])
def test_divergence_at_every_position_of_a_long_node(page):
    """The galloping search on long nodes finds the exact page-aligned divergence."""
    tokens = list(range(1000, 1000 + 150 * page))
    tree = GlobalTree(1, page_size=page)
    tree.apply_stored(0, chain(tokens, page), None, tokens)
    for k in range(0, len(tokens), 7 if page == 1 else 5):
        probe = tokens[:k] + [0] + tokens[k + 1 :]
        assert tree.match(probe) == [k - k % page]
        assert tree.match(tokens[:k]) == [k - k % page]
    assert tree.match(tokens + [5]) == [len(tokens)]
