"""`cluster/radix.py`: SGLang's own radix tree standalone, its KV pool and its event payloads."""

from __future__ import annotations

from array import array

import msgspec
import numpy as np
import pytest

from cluster.radix import SimRadixCache
from sglang_ext.core.events import EventApplier
from sglang_ext.core.global_tree import GlobalTree


def ids(*runs: range) -> array:
    out = array("q")
    for r in runs:
        out.extend(r)
    return out


def finish(cache: SimRadixCache, tokens: array, prefix: int = 0, lock=None) -> int:
    """What a worker does at finish: own the uncached slots, insert, unlock."""
    page = cache.page_size
    owned = -(-len(tokens) // page) * page - prefix
    assert cache.alloc(owned)
    adopted = cache.insert_finished(tokens, len(tokens), prefix, owned)
    if lock is not None:
        cache.unlock(lock)
    return adopted


def conserved(cache: SimRadixCache) -> bool:
    return cache.pool.free + cache.total_size() == cache.pool.capacity


def test_match_is_page_aligned_and_insert_keeps_only_whole_pages():
    cache = SimRadixCache(0, page_size=16, kv_capacity_tokens=1000)
    assert finish(cache, ids(range(40))) == 32          # 40 tokens: two whole pages kept
    assert cache.total_size() == 32 and conserved(cache)
    assert cache.match(ids(range(40))).cached_tokens == 32
    assert cache.match(ids(range(31))).cached_tokens == 16
    assert cache.match(ids(range(40)), limit=20).cached_tokens == 16
    assert cache.match(ids(range(1, 40))).cached_tokens == 0


def test_a_duplicate_insert_hands_its_slots_back_and_a_locked_prefix_is_not_freed_twice():
    cache = SimRadixCache(0, page_size=4, kv_capacity_tokens=100)
    finish(cache, ids(range(8)))
    finish(cache, ids(range(8)))                         # another request computed the same pages
    assert cache.total_size() == 8 and cache.pool.free == 92
    match = cache.match(ids(range(8), range(50, 55)))
    lock = cache.lock(match.node)
    assert (match.cached_tokens, cache.protected_size(), cache.evictable_size()) == (8, 8, 0)
    finish(cache, ids(range(8), range(50, 55)), prefix=8, lock=lock)
    assert cache.total_size() == 12 and cache.protected_size() == 0 and conserved(cache)


def test_allocation_fails_without_room_and_evicts_only_the_shortfall_lru_first():
    cache = SimRadixCache(0, page_size=16, kv_capacity_tokens=64)
    for start in (0, 1000, 2000):                        # three one-page leaves, oldest first
        finish(cache, ids(range(start, start + 16)))
    assert cache.pool.free == 16
    assert cache.alloc(30)                               # 14 short: one leaf goes, the oldest
    assert cache.total_size() == 32 and cache.pool.free == 2
    assert cache.match(ids(range(16))).cached_tokens == 0
    assert cache.match(ids(range(1000, 1016))).cached_tokens == 16
    locks = [cache.lock(cache.match(ids(range(s, s + 16))).node) for s in (1000, 2000)]
    assert not cache.alloc(10)                           # everything left is locked
    assert cache.total_size() == 32 and cache.pool.free == 2
    for lock in locks:
        cache.unlock(lock)
    assert cache.alloc(10) and cache.total_size() == 16


def test_payload_is_sglangs_kv_event_batch_with_simulated_time_and_rank():
    from sglang.srt.disaggregation.kv_events import KVEventBatch

    cache = SimRadixCache(3, page_size=4, kv_capacity_tokens=100)
    finish(cache, ids(range(8)))
    [payload] = cache.take_event_payloads(12.5)
    ts, events, rank = msgspec.msgpack.decode(payload)
    assert (ts, rank) == (12.5, 3)
    assert [e["type"] for e in events] == ["AllBlocksCleared", "BlockStored"]
    assert events[1]["token_ids"] == list(range(8)) and events[1]["block_size"] == 4
    typed = msgspec.msgpack.Decoder(KVEventBatch).decode(payload)
    assert typed.ts == 12.5 and len(typed.events[1].block_hashes) == 2
    assert cache.take_event_payloads(13.0) == []         # nothing new: nothing published
    cache.evict(100)
    [payload] = cache.take_event_payloads(14.0)
    assert [e["type"] for e in msgspec.msgpack.decode(payload)[1]] == ["BlockRemoved"]


@pytest.mark.parametrize("page_size", [1, 16])
def test_event_payloads_rebuild_the_cache_exactly_in_the_global_tree(page_size):
    rng = np.random.default_rng(page_size)
    cache = SimRadixCache(0, page_size=page_size, kv_capacity_tokens=6000)
    tree = GlobalTree(num_workers=1, page_size=page_size)
    applier = EventApplier(tree, replay_available=False)
    seq = 0
    prefixes = [rng.integers(0, 500, int(rng.integers(20, 200))).tolist() for _ in range(6)]
    prompts: list[array] = []
    locks = []
    evicted = 0
    for step in range(300):
        prompt = array("q", prefixes[int(rng.integers(6))] + rng.integers(0, 500, int(rng.integers(1, 120))).tolist())
        prompts.append(prompt)
        match = cache.match(prompt)
        lock = cache.lock(match.node)
        owned = -(-len(prompt) // page_size) * page_size - match.cached_tokens
        if not cache.alloc(owned):
            cache.unlock(lock)
            continue
        cache.insert_finished(prompt, len(prompt), match.cached_tokens, owned)
        if rng.random() < 0.2:
            locks.append(lock)                           # stays locked a while: not evictable
        else:
            cache.unlock(lock)
        if len(locks) > 4:
            cache.unlock(locks.pop(0))
        if rng.random() < 0.1:
            evicted += cache.evict(int(rng.integers(50, 800)))
        assert conserved(cache)
        if step % 7 == 0:                                # batches of several operations
            for payload in cache.take_event_payloads(float(step)):
                applier.on_live(0, seq, payload, float(step))
                seq += 1
    for payload in cache.take_event_payloads(999.0):
        applier.on_live(0, seq, payload, 999.0)
        seq += 1
    assert evicted > 0 and applier.stats.removed_pages > 0 and applier.stats.gaps == 0
    assert tree.tokens_held(0) == cache.total_size() > 0
    probes = prompts + [p[: len(p) // 2] for p in prompts]
    mismatches = [p for p in probes if tree.match(p)[0] != cache.match(p).cached_tokens]
    assert not mismatches and sum(cache.match(p).cached_tokens > 0 for p in probes) > 50


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(ValueError, match="KV capacity must be a positive"):
        SimRadixCache(0, page_size=16, kv_capacity_tokens=0)
    with pytest.raises(ValueError, match="page_size must be positive"):
        SimRadixCache(0, page_size=0, kv_capacity_tokens=10)
