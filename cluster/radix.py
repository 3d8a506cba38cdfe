"""A simulated worker's prefix cache: SGLang's own production radix tree, run standalone.

The tree is SGLang 0.5.23's `UnifiedRadixCache` with its Rust core, the tree dense
models get in production (`sglang/srt/mem_cache/registry.py`, `unified_cache/`). It
needs no GPU, model or request pool: only an allocator with `device` and
`free_segment(indices, start_pos=0)` (the tree hands back the slots of evicted nodes
and of duplicates it did not adopt). Built as recorded in the project's design brief
(section 7.2, checked on SGLang 0.5.23): `CacheInitParams(disable=False,
req_to_token_pool=None, token_to_kv_pool_allocator=fake, page_size=P,
enable_kv_cache_events=True, tree_components=(ComponentType.FULL,),
tree_core_backend="rust")`. Its `take_events()` gives the very `BlockStored` /
`BlockRemoved` / `AllBlocksCleared` records a real scheduler publishes. Its LRU order
comes from an access counter inside the Rust core (the binary names
`get_and_batch_bump_access_counter`), not a host clock, so runs are deterministic; the
worker's determinism test checks that.

`KVPool` stands in for the token-to-KV allocator: a fixed number of slots, counted,
not indexed (the tree needs slot ids only to hand them back; we give it fresh unique
ids). Allocation fails when free slots < need; like SGLang (`mem_cache/allocator/
base.py`, `evict_to_free_tokens` before an allocation) the caller evicts only the
shortfall first, lazily.

Slot accounting invariant (checked by the worker's tests):
    pool.free + tree size (evictable + protected) + slots owned by running requests
    == capacity.
A running request owns the slots of its uncached part; its cached prefix belongs to
the tree, locked while the request runs.
"""

from __future__ import annotations

import logging
import warnings
from array import array
from dataclasses import dataclass

import msgspec

logger = logging.getLogger(__name__)

with warnings.catch_warnings():
    # Importing SGLang's tree pulls in quantization modules that warn about CUDA.
    warnings.simplefilter("ignore")
    import torch
    from sglang.srt.disaggregation.kv_events import KVEventBatch
    from sglang.srt.mem_cache.base_prefix_cache import EvictParams, InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.radix_cache import RadixKey
    from sglang.srt.mem_cache.unified_cache.component_type import ComponentType
    from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache


ID_BLOCK_TOKENS = 1 << 20  # slot ids made at a time (8 MiB)


class KVPool:
    """A fixed number of KV slots, counted. Also the tree's allocator: `free_segment`
    is the only method the tree calls (with `device`), to return slots it frees."""

    device = "cpu"

    def __init__(self, capacity_tokens: int):
        if capacity_tokens < 1:
            raise ValueError(f"KV capacity must be a positive number of tokens, got {capacity_tokens}")
        self.capacity = capacity_tokens
        self.free = capacity_tokens
        self._next_id = 0
        self._id_block = torch.empty(0, dtype=torch.int64)
        self._id_block_start = 0

    def try_alloc(self, tokens: int) -> bool:
        if tokens > self.free:
            return False
        self.free -= tokens
        return True

    def release(self, tokens: int) -> None:
        self.free += tokens
        if self.free > self.capacity:
            raise AssertionError(f"KV pool over-freed: {self.free} free of {self.capacity}")

    def free_segment(self, indices, start_pos: int = 0) -> None:
        # `start_pos` is the segment's place in the request's KV row (SGLang's
        # `allocator/base.py`): every index passed is freed.
        self.release(len(indices))

    def fresh_ids(self, tokens: int):
        """Unique slot ids for tokens the tree may adopt (it only hands them back).

        Views into a preallocated block of consecutive ids: building a fresh tensor per
        insert (`torch.arange`) cost ~36 us, a slice ~1 us (profiled in the simulator)."""
        start = self._next_id
        self._next_id += tokens
        offset = start - self._id_block_start
        if offset + tokens > len(self._id_block):
            self._id_block_start, offset = start, 0
            self._id_block = torch.arange(start, start + max(tokens, ID_BLOCK_TOKENS), dtype=torch.int64)
        return self._id_block[offset: offset + tokens]


@dataclass(frozen=True, slots=True)
class Match:
    cached_tokens: int  # page-aligned
    node: int  # the tree's node id to lock


