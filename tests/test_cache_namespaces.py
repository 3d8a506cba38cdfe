"""Cache namespaces (cache salt, LoRA, extra key): pages of one are never credited to another.

What SGLang 0.5.23 keeps apart and what its KV events say about it: `core/namespaces.py`.
The last tests run SGLang's own radix tree standalone (CPU, no model) and check that the
router never credits a request with more than SGLang's tree would give it.
"""

from __future__ import annotations

import msgspec
import pytest

from factories import make_request
from sglang_ext.core.events import EventApplier
from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.namespaces import UNCREDITED, CacheNamespace, event_namespace, request_namespace
from sglang_ext.core.policies import PolicyConfig
from sglang_ext.core.policies.base import Policy
from sglang_ext.core.router import Router, RouterConfig

PREFIX = list(range(100, 164))


def stored(hashes, parent, tokens, **extra) -> dict:
    return {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent, "token_ids": tokens,
            "block_size": 1, "lora_id": None, "medium": "GPU", **extra}


def payload(*events) -> bytes:
    return msgspec.msgpack.encode([0.0, list(events), 0])


class Fixed(Policy):
    name = "fixed"

    def __init__(self, config, choice: int = 0):
        super().__init__(config)
        self.choice = choice

    def choose(self, request, view):
        return self.choice


def exact_router(choice: int = 0) -> tuple[Router, EventApplier]:
    config = RouterConfig(policy="round_robin", num_workers=2, kv_capacity_tokens=10_000, exact_mirror=True)
    router = Router(config, Fixed(PolicyConfig(2), choice))
    return router, EventApplier(router.tree, replay_available=False)


def request(rid: str, namespace: CacheNamespace | None, tokens=PREFIX, tail: int = 8):
    req = make_request(prompt_tokens=len(tokens) + tail, prefix=tokens, rid=rid)
    req.namespace = namespace
    return req


# ------------------------------------------------------------ request fields


def test_the_namespace_is_formed_as_sglangs_scheduler_forms_it():
    assert request_namespace() is None
    assert request_namespace(extra_key="", cache_salt="", lora_id="") is None  # empty counts as unset
    assert request_namespace(cache_salt="A") == CacheNamespace(None, "A")
    # Req.__init__: extra_key = (extra_key or "") + lora_id
    assert request_namespace(extra_key="k", lora_id="L1", lora_name="ad") == CacheNamespace("kL1", None, "ad")
    assert request_namespace(lora_id="L1").full_key == ("L1", None)
    with pytest.raises(TypeError, match="cache_salt must be a string"):
        request_namespace(cache_salt=7)


def test_what_the_events_can_identify():
    assert CacheNamespace(None, "A").event_key == ("salt", "A") == event_namespace(None, "A")
    assert event_namespace(None, None) is None and event_namespace("ad", "A") == ("lora", "ad", "A")
    # LoRA pages are named by adapter, not by load; a bare extra key not at all.
    assert CacheNamespace("L1", None, "ad").event_key is UNCREDITED
    assert CacheNamespace("k", "A").event_key is UNCREDITED
    assert CacheNamespace("k", "A").collapses_into == ("salt", "A")  # its pages look like salt A's
    assert CacheNamespace("L1", None, "ad").collapses_into is UNCREDITED  # told apart by lora_name


# ------------------------------------------------------------ the mirror


def test_a_namespace_matches_only_its_own_pages_and_shares_the_workers_count():
    tree = GlobalTree(2)
    tree.apply_stored(0, [1, 2, 3], None, [5, 6, 7])
    tree.apply_stored(1, [11, 12, 13], None, [5, 6, 7], namespace=("salt", "A"))
    assert tree.match([5, 6, 7, 8]) == [3, 0]
    assert tree.match([5, 6, 7, 8], namespace=("salt", "A")) == [0, 3]
    assert tree.match_packed(bytes(16), floor=[1, 2], namespace=("salt", "B")) == [1, 2]
    tree.apply_stored(1, [14], 13, [8])  # the parent's namespace carries on
    assert tree.match([5, 6, 7, 8], namespace=("salt", "A")) == [0, 4]
    assert [tree.tokens_held(w) for w in (0, 1)] == [3, 4]
    assert tree.namespaces() == [("salt", "A")] and tree.num_nodes() == 2


def test_an_emptied_namespace_leaves_no_root_behind():
    tree = GlobalTree(2)
    for i in range(50):
        tree.apply_stored(0, [1000 + i], None, [7], namespace=("salt", str(i)))
    tree.apply_removed(0, [1000 + i for i in range(25)])
    assert len(tree.namespaces()) == 25
    tree.apply_cleared(0)
    assert tree.namespaces() == [] and tree.num_nodes() == 0 and tree.tokens_held(0) == 0


