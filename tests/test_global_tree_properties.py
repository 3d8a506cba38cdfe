"""Property-based tests of the global radix mirror (`sglang_ext.core.global_tree`).

The event streams are realistic: each worker is a small simulated SGLang radix cache
(`_SimWorker`) that inserts prompts, splits nodes silently, evicts least-recently-used
leaves and is sometimes flushed, and that publishes `BlockStored` / `BlockRemoved` /
`AllBlocksCleared` the way SGLang 0.5.23 does (one store per new radix node with its
parent's last page hash, one removal per evicted node, consecutive events coalesced as
`KVCacheEventRecorder.enqueue` does, page hashes chained with SGLang's own hash).

The streams are then interleaved across workers in an arbitrary order, optionally
re-chunked (coalesced, per node, or per page) and reordered within a worker where the
order does not matter (removals commute; a store commutes with what it does not depend
on). The mirror must equal a brute-force reference model: per worker, the set of token
paths of the pages it holds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sglang.srt.mem_cache.utils import get_hash_str, hash_str_to_int64

from sglang_ext.core.global_tree import GlobalTree

# Stable in CI: derandomized, no deadline (the 2-core machine is shared), few examples.
PROPS = settings(max_examples=int(__import__("os").environ.get("GT_EXAMPLES", 60)), derandomize=True, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# ---------------------------------------------------------------- SGLang-like events


@dataclass
class Stored:
    worker: int
    hashes: list[int]
    parent: int | None
    tokens: list[int]


@dataclass
class Removed:
    worker: int
    hashes: list[int]


@dataclass
class Cleared:
    worker: int


Event = Stored | Removed | Cleared


def page_hashes(tokens: list[int], parent_hex: str | None, page_size: int) -> list[str]:
    """SGLang's chained SHA-256 page hashes (hex) for whole pages of `tokens`."""
    return get_hash_str(tokens, parent_hex, page_size=page_size)


class _SimNode:
    __slots__ = ("tokens", "hexes", "children", "parent", "stamp")

    def __init__(self, tokens, hexes, parent, stamp):
        self.tokens, self.hexes, self.parent, self.stamp = tokens, hexes, parent, stamp
        self.children: dict[tuple, _SimNode] = {}