class SimRadixCache:
    """What `SimWorker` needs of SGLang's tree, plus its KV pool and event payloads."""

    def __init__(self, rank: int, page_size: int, kv_capacity_tokens: int):
        if page_size < 1:
            raise ValueError(f"page_size must be positive, got {page_size}")
        self.rank = rank
        self.page_size = page_size
        self.pool = KVPool(kv_capacity_tokens)
        params = CacheInitParams(
            disable=False, req_to_token_pool=None, token_to_kv_pool_allocator=self.pool,
            page_size=page_size, enable_kv_cache_events=True,
            tree_components=(ComponentType.FULL,), tree_core_backend="rust",
        )
        self.tree = UnifiedRadixCache(params)
        self._encoder = msgspec.msgpack.Encoder()

    # ---- queries

    def match(self, token_ids: array, limit: int | None = None) -> Match:
        """Longest cached prefix of `token_ids[:limit]` (page-aligned by the tree)."""
        key = token_ids if limit is None or limit >= len(token_ids) else token_ids[:limit]
        result = self.tree.match_prefix(MatchPrefixParams(key=RadixKey(key)))
        return Match(result.device_prefix_len, result.last_device_node)

    def evictable_size(self) -> int:
        return self.tree.evictable_size()

    def protected_size(self) -> int:
        return self.tree.protected_size()

    def total_size(self) -> int:
        return self.tree.evictable_size() + self.tree.protected_size()

    # ---- locks

    def lock(self, node: int):
        return self.tree.lock(node)

    def unlock(self, lock) -> None:
        self.tree.unlock(lock)

    # ---- KV slots

    def alloc(self, tokens: int) -> bool:
        """Take `tokens` slots, evicting only the shortfall first (SGLang's lazy rule,
        `mem_cache/allocator/base.py` `evict_to_free_tokens`). False: it does not fit
        even after evicting every unlocked leaf."""
        if tokens > self.pool.free:
            self.evict(tokens - self.pool.free)
        return self.pool.try_alloc(tokens)

    def ensure_free(self, tokens: int) -> bool:
        """Evict the shortfall so `tokens` slots are free; whether they are."""
        if tokens > self.pool.free:
            self.evict(tokens - self.pool.free)
        return tokens <= self.pool.free

    def release(self, tokens: int) -> None:
        self.pool.release(tokens)

    def evict(self, tokens: int) -> int:
        """LRU-evict at least `tokens` unlocked tokens (whole leaves) if there are."""
        if tokens <= 0:
            return 0
        return self.tree.evict(EvictParams(num_tokens=tokens)).num_tokens_evicted

    # ---- insertion at finish

    def insert_finished(self, token_ids: array, kv_tokens: int, locked_prefix: int, owned_slots: int) -> int:
        """Insert a finished request's first `kv_tokens` tokens, page-aligned down, as
        SGLang does at finish (`unified_radix_cache.py`, `checkpoint_into_tree`:
        `radix_key.page_aligned(page_size)`, `prev_prefix_len` = the locked prefix).

        The request owned `owned_slots` slots beyond its `locked_prefix`: the tree
        adopts the new pages, hands duplicated ones back through `free_segment`, and
        the unaligned tail (plus any page slack) is released here. The caller unlocks
        the prefix afterwards. Returns the tokens the tree newly holds."""
        aligned = kv_tokens - kv_tokens % self.page_size
        if aligned <= locked_prefix:
            self.pool.release(owned_slots)
            return 0
        key = token_ids[:aligned] if aligned < len(token_ids) else token_ids
        result = self.tree.insert(InsertParams(key=RadixKey(key), value=self.pool.fresh_ids(aligned),
                                               prev_prefix_len=locked_prefix))
        new_prefix = max(result.prefix_len, locked_prefix)
        adopted = aligned - new_prefix
        duplicated = new_prefix - locked_prefix  # freed by the tree via free_segment
        self.pool.release(owned_slots - adopted - duplicated)
        return adopted

    def insert_partial(self, token_ids: array, kv_tokens: int, locked_prefix: int) -> tuple[int, int | None]:
        """Checkpoint an unfinished (chunked) request: insert its first `kv_tokens`
        tokens, page-aligned down (`checkpoint_into_tree`). Returns the aligned length
        now in the tree and the node to move the request's lock to (None: nothing new).
        The request's slots in [locked_prefix, aligned) pass to the tree (adopted, or
        handed back as duplicates); the caller stops counting them as owned."""
        aligned = kv_tokens - kv_tokens % self.page_size
        if aligned <= locked_prefix:
            return locked_prefix, None
        key = token_ids[:aligned] if aligned < len(token_ids) else token_ids
        result = self.tree.insert(InsertParams(key=RadixKey(key), value=self.pool.fresh_ids(aligned),
                                               prev_prefix_len=locked_prefix))
        return aligned, result.last_device_node

    # ---- events

    def take_event_payloads(self, ts_s: float) -> list[bytes]:
        """The tree's pending events as SGLang's scheduler publishes them: one msgpack
        `KVEventBatch` `[ts, events, attn_dp_rank]` (`scheduler_components/
        kv_events_publisher.py` `publish_kv_events`; the ZMQ publisher fills in the
        rank, `disaggregation/kv_events.py`), `ts` in simulated seconds. Empty list
        when nothing happened, as SGLang publishes nothing then."""
        events = self.tree.take_events()
        if not events:
            return []
        return [self._encoder.encode(KVEventBatch(ts=ts_s, events=events, attn_dp_rank=self.rank))]