def test_approximate_inserts_keep_namespaces_apart_and_evict_across_them():
    tree = GlobalTree(1)
    tree.insert_approximate(0, [1, 2, 3, 4], capacity_tokens=6, namespace=("k", None))
    tree.insert_approximate(0, [1, 2, 3, 4], capacity_tokens=6)
    assert tree.match([1, 2, 3, 4]) == [4] and tree.match([1, 2, 3, 4], namespace=("k", None)) == [0]
    assert tree.tokens_held(0) == 4  # one pool: the older namespace's prompt was evicted


def test_the_applier_files_salted_and_named_lora_pages_under_their_namespace():
    tree = GlobalTree(1)
    applier = EventApplier(tree, replay_available=False)
    applier.on_live(0, 0, payload(stored([1, 2], None, [5, 6]),
                                  stored([3, 4], None, [5, 6], cache_salt="A"),
                                  stored([7, 8], None, [5, 6], lora_name="ad")), now_s=0.0)
    assert tree.match([5, 6]) == [2]
    assert tree.match([5, 6], namespace=("salt", "A")) == [2]
    assert tree.match([5, 6], namespace=("lora", "ad", None)) == [2]
    applier.on_live(0, 1, payload({"type": "BlockRemoved", "block_hashes": [3, 4], "medium": "GPU"}), now_s=0.1)
    assert tree.match([5, 6], namespace=("salt", "A")) == [0] and tree.match([5, 6]) == [2]
    applier.on_live(0, 2, payload(stored([9], None, [5], cache_salt=["not", "hashable"])), now_s=0.2)
    assert applier.stats.malformed == 1  # a bad event is skipped, not the batch


# ------------------------------------------------------------ the router


def test_a_salted_request_is_credited_only_with_its_own_salts_pages():
    router, applier = exact_router()
    hashes = list(range(1, len(PREFIX) + 1))
    applier.on_live(0, 0, payload(stored(hashes, None, PREFIX, cache_salt="B")), now_s=0.0)
    assert router.cached_tokens(request("a", request_namespace(cache_salt="A"))) == [0, 0]
    assert router.cached_tokens(request("p", None)) == [0, 0]
    assert router.cached_tokens(request("b", request_namespace(cache_salt="B"))) == [len(PREFIX), 0]


def test_requests_whose_pages_the_events_cannot_name_are_never_credited_from_the_mirror():
    router, applier = exact_router()
    applier.on_live(0, 0, payload(stored(list(range(1, 65)), None, PREFIX),
                                  stored(list(range(101, 165)), None, PREFIX, lora_name="ad")), now_s=0.0)
    lora = request_namespace(lora_id="L1", lora_name="ad")
    keyed = request_namespace(extra_key="tenant-7")
    assert router.cached_tokens(request("l", lora)) == [0, 0]
    assert router.cached_tokens(request("k", keyed)) == [0, 0]
    assert router.cached_tokens(request("p", None)) == [len(PREFIX), 0]


def test_a_plain_match_within_an_extra_key_prompt_is_not_trusted_but_one_beyond_it_is():
    """An extra-key request's pages arrive as plain pages (same tokens and hashes): a plain
    match that ends within that request's prompt may be entirely its pages."""
    router, applier = exact_router(choice=0)
    router.route(request("k", request_namespace(extra_key="tenant-7"), tail=0), now_s=0.0)
    hashes = list(range(1, len(PREFIX) + 1))
    applier.on_live(0, 0, payload(stored(hashes, None, PREFIX)), now_s=0.1)  # could be its pages
    assert router.cached_tokens(request("p", None)) == [0, 0]
    # A plain request stored more under that prefix: its last page is no extra-key
    # request's, so the whole path is plain (SGLang stores under its own namespace only).
    applier.on_live(0, 1, payload(stored([900, 901], hashes[-1], [7, 8])), now_s=0.2)
    assert router.cached_tokens(request("p2", None, tokens=PREFIX + [7, 8])) == [len(PREFIX) + 2, 0]
    assert router.snapshot()["tree"]["ambiguous_tokens"] == [len(PREFIX), 0]


def test_in_flight_prompts_of_another_namespace_are_not_credited():
    router, _ = exact_router(choice=1)
    router.route(request("a", request_namespace(cache_salt="A")), now_s=0.0)
    assert router.cached_tokens(request("b", request_namespace(cache_salt="B"))) == [0, 0]
    assert router.cached_tokens(request("p", None)) == [0, 0]
    assert router.cached_tokens(request("a2", request_namespace(cache_salt="A"))) == [0, len(PREFIX) + 8]  # same prompt


