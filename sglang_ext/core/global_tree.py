"""One radix tree over token ids that mirrors every worker's RadixAttention cache.

Design note (the invariants first; `tests/test_global_tree_properties.py` checks them
against a brute-force model on SGLang-shaped event streams in any interleaving):
- A node is a run of whole pages (`page_size` tokens each) with the page hashes SGLang
  published for them, and a bitmask `holders` of the workers that hold *every* page of
  the node. Storing or removing part of a node for some worker splits the node first,
  so the invariant always holds.
- Tokens are kept packed (`token_bytes`: native uint32, a `bytearray` per node), so a
  prompt is compared with a node by one memcmp, and a cached token costs 4 bytes.
- `children` is keyed by the first page's packed bytes.
- `_by_hash` maps each page hash to the one node that contains it, and holds exactly
  the pages in the tree; a page is found in its node by checking the last page first
  (chains grow and leaves go at the end), else `node.hashes.index(h)`.
- `_tokens_held[w]` counts the tokens worker `w` holds. Holds are prefix-closed (SGLang
  evicts leaves first, and a worker stores a page only under its own parent page), so
  clearing a worker walks down from the root through its own nodes only, never the
  whole tree; should holds not be prefix-closed (events lost before a resync), the
  count left over shows it and a whole-tree pass finishes the job (`clear_full_scans`).
- A node with no holders and no children is deleted at once: evicted pages leave the
  tree, so memory is bounded by what the workers really cache (all clear: empty tree).
- Exact mode only: a node and its only child with the same holders are merged (see
  `_merge_around`), so page-by-page stores and split-then-evict cycles do not fragment
  the tree and a match walks few nodes whatever the event history.

- `held_changed` is a bitmask of the workers whose `_tokens_held` changed since the host
  last took it (`take_held_changed`), so the router re-derives per-worker KV figures for
  those workers only.

Cost: `match` walks the prompt node by node; per node, one C call reads the prompt's
ints in place (a list, or SGLang's `array('q')` through the buffer protocol) against the
node's packed tokens up to the first difference (the only per-token step: about 1 ns per
token with the compiled helper, see `token_bytes`), and the per-worker result is spread
in C too: O(prompt tokens + workers) at C speed plus O(nodes on the path) Python steps.
`match_packed` does the same on a prompt packed once by the host (a memcmp per node,
~0.1 ns per token), which is how the router matches one prompt against two trees; an
approximate insert of the prompt just matched starts from where that match stopped
(`_insert_walked`), so it adds the new part without comparing the prompt again.
Applying an event costs O(pages in the event) at C speed plus a constant number of
splits and merges, none of them per holder (exact mode).

Two modes share the structure: *exact* (fed by SGLang's KV events, see `kv_events.py`)
and *approximate* (`insert_approximate` on dispatch, per-worker LRU eviction bounded by
the worker's KV capacity, leaves first) for servers that publish no events. Approximate
mode uses a logical access order, never a wall clock, so the simulator can host it
unchanged. A tree is used in one mode: approximate nodes carry no hashes (`hashes` is
None, not a list of Nones: with page size 1 that list cost 8 bytes per token, 12 us to
make for an 8K-token node, and every garbage collection walked it).
Namespaces: SGLang keeps a request's cache entries apart by namespace (cache salt,
LoRA, a caller's extra key; see `namespaces.py`), so equal tokens under another namespace
are a miss. Each namespace has its own root here (`namespace=None` is the plain one, the
root `self.root`; others are made on their first store or insert and dropped when they
empty), while a worker's token count and LRU span all of them, since all its namespaces
share its KV pool. Page hashes are unique across namespaces where SGLang makes them so
(it seeds a namespace's hash chain by it), so one hash index serves all roots.
Limitation: within one namespace key, pages with equal tokens under another hash (two
loads of one LoRA adapter name) share the first one's node; their removals are not
found (ignored) and stores under their hashes count as skipped.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from itertools import repeat

from .token_bytes import TOKEN_BYTES, common_prefix, pack, packed_common_prefix, spread, unpack


class _Node:
    __slots__ = ("tokens", "hashes", "parent", "children", "holders")

    def __init__(self, tokens: bytearray, hashes: list[int] | None, parent: _Node | None):
        self.tokens = tokens
        self.hashes = hashes
        self.parent = parent
        self.children: dict = {}
        self.holders = 0


class _Root(_Node):
    """The root of a namespace other than the plain one (see module docs)."""

    __slots__ = ("namespace",)

    def __init__(self, namespace):
        super().__init__(bytearray(), [], None)
        self.namespace = namespace


class GlobalTree:
    """The cluster-wide prefix mirror. Not thread-safe: one owner thread applies events."""

    def __init__(self, num_workers: int, page_size: int = 1):
        if num_workers < 1 or page_size < 1:
            raise ValueError("num_workers and page_size must be positive")
        self.num_workers = num_workers
        self.page_size = page_size
        self.root = _Node(bytearray(), [], None)
        self._roots: dict[object, _Root] = {}  # namespace -> root, the plain one aside
        self._all_workers = (1 << num_workers) - 1
        self._page_bytes = page_size * TOKEN_BYTES
        self._by_hash: dict[int, _Node] = {}
        self._tokens_held = [0] * num_workers
        # Workers whose `tokens_held` changed since the host last took the mask
        # (`take_held_changed`): the router refreshes only their KV figures per decision.
        self.held_changed = 0
        # Workers whose mirror may be missing events (a sequence gap); see `mark_uncertain`.
        self.uncertain_mask = 0
        # Approximate mode only: per-worker LRU of held nodes, oldest first.
        self._lru: list[OrderedDict[_Node, None]] = [OrderedDict() for _ in range(num_workers)]
        self.skipped_pages = 0  # pages of events that could not be mirrored (see docs)
        # The last `match_packed` walk, for an insert of the same prompt (`_insert_walked`);
        # every method that changes the tree's nodes forgets it first.
        self._walk: tuple | None = None
        self.clear_full_scans = 0  # clears that found holds not prefix-closed (see docs)

    # ------------------------------------------------------------------ queries

    def match(self, input_ids: Sequence[int], namespace=None) -> list[int]:
        """Tokens of `input_ids`' longest cached prefix on each worker (page-aligned),
        within `namespace` (None: the plain one).

        One walk down the tree: a worker leaves the walk at the first node it does not
        hold, so it matched everything before that node (a holder holds all of a node).
        """
        # Read as given: a list, or SGLang's array('q') through the buffer protocol
        # (`token_bytes`); a copy into a list cost more than the whole match.
        ids = input_ids
        page = self.page_size
        alive = self._all_workers  # workers that hold every node walked so far
        node = self.root if namespace is None else self._roots.get(namespace)
        if node is None:
            return [0] * self.num_workers
        pos, last = 0, len(ids) - page
        levels: list[tuple[int, int]] = []  # (workers that stopped, tokens they matched)
        while alive and pos <= last:
            child = node.children.get(pack(ids, pos, pos + page))
            if child is None:
                break
            length = len(child.tokens) // TOKEN_BYTES
            common = common_prefix(ids, pos, child.tokens)
            common -= common % page
            still = alive & child.holders
            if still != alive:
                levels.append((alive ^ still, pos))
                alive = still
            pos += common
            if common < length:
                break
            node = child
        levels.append((alive, pos))
        return spread(levels, self.num_workers)

    def match_packed(self, data: bytes | bytearray, floor: list[int] | None = None,
                     namespace=None) -> list[int]:
        """`match` on a prompt already packed (`token_bytes.pack`): the host packs a
        request once and matches it against several trees (the mirror, the in-flight
        union) with memcmp, instead of reading the ids once per tree. With `floor` (one
        int per worker), item w is the larger of the match and floor[w]: the union of two
        trees' matches in one C pass."""
        page, tb = self.page_size, TOKEN_BYTES
        pb = self._page_bytes
        alive = self._all_workers
        root = node = self.root if namespace is None else self._roots.get(namespace)
        if node is None:
            self._walk = None
            return list(floor) if floor is not None else [0] * self.num_workers
        pos, last = 0, len(data) // tb - page
        levels: list[tuple[int, int]] = []
        partial = None
        while alive and pos <= last:
            child = node.children.get(data[pos * tb : pos * tb + pb])
            if child is None:
                break
            length = len(child.tokens) // tb
            common = packed_common_prefix(data, pos, child.tokens)
            common -= common % page
            still = alive & child.holders
            if still != alive:
                levels.append((alive ^ still, pos))
                alive = still
            pos += common
            if common < length:
                partial = (child, common)
                break
            node = child
        levels.append((alive, pos))
        # A walk that no worker stopped short of ran to where an insert of this prompt
        # would branch off: the host inserts the prompt it just matched (approximate
        # mirror, in-flight union), which then need not compare it again (a second walk
        # cost as much as the match: 8K tokens of memcmp and a Python step per node).
        self._walk = (data, root, node, pos, partial) if alive and type(data) is bytes else None
        return spread(levels, self.num_workers, floor)

    def tokens_held(self, worker: int) -> int:
        return self._tokens_held[worker]

    def take_held_changed(self) -> int:
        """The bitmask of workers whose `tokens_held` changed since the last call; resets it."""
        mask, self.held_changed = self.held_changed, 0
        return mask

    def node_token_ids(self, node: _Node) -> list[int]:
        """A node's tokens as ids (for tests and debugging)."""
        return unpack(node.tokens)

    def num_nodes(self) -> int:
        return sum(1 for _ in self._iter_nodes()) - 1 - len(self._roots)

    def namespaces(self) -> list:
        """The namespaces that hold pages now, besides the plain one."""
        return list(self._roots)

    def num_pages_indexed(self) -> int:
        return len(self._by_hash)

    def is_uncertain(self, worker: int) -> bool:
        return bool(self.uncertain_mask >> worker & 1)

    # ------------------------------------------------------------ exact mode (events)

    def apply_stored(self, worker: int, block_hashes: Sequence[int], parent_hash: int | None,
                     token_ids: Sequence[int], namespace=None) -> None:
        """A `BlockStored` event: `worker` now holds these pages after `parent_hash`
        (or, with no parent, at the start of `namespace`; a parent's pages carry theirs)."""
        self._walk = None
        page = self.page_size
        data = pack(token_ids)  # TypeError / OverflowError on ids that are not token ids
        if len(token_ids) != len(block_hashes) * page:
            # A partial trailing page is never matched by page-aligned lookups; keep the
            # whole pages only.
            whole = min(len(block_hashes), len(token_ids) // page)
            block_hashes, data = block_hashes[:whole], data[: whole * self._page_bytes]
            if not block_hashes:
                return
        if parent_hash is None:
            node = self._root_for(namespace)
        else:
            node = self._by_hash.get(parent_hash)
            if node is None:
                # The parent was never stored or already evicted: nothing to attach to.
                self.skipped_pages += len(block_hashes)
                return
            if node.hashes[-1] == parent_hash and not node.children and node.holders == 1 << worker:
                # The usual store: a worker extends a chain only it holds (a growing
                # conversation, decode pages). Append in place.
                node.tokens += data
                node.hashes += block_hashes
                by_hash = self._by_hash
                for h in block_hashes:
                    by_hash[h] = node
                self._tokens_held[worker] += len(block_hashes) * page
                self.held_changed |= 1 << worker
                return
            cut = self._page_index(node, parent_hash) + 1
            if cut < len(node.hashes):
                node, _ = self._split(node, cut)
        self._insert_under(node, worker, data, list(block_hashes), merge=True)

    def apply_removed(self, worker: int, block_hashes: Sequence[int]) -> None:
        """A `BlockRemoved` event: `worker` no longer holds these pages.

        SGLang coalesces consecutive removals, so one event may span several radix nodes
        of the worker, in any order; each maximal run of hashes that continues inside one
        mirror node is released at once.
        """
        self._walk = None
        hashes = block_hashes if isinstance(block_hashes, list) else list(block_hashes)
        by_hash, bit = self._by_hash, 1 << worker
        i, n = 0, len(hashes)
        while i < n:
            node = by_hash.get(hashes[i])
            if node is None:  # never mirrored (skipped) or already gone
                i += 1
                continue
            node_hashes = node.hashes
            start = self._page_index(node, hashes[i])
            run = min(len(node_hashes) - start, n - i)
            if node_hashes[start : start + run] != hashes[i : i + run]:
                run = self._common_run(node_hashes, start, hashes, i, run)
            if node.holders == bit and start > 0 and start + run == len(node_hashes) and not node.children:
                # The usual eviction: the end of a leaf only this worker holds. Cut it
                # off in place (no split, no new node).
                del node.tokens[start * self._page_bytes :]
                for h in node_hashes[start:]:
                    by_hash.pop(h, None)
                del node_hashes[start:]
                self._tokens_held[worker] -= run * self.page_size
                self.held_changed |= 1 << worker
            elif node.holders & bit:
                # Splitting a node the worker does not hold would only fragment the
                # tree, so only held runs are cut out.
                if start > 0:
                    _, node = self._split(node, start)
                if run < len(node.hashes):
                    node, _ = self._split(node, run)
                self._merge_around(self._release(node, worker))
            i += run

    def apply_cleared(self, worker: int) -> None:
        """An `AllBlocksCleared` event (or a resync): forget everything `worker` holds."""
        self._walk = None
        exact = not self._lru[worker]
        bit = 1 << worker
        self._release_all(worker, self._held_subtree(bit), exact)
        if self._tokens_held[worker]:
            # Holds were not prefix-closed (a worker's events were lost): find the rest.
            self.clear_full_scans += 1
            self._release_all(worker, [n for n in self._iter_nodes() if n.holders & bit], exact)
        self._lru[worker].clear()

    def _held_subtree(self, bit: int) -> list[_Node]:
        """The nodes held by worker `bit` that hang from the root through held nodes,
        parents before children (cost: those nodes and their children)."""
        out, stack = [], [self.root, *self._roots.values()]
        while stack:
            node = stack.pop()
            for child in node.children.values():
                if child.holders & bit:
                    out.append(child)
                    stack.append(child)
        return out

    def _release_all(self, worker: int, nodes: list[_Node], exact: bool) -> None:
        for node in reversed(nodes):  # children first, so unheld leaves prune upwards
            if node.parent is None:
                continue  # pruned, or absorbed into its parent by an earlier merge
            survivor = self._release(node, worker)
            if exact:
                self._merge_around(survivor)

    def mark_uncertain(self, worker: int, uncertain: bool = True) -> None:
        """Flag a worker whose event stream had a gap; hosts should not trust its matches."""
        bit = 1 << worker
        self.uncertain_mask = (self.uncertain_mask | bit) if uncertain else (self.uncertain_mask & ~bit)

    # --------------------------------------------------------- approximate mode

    def insert_approximate(self, worker: int, input_ids: Sequence[int], capacity_tokens: int,
                           namespace=None) -> None:
        """Record that `worker` will cache `input_ids` (page-aligned) in `namespace`, then
        evict LRU nodes of that worker (any namespace) until it holds at most
        `capacity_tokens`."""
        self.insert_approximate_packed(worker, pack(input_ids), capacity_tokens, namespace)

    def insert_approximate_packed(self, worker: int, data: bytes, capacity_tokens: int,
                                  namespace=None) -> None:
        """`insert_approximate` of a prompt already packed (`token_bytes.pack`). Right
        after `match_packed` of the same `data` object, the match's walk is reused."""
        walk, self._walk = self._walk, None
        pages = len(data) // self._page_bytes
        if pages:
            root = self._root_for(namespace)
            if walk is not None and walk[0] is data and walk[1] is root:
                path = self._insert_walked(worker, data, walk)
            else:
                if len(data) != pages * self._page_bytes:
                    data = data[: pages * self._page_bytes]  # page-aligned part only
                path = self._insert_under(root, worker, data, None)
            self._touch(worker, path)
        # Evict even when nothing was inserted: the capacity may have shrunk.
        self._evict_lru(worker, capacity_tokens)

    def touch_approximate(self, worker: int, input_ids: Sequence[int], namespace=None) -> None:
        """Mark the cached part of `input_ids` on `worker` as recently used."""
        self._touch(worker, self._path_nodes(input_ids, 1 << worker, namespace))

    # ------------------------------------------------------------------ helpers

    def _root_for(self, namespace) -> _Node:
        """The root of `namespace`, made on first use."""
        if namespace is None:
            return self.root
        root = self._roots.get(namespace)
        if root is None:
            try:
                root = self._roots[namespace] = _Root(namespace)
            except TypeError:  # an unhashable key is a host bug; say which
                raise TypeError(f"cache namespace {namespace!r} is not hashable") from None
        return root

    def _key(self, data: bytes | bytearray, pos: int) -> bytes:
        """The child key of packed tokens at byte `pos`: its page's bytes."""
        return bytes(data[pos : pos + self._page_bytes])

    @staticmethod
    def _common_run(a: list, i: int, b: list, j: int, hi: int) -> int:
        """Length of the longest common run of a[i:] and b[j:], at most `hi` (binary
        search over slice equality: O(log hi) Python steps)."""
        lo = 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if a[i : i + mid] == b[j : j + mid]:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _split(self, node: _Node, pages: int) -> tuple[_Node, _Node]:
        """Split `node` after `pages` pages; returns (head, tail), one of them `node`.

        The smaller part moves to a new node, so a split costs O(smaller part) in hash
        re-indexing: extending, replicating or evicting a long chain page by page
        splits it near one end every time, and must not cost O(chain) per page.
        """
        cut = pages * self._page_bytes
        hashes = node.hashes  # None in approximate mode
        if cut * 2 <= len(node.tokens):
            # New head above `node`; `node` keeps its children and becomes the tail.
            parent = node.parent
            new = head = _Node(node.tokens[:cut], None if hashes is None else hashes[:pages], parent)
            parent.children[self._key(node.tokens, 0)] = head
            del node.tokens[:cut]  # a C memmove, no per-item work
            if hashes is not None:
                del hashes[:pages]
            head.children = {self._key(node.tokens, 0): node}
            node.parent = head
            tail = node
        else:
            new = tail = _Node(node.tokens[cut:], None if hashes is None else hashes[pages:], node)
            tail.children = node.children
            for child in tail.children.values():
                child.parent = tail
            del node.tokens[cut:]
            if hashes is not None:
                del hashes[pages:]
            node.children = {self._key(tail.tokens, 0): tail}
            head = node
        new.holders = node.holders
        if hashes is not None:
            self._index(new)
        else:
            # Approximate mode: the new part enters each holder's LRU as most recent. A
            # new head is then more recent than its tail, as `_touch` keeps ancestors; a
            # new tail is not, which `_evict_lru` tolerates.
            holders = new.holders
            while holders:
                low = holders & -holders
                self._lru[low.bit_length() - 1][new] = None
                holders ^= low
        return head, tail

    def _hold(self, node: _Node, worker: int) -> None:
        bit = 1 << worker
        if not node.holders & bit:
            node.holders |= bit
            self._tokens_held[worker] += len(node.tokens) // TOKEN_BYTES
            self.held_changed |= 1 << worker

    @staticmethod
    def _page_index(node: _Node, page_hash: int) -> int:
        """Position of a page in its node; the last page first, the usual case (a chain
        extended page by page, a leaf evicted), so long nodes are not scanned."""
        hashes = node.hashes
        return len(hashes) - 1 if hashes[-1] == page_hash else hashes.index(page_hash)

    def _index(self, node: _Node) -> None:
        """Point `_by_hash` at `node` for each of its pages (C-speed; approximate-mode
        nodes carry none)."""
        if node.hashes:
            self._by_hash.update(zip(node.hashes, repeat(node)))

    def _release(self, node: _Node, worker: int) -> _Node:
        """Drop `worker` from `node`, prune what is left unheld; returns the node or,
        when it was pruned, its nearest surviving ancestor."""
        bit = 1 << worker
        if node.holders & bit:
            node.holders &= ~bit
            self._lru[worker].pop(node, None)
            self._tokens_held[worker] -= len(node.tokens) // TOKEN_BYTES
            self.held_changed |= 1 << worker
        return self._prune(node)

    def _prune(self, node: _Node) -> _Node:
        """Delete `node` and then its ancestors while they are unheld leaves; returns
        the first node kept."""
        by_hash = self._by_hash
        while node.parent is not None and not node.holders and not node.children:
            parent = node.parent
            del parent.children[self._key(node.tokens, 0)]
            if node.hashes:
                # Each page hash lives in exactly one node (the tests check it).
                for h in node.hashes:
                    by_hash.pop(h, None)
            node.parent = None
            node = parent
        if node.parent is None and not node.children and node is not self.root:
            self._roots.pop(node.namespace, None)  # an emptied namespace goes too
        return node

    def _merge_around(self, node: _Node) -> None:
        """Undo fragmentation next to a node whose holders or children just changed.

        A node and its only child with the same holders are one run of pages to every
        worker, so they become one node again: `match` then walks fewer nodes and the
        tree does not fragment over time. Exact mode only: approximate mode keeps its
        nodes as the workers' radix caches do, since it evicts whole nodes.
        """
        if node.parent is None:  # a root
            return
        if len(node.children) == 1:
            child = next(iter(node.children.values()))
            if child.holders == node.holders:
                node = self._absorb(node, child)
        parent = node.parent
        if parent.parent is not None and len(parent.children) == 1 and parent.holders == node.holders:
            self._absorb(parent, node)

    def _absorb(self, node: _Node, child: _Node) -> _Node:
        """Join `node` and its only child (same holders) into one node; returns it.

        The part with more pages survives, so only the smaller part's pages are
        re-indexed: a chain released or replicated page by page merges a one-page node
        into a long one every time, and must not cost O(chain) per page.
        """
        exact = node.hashes is not None  # approximate trees merge too, after a clear
        if len(child.tokens) > len(node.tokens):
            child.tokens[:0] = node.tokens  # one C memmove
            if exact:
                child.hashes[:0] = node.hashes
            parent = child.parent = node.parent
            parent.children[self._key(child.tokens, 0)] = child
            gone, survivor = node, child
        else:
            node.tokens += child.tokens
            if exact:
                node.hashes += child.hashes
            node.children = child.children
            for grandchild in node.children.values():
                grandchild.parent = node
            gone, survivor = child, node
        if gone.hashes:
            self._by_hash.update(zip(gone.hashes, repeat(survivor)))
        gone.parent, gone.children = None, {}
        return survivor

    def _insert_under(self, node: _Node, worker: int, data: bytes,
                      hashes: list[int] | None, merge: bool = False) -> list[_Node]:
        """Make `worker` hold the packed tokens `data` below `node`, sharing existing
        nodes; returns the nodes of the path that now hold them (`merge`: exact mode, see
        `_merge_around`; the path is then not meaningful). `hashes`: one per page, or None
        in approximate mode (nodes then carry none)."""
        pb, pos, path = self._page_bytes, 0, []
        while pos < len(data):
            key = self._key(data, pos)
            child = node.children.get(key)
            if child is None:
                if (merge and node.parent is not None and not node.children
                        and node.holders == 1 << worker):
                    # The worker extends a chain only it holds (a growing conversation,
                    # decode pages): append in place instead of adding a node.
                    node.tokens += data[pos:]
                    node.hashes += hashes[pos // pb :]
                    self._by_hash.update(zip(hashes[pos // pb :], repeat(node)))
                    self._tokens_held[worker] += (len(data) - pos) // TOKEN_BYTES
                    self.held_changed |= 1 << worker
                    break
                path.append(self._new_leaf(node, worker, data, pos, len(data), hashes))
                break
            length = len(child.tokens)
            # Compared in place (a slice would copy up to the whole node: 32 KB for an
            # 8K-token prompt, twice per dispatch), in bytes, page-aligned.
            common = packed_common_prefix(data, pos // TOKEN_BYTES, child.tokens) * TOKEN_BYTES
            common -= common % pb
            if common < length:
                if common == 0:
                    # Same first page key but a different page: cannot happen for
                    # page-aligned keys; guard against malformed input anyway.
                    self.skipped_pages += (len(data) - pos) // pb
                    break
                child, _ = self._split(child, common // pb)
            # Equal tokens under another hash in the same namespace key (two loads of
            # one LoRA name) share the node: matching is by tokens; removals by the
            # other hash are not found and are ignored (see module docs).
            holders = child.holders
            self._hold(child, worker)
            if merge and child.holders != holders:
                parent = child.parent
                if parent.parent is not None and len(parent.children) == 1 and parent.holders == child.holders:
                    child = self._absorb(parent, child)  # the walk goes on from the merged node
            path.append(child)
            pos += common
            node = child
        return path

    def _new_leaf(self, node: _Node, worker: int, data: bytes, pos: int, end: int,
                  hashes: list[int] | None) -> _Node:
        """A new child of `node` holding packed `data[pos:end]` (bytes, page-aligned) for
        `worker`; `hashes`: one per page of the whole `data`, or None in approximate mode
        (the new node then has none)."""
        new_hashes = None if hashes is None else (hashes[pos // self._page_bytes :] if pos else hashes)
        child = _Node(bytearray(data[pos:end]), new_hashes, node)
        node.children[self._key(data, pos)] = child
        self._index(child)
        self._hold(child, worker)
        return child

    def _insert_walked(self, worker: int, data: bytes, walk: tuple) -> list[_Node]:
        """`_insert_under(root, worker, data, None)` from the walk `match_packed` just made
        of the same `data` (approximate mode): the same holds, split and new node, without
        comparing the prompt with the path again. The walk stopped at `node` (every node
        from the root down to it matched whole) at token `pos`, either where `node` has no
        child for the next page, or inside `partial` = (child, matched tokens)."""
        _, root, node, pos, partial = walk
        path, bit, added = [], 1 << worker, 0
        up = node
        while up is not root:  # `_hold` of each node on the path, inlined (hot: ~4 nodes)
            path.append(up)
            if not up.holders & bit:
                up.holders |= bit
                added += len(up.tokens)
            up = up.parent
        if added:
            self._tokens_held[worker] += added // TOKEN_BYTES
            self.held_changed |= bit
        path.reverse()
        if partial is not None:
            # Page-aligned and at least one page (the child's key is its first page, equal
            # to the prompt's), short of the whole child: split there, as `_insert_under`.
            child, common = partial
            node, _ = self._split(child, common // self.page_size)
            self._hold(node, worker)
            path.append(node)
        start, end = pos * TOKEN_BYTES, len(data) - len(data) % self._page_bytes
        if start < end:  # the rest of the prompt: no child of `node` begins with its page
            path.append(self._new_leaf(node, worker, data, start, end, None))
        return path

    def _path_nodes(self, input_ids: Sequence[int], mask: int, namespace=None) -> list[_Node]:
        ids = pack(input_ids)
        node = self.root if namespace is None else self._roots.get(namespace)
        pos, out = 0, []
        if node is None:
            return out
        while len(ids) - pos >= self._page_bytes:
            child = node.children.get(self._key(ids, pos))
            if child is None or not child.holders & mask:
                break
            length = len(child.tokens)
            if ids[pos : pos + length] != child.tokens:
                out.append(child)
                break
            out.append(child)
            pos += length
            node = child
        return out

    def _touch(self, worker: int, path: list[_Node]) -> None:
        """Make the nodes of a root-first `path` the most recently used of `worker`.

        They are moved deepest first, so an ancestor always ends up more recent than its
        descendants; the oldest node of a worker is then one of its leaves (splits may
        break this locally, which `_evict_lru` tolerates).
        """
        lru = self._lru[worker]
        for node in reversed(path):
            lru[node] = None
            lru.move_to_end(node)

    def _evict_lru(self, worker: int, capacity_tokens: int) -> None:
        """Release `worker`'s least recently used leaves until it fits `capacity_tokens`.

        Like SGLang's radix cache, only leaves (of this worker's part of the tree) go:
        when the oldest node still has a held child, a held leaf below it goes instead.
        Every step releases one node, so the loop ends and the capacity always holds.
        """
        lru, bit = self._lru[worker], 1 << worker
        while self._tokens_held[worker] > capacity_tokens and lru:
            node = next(iter(lru))
            while True:
                below = next((c for c in node.children.values() if c.holders & bit), None)
                if below is None:
                    break
                node = below
            self._release(node, worker)

    def _iter_nodes(self):
        stack = [self.root, *self._roots.values()]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())