class _SimWorker:
    """A miniature SGLang `RadixCache` that only tracks keys and publishes events.

    Mirrors the event behaviour of `radix_cache.py`: `_split_node` publishes nothing (the
    hash list is split), a new node publishes one store whose parent is the last page
    hash of its parent node, `evict` pops the oldest leaf (logical stamps, no clock) and
    publishes its hashes, `reset` publishes `AllBlocksCleared`.
    """

    def __init__(self, worker: int, page_size: int, capacity_pages: int):
        self.worker, self.page, self.capacity = worker, page_size, capacity_pages
        self.root = _SimNode([], [], None, 0)
        self.pages = 0
        self.clock = 0
        self.out: list[Event] = []

    def _key(self, tokens, pos):
        return tuple(tokens[pos : pos + self.page])

    def insert(self, tokens: list[int]) -> None:
        self.clock += 1
        tokens = tokens[: len(tokens) // self.page * self.page]
        node, pos = self.root, 0
        while pos < len(tokens):
            child = node.children.get(self._key(tokens, pos))
            if child is None:
                break
            common = 0
            while (common < len(child.tokens) and pos + common < len(tokens)
                   and child.tokens[common] == tokens[pos + common]):
                common += 1
            common -= common % self.page
            if common < len(child.tokens):  # split, silently (as SGLang does)
                cut = common // self.page
                head = _SimNode(child.tokens[:common], child.hexes[:cut], node, child.stamp)
                node.children[self._key(tokens, pos)] = head
                child.tokens, child.hexes, child.parent = child.tokens[common:], child.hexes[cut:], head
                head.children[self._key(child.tokens, 0)] = child
                child = head
            child.stamp = self.clock
            node, pos = child, pos + common
        if pos < len(tokens):
            rest = tokens[pos:]
            parent_hex = node.hexes[-1] if node is not self.root else None
            hexes = page_hashes(rest, parent_hex, self.page)
            new = _SimNode(rest, hexes, node, self.clock)
            node.children[self._key(rest, 0)] = new
            self.pages += len(hexes)
            self._emit(Stored(self.worker, [hash_str_to_int64(h) for h in hexes],
                              hash_str_to_int64(parent_hex) if parent_hex else None, list(rest)))
        self.evict_to(self.capacity)

    def evict_to(self, capacity_pages: int) -> None:
        while self.pages > capacity_pages:
            leaves = [n for n in self._nodes() if not n.children]
            leaf = min(leaves, key=lambda n: n.stamp)
            del leaf.parent.children[self._key(leaf.tokens, 0)]
            self.pages -= len(leaf.hexes)
            self._emit(Removed(self.worker, [hash_str_to_int64(h) for h in leaf.hexes]))

    def reset(self) -> None:
        self.root = _SimNode([], [], None, 0)
        self.pages = 0
        self._emit(Cleared(self.worker))

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _emit(self, event: Event) -> None:
        # `KVCacheEventRecorder.enqueue`: removals always coalesce with a removal tail; a
        # store coalesces when its parent is the tail store's last page.
        tail = self.out[-1] if self.out else None
        if isinstance(tail, Removed) and isinstance(event, Removed):
            tail.hashes.extend(event.hashes)
        elif (isinstance(tail, Stored) and isinstance(event, Stored)
              and event.parent == tail.hashes[-1]):
            tail.hashes.extend(event.hashes)
            tail.tokens.extend(event.tokens)
        else:
            self.out.append(event)


# ------------------------------------------------------------------ stream shaping


def rechunk(events: list[Event], page: int, mode: str, rng: random.Random) -> list[Event]:
    """Deliver the same changes in other event boundaries: 'as_is', 'per_page' (what
    `record_store` emits before coalescing) or 'random' cuts."""
    if mode == "as_is":
        return events
    out: list[Event] = []
    for ev in events:
        if isinstance(ev, Cleared) or len(ev.hashes) == 1:
            out.append(ev)
            continue
        n = len(ev.hashes)
        cuts = list(range(1, n)) if mode == "per_page" else sorted(rng.sample(range(1, n), rng.randint(0, n - 1)))
        bounds = [0, *cuts, n]
        for a, b in zip(bounds, bounds[1:]):
            if isinstance(ev, Removed):
                out.append(Removed(ev.worker, ev.hashes[a:b]))
            else:
                parent = ev.parent if a == 0 else ev.hashes[a - 1]
                out.append(Stored(ev.worker, ev.hashes[a:b], parent, ev.tokens[a * page : b * page]))
    return out


def _commute(a: Event, b: Event) -> bool:
    """Whether two events of one worker may be applied in either order."""
    if isinstance(a, Cleared) or isinstance(b, Cleared):
        return False
    if isinstance(a, Removed) and isinstance(b, Removed):
        return True  # removal is a set difference
    ha, hb = set(a.hashes), set(b.hashes)
    if ha & hb:
        return False
    for x, other in ((a, hb), (b, ha)):
        if isinstance(x, Stored) and x.parent in other:
            return False
    return True


def shuffle_within(events: list[Event], rng: random.Random, swaps: int) -> list[Event]:
    """Random adjacent swaps of commuting events, and shuffled hashes inside removals."""
    events = list(events)
    for _ in range(swaps):
        if len(events) < 2:
            break
        i = rng.randrange(len(events) - 1)
        if _commute(events[i], events[i + 1]):
            events[i], events[i + 1] = events[i + 1], events[i]
    out = []
    for ev in events:
        if isinstance(ev, Removed):
            hashes = list(ev.hashes)
            rng.shuffle(hashes)
            ev = Removed(ev.worker, hashes)
        out.append(ev)
    return out


def interleave(streams: list[list[Event]], rng: random.Random) -> list[Event]:
    """An arbitrary merge of per-worker streams that keeps each worker's own order."""
    slots = [w for w, s in enumerate(streams) for _ in s]
    rng.shuffle(slots)
    pos = [0] * len(streams)
    out = []
    for w in slots:
        out.append(streams[w][pos[w]])
        pos[w] += 1
    return out


# ----------------------------------------------------------------- reference model


class Reference:
    """Per worker, the set of token paths (whole prefixes) of the pages it holds."""

    def __init__(self, num_workers: int, page: int):
        self.page = page
        self.paths: dict[int, tuple[int, ...]] = {}  # page hash -> its token path
        self.held: list[dict[int, tuple[int, ...]]] = [{} for _ in range(num_workers)]

    def apply(self, ev: Event) -> None:
        if isinstance(ev, Cleared):
            self.held[ev.worker].clear()
        elif isinstance(ev, Removed):
            for h in ev.hashes:
                self.held[ev.worker].pop(h, None)
        else:
            prefix = () if ev.parent is None else self.paths[ev.parent]
            for j, h in enumerate(ev.hashes):
                prefix = prefix + tuple(ev.tokens[j * self.page : (j + 1) * self.page])
                self.paths[h] = prefix
                self.held[ev.worker][h] = prefix

    def path_sets(self) -> list[set[tuple[int, ...]]]:
        return [set(h.values()) for h in self.held]

    def match(self, probe: list[int]) -> list[int]:
        out = []
        for held in self.path_sets():
            k = 0
            while (k + 1) * self.page <= len(probe) and tuple(probe[: (k + 1) * self.page]) in held:
                k += 1
            out.append(k * self.page)
        return out


def tree_path_sets(tree: GlobalTree) -> list[set[tuple[int, ...]]]:
    """The per-worker page paths the mirror claims, read off its nodes."""
    out: list[set[tuple[int, ...]]] = [set() for _ in range(tree.num_workers)]
    stack = [(child, ()) for child in tree.root.children.values()]
    page = tree.page_size
    while stack:
        node, prefix = stack.pop()
        ids = tree.node_token_ids(node)
        paths = [prefix + tuple(ids[: (j + 1) * page]) for j in range(len(ids) // page)]
        for w in range(tree.num_workers):
            if node.holders >> w & 1:
                out[w].update(paths)
        full = prefix + tuple(ids)
        stack.extend((child, full) for child in node.children.values())
    return out


def check_invariants(tree: GlobalTree, approximate: bool = False) -> None:
    """Structural invariants of the mirror (see the module docs of global_tree)."""
    page, nw = tree.page_size, tree.num_workers
    held_nodes: list[set] = [set() for _ in range(nw)]
    tokens = [0] * nw
    hashes: dict[int, object] = {}
    stack = [tree.root]
    while stack:
        node = stack.pop()
        for key, child in node.children.items():
            assert child.parent is node
            ids = tree.node_token_ids(child)
            assert ids and len(ids) % page == 0
            # Exact nodes: one hash per page; approximate nodes carry none (not a list).
            assert child.hashes is None if approximate else len(child.hashes) == len(ids) // page
            assert key == tree._key(child.tokens, 0)
            # No dead node stays: an unheld node must lead to a held one.
            assert child.holders or child.children, "unheld leaf left in the tree"
            for w in range(nw):
                if child.holders >> w & 1:
                    held_nodes[w].add(child)
                    tokens[w] += len(ids)
            for h in child.hashes or ():
                assert h is not None
                assert h not in hashes, "a page hash in two nodes"
                hashes[h] = child
            stack.append(child)
    assert tree.root.holders == 0
    assert hashes.keys() == tree._by_hash.keys()
    assert all(tree._by_hash[h] is n for h, n in hashes.items())
    assert tree.num_pages_indexed() == len(hashes)
    for w in range(nw):
        assert tree.tokens_held(w) == tokens[w]
        if approximate:
            assert set(tree._lru[w]) == held_nodes[w]
            # Eviction is leaf-first: a held node's parent is held too (prefix closure).
            for node in held_nodes[w]:
                assert node.parent is tree.root or node.parent.holders >> w & 1


# ------------------------------------------------------------------ strategies


@st.composite
def workloads(draw):
    """Workers, page size, a segment vocabulary and per-worker operation lists.

    Prompts are concatenations of a few segments from a small shared vocabulary, so they
    share prefixes, diverge mid-node (splits) and mid-page (page alignment).
    """
    page = draw(st.sampled_from([1, 2, 4]))
    num_workers = draw(st.integers(1, 4))
    seg_lens = draw(st.lists(st.integers(1, 3 * page + 1), min_size=3, max_size=6))
    segments = [[100 * s + t for t in range(n)] for s, n in enumerate(seg_lens)]
    # Some segments start like another one, so prompts diverge inside pages and nodes.
    segments.append(segments[0][: max(1, seg_lens[0] // 2)] + [7, 8, 9])
    prompt = st.lists(st.integers(0, len(segments) - 1), min_size=1, max_size=4)
    op = st.one_of(
        st.tuples(st.just("insert"), st.integers(0, num_workers - 1), prompt),
        st.tuples(st.just("evict"), st.integers(0, num_workers - 1), st.integers(0, 6)),
        st.tuples(st.just("clear"), st.integers(0, num_workers - 1), st.just(0)),
    )
    ops = draw(st.lists(op, min_size=1, max_size=30))
    capacity = draw(st.integers(2, 12))
    return page, num_workers, segments, ops, capacity


def simulate(page, num_workers, segments, ops, capacity) -> list[list[Event]]:
    sims = [_SimWorker(w, page, capacity) for w in range(num_workers)]
    for kind, w, arg in ops:
        if kind == "insert":
            sims[w].insert([t for s in arg for t in segments[s]])
        elif kind == "evict":
            sims[w].evict_to(arg)
        else:
            sims[w].reset()
    return [s.out for s in sims]


def probes(segments, rng: random.Random, n: int = 12) -> list[list[int]]:
    out = []
    for _ in range(n):
        ids = [t for _ in range(rng.randint(1, 4)) for t in segments[rng.randrange(len(segments))]]
        out.append(ids[: rng.randint(0, len(ids))] if rng.random() < 0.3 else ids)
    return out


def apply(tree: GlobalTree, ev: Event) -> None:
    if isinstance(ev, Stored):
        tree.apply_stored(ev.worker, ev.hashes, ev.parent, ev.tokens)
    elif isinstance(ev, Removed):
        tree.apply_removed(ev.worker, ev.hashes)
    else:
        tree.apply_cleared(ev.worker)


# ------------------------------------------------------------------------ tests


@PROPS
@given(workloads(), st.sampled_from(["as_is", "per_page", "random"]), st.randoms(use_true_random=False))
def test_any_interleaving_gives_the_reference_mirror(workload, chunking, rng):
    page, num_workers, segments, ops, _ = workload
    streams = simulate(*workload)
    streams = [shuffle_within(rechunk(s, page, chunking, rng), rng, swaps=len(s)) for s in streams]
    events = interleave(streams, rng)
    tree, ref = GlobalTree(num_workers, page), Reference(num_workers, page)
    probe_set = probes(segments, rng)
    for ev in events:
        apply(tree, ev)
        ref.apply(ev)
        check_invariants(tree)
        # Each worker's own stream is in a valid order, so every intermediate state is
        # a real one: matches agree at every step, not only at the end.
        for probe in probe_set[:3]:
            assert tree.match(probe) == ref.match(probe)
    assert tree_path_sets(tree) == ref.path_sets()
    for probe in probe_set:
        assert tree.match(probe) == ref.match(probe), probe
    assert tree.skipped_pages == 0  # realistic streams never store under an unknown parent


@PROPS
@given(workloads(), st.randoms(use_true_random=False))
def test_interleavings_agree_with_each_other(workload, rng):
    """Two different interleavings of the same per-worker streams give equal mirrors."""
    page, num_workers, *_ = workload
    streams = simulate(*workload)
    trees = []
    for _ in range(2):
        tree = GlobalTree(num_workers, page)
        for ev in interleave(streams, rng):
            apply(tree, ev)
        trees.append(tree)
    assert tree_path_sets(trees[0]) == tree_path_sets(trees[1])
    assert [trees[0].tokens_held(w) for w in range(num_workers)] == \
        [trees[1].tokens_held(w) for w in range(num_workers)]


@PROPS
@given(workloads(), st.randoms(use_true_random=False))
def test_clearing_every_worker_empties_the_tree(workload, rng):
    page, num_workers, *_ = workload
    tree = GlobalTree(num_workers, page)
    for ev in interleave(simulate(*workload), rng):
        apply(tree, ev)
    for w in rng.sample(range(num_workers), num_workers):
        tree.apply_cleared(w)
        check_invariants(tree)
    assert tree.num_nodes() == 0 and not tree.root.children
    assert tree.num_pages_indexed() == 0
    assert all(tree.tokens_held(w) == 0 for w in range(num_workers))
    # Consistent streams keep holds prefix-closed: clears walk only the worker's nodes.
    assert tree.clear_full_scans == 0


@PROPS
@given(workloads(), st.randoms(use_true_random=False))
def test_evicting_everything_empties_the_tree(workload, rng):
    """Memory is bounded by what workers cache: removals alone also drain the tree."""
    page, num_workers, segments, ops, capacity = workload
    sims = [_SimWorker(w, page, capacity) for w in range(num_workers)]
    for kind, w, arg in ops:
        if kind == "insert":
            sims[w].insert([t for s in arg for t in segments[s]])
    for sim in sims:
        sim.evict_to(0)
    tree = GlobalTree(num_workers, page)
    for ev in interleave([s.out for s in sims], rng):
        apply(tree, ev)
    assert tree.num_nodes() == 0 and tree.num_pages_indexed() == 0


@st.composite
def approximate_workloads(draw):
    page = draw(st.sampled_from([1, 2, 4]))
    num_workers = draw(st.integers(1, 3))
    vocab = draw(st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=3 * page + 1),
                          min_size=2, max_size=5))
    prompt = st.lists(st.integers(0, len(vocab) - 1), min_size=1, max_size=5)
    op = st.one_of(
        st.tuples(st.just("insert"), st.integers(0, num_workers - 1), prompt, st.integers(0, 40)),
        # A chat turn: the worker's previous prompt plus more (deep chains of nodes).
        st.tuples(st.just("extend"), st.integers(0, num_workers - 1), prompt, st.integers(0, 40)),
        st.tuples(st.just("touch"), st.integers(0, num_workers - 1), prompt, st.just(0)),
        st.tuples(st.just("clear"), st.integers(0, num_workers - 1), st.just([]), st.just(0)),
    )
    return page, num_workers, vocab, draw(st.lists(op, min_size=1, max_size=40))


@PROPS
@given(approximate_workloads())
def test_approximate_mode_respects_capacity_and_evicts_leaves_only(workload):
    page, num_workers, vocab, ops = workload
    tree = GlobalTree(num_workers, page)
    last: list[list[int]] = [[] for _ in range(num_workers)]
    for kind, w, prompt, capacity in ops:
        ids = [t for s in prompt for t in vocab[s]]
        if kind == "extend":
            ids = last[w] + ids
        if kind in ("insert", "extend"):
            last[w] = ids
            tree.insert_approximate(w, ids, capacity)
            assert tree.tokens_held(w) <= capacity
            whole = len(ids) // page * page
            if whole <= capacity:
                # The prompt just inserted is the most recently used: it survives.
                assert tree.match(ids)[w] == whole
        elif kind == "touch":
            tree.touch_approximate(w, ids)
        else:
            tree.apply_cleared(w)
            assert tree.tokens_held(w) == 0
        check_invariants(tree, approximate=True)
    for w in range(num_workers):
        tree.apply_cleared(w)
    assert tree.num_nodes() == 0