def test_approximate_mode_keeps_every_namespace_apart_exactly():
    config = RouterConfig(policy="round_robin", num_workers=2, kv_capacity_tokens=10_000)
    router = Router(config, Fixed(PolicyConfig(2), 0))
    keyed = request_namespace(extra_key="tenant-7")
    router.route(request("k", keyed), now_s=0.0)
    router.finished("k", 1, now_s=0.1)  # only the approximate mirror holds it now
    assert router.cached_tokens(request("p", None)) == [0, 0]
    assert router.cached_tokens(request("k2", keyed))[0] >= len(PREFIX)


def test_a_follower_of_another_namespace_is_not_held_for_a_leaders_prefill():
    config = RouterConfig(policy="prefix_length_aware", num_workers=2, kv_capacity_tokens=100_000,
                          exact_mirror=True)
    router = Router(config)
    long_prefix = list(range(100, 400))
    router.route(request("lead", request_namespace(cache_salt="A"), tokens=long_prefix), now_s=0.0)
    other = router.route(request("other", request_namespace(cache_salt="B"), tokens=long_prefix), now_s=0.0)
    same = router.route(request("same", request_namespace(cache_salt="A"), tokens=long_prefix), now_s=0.0)
    assert not other.held and other.cached_tokens == [0, 0]
    assert same.held


# ------------------------------------------------- against SGLang's own radix tree


@pytest.fixture(scope="module")
def sglang_tree():
    pytest.importorskip("sglang")
    from cluster.radix import SimRadixCache

    return SimRadixCache


def test_the_router_never_credits_more_than_sglangs_own_tree(sglang_tree):
    """Two workers' real radix trees (SGLang 0.5.23, Rust core), prompts stored under the
    plain namespace, two salts and a bare extra key; their real events feed the mirror.
    For every namespace and prompt, the router's credit is at most SGLang's own match,
    and equal to it where the events identify the namespace."""
    from array import array

    from sglang.srt.mem_cache.base_prefix_cache import InsertParams, MatchPrefixParams
    from sglang.srt.mem_cache.radix_cache import RadixKey

    page = 4
    config = RouterConfig(policy="round_robin", num_workers=2, page_size=page, kv_capacity_tokens=10_000,
                          exact_mirror=True)
    router = Router(config, Fixed(PolicyConfig(2), 0))
    applier = EventApplier(router.tree, replay_available=False)
    caches = [sglang_tree(rank, page, 10_000) for rank in range(2)]
    namespaces = [None, request_namespace(cache_salt="A"), request_namespace(cache_salt="B"),
                  request_namespace(extra_key="tenant-7")]
    shared = list(range(100, 132))
    stores = [(0, 0, shared + [1, 2, 3, 4]), (0, 1, shared + [5, 6, 7, 8]), (1, 2, shared),
              (1, 3, shared + [9, 9, 9, 9]), (0, 3, shared[:16])]
    seq = [0, 0]
    for worker, ns_index, tokens in stores:
        ns = namespaces[ns_index]
        if ns is not None and ns.collapses_into is not UNCREDITED:
            # The controller routes such a request and so records its prompt.
            router.record_dispatch(request(f"d{worker}{ns_index}", ns, tokens=tokens, tail=0), worker, 0, 0.0)
            router.finished(f"d{worker}{ns_index}", 1, 0.0)
        cache = caches[worker]
        cache.pool.try_alloc(len(tokens))
        key = RadixKey(array("q", tokens), extra_key=None if ns is None else ns.extra_key,
                       cache_salt=None if ns is None else ns.cache_salt)
        cache.tree.insert(InsertParams(key=key, value=cache.pool.fresh_ids(len(tokens))))
        for data in cache.take_event_payloads(0.0):
            applier.on_live(worker, seq[worker], data, now_s=0.0)
            seq[worker] += 1
    probes = [shared + [1, 2, 3, 4, 0], shared + [5, 6, 7, 8, 0], shared + [9, 9, 9, 9], shared[:20]]
    exact_checked = 0
    for ns in namespaces:
        for probe in probes:
            credit = router.cached_tokens(request("probe", ns, tokens=probe, tail=0))
            truth = [caches[w].tree.match_prefix(MatchPrefixParams(key=RadixKey(
                array("q", probe), extra_key=None if ns is None else ns.extra_key,
                cache_salt=None if ns is None else ns.cache_salt))).device_prefix_len for w in range(2)]
            assert all(c <= t for c, t in zip(credit, truth)), (ns, probe, credit, truth)
            if ns is not None and ns.event_key is not UNCREDITED:
                assert credit == truth, (ns, probe, credit, truth)
                exact_checked += 1
    assert exact_checked == 8
