"""PREBLE's global token radix tree with per-GPU allocation info (helper of `preble`).

Design note (invariants first):
- Nodes are never deleted, as published: a node whose prefix left every GPU only loses
  its `cached` marks. The tree grows with the number of distinct prompts served; that
  is part of what the `preble` baseline costs.
- A node's `context_length` is the number of tokens from the root to its end, so the
  tokens before it (its ancestors together) are `context_length - len(tokens)`. A node
  is *important* ("large") when its own segment is longer than all its ancestors
  together: `2 * len(tokens) > context_length`.
- `ref_counter[g]` counts the in-flight requests on GPU `g` whose prompt passes through
  the node; `cached` is the set of GPUs that (by the scheduler's bookkeeping) hold it;
  `alloc` is PREBLE's `gpu_allocations[node]`, the GPUs the node is assigned to.
- Splitting a node keeps the existing object as the *tail* (the deeper part) and puts a
  new head above it with copies of the tail's per-GPU info, as PREBLE's `_split_node`
  does; so a request's leaf object keeps ending where its prompt ends.
- LRU order uses a logical access counter passed in, never a wall clock.

Children are keyed by their first token (a dict look-up and a slice compare per node),
where PREBLE's own code scans every child with a per-token Python loop: the decision
work this baseline is measured for is its cost model (O(tree nodes x GPUs)), not a slow
string match.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence


class PrebleNode:
    __slots__ = ("tokens", "parent", "children", "context_length", "ref_counter", "cached",
                 "alloc", "last_access", "decode_sum", "decode_count", "seq")

    def __init__(self, tokens: list[int], parent: PrebleNode | None, context_length: int,
                 num_gpus: int, seq: int):
        self.tokens = tokens
        self.parent = parent
        self.children: dict[int, PrebleNode] = {}
        self.context_length = context_length
        self.ref_counter = [0] * num_gpus
        self.cached: set[int] = set()
        self.alloc: set[int] = set()
        self.last_access = 0
        # Observed output lengths of finished requests under this node (PREBLE's
        # `decode_length` list, kept as a running sum).
        self.decode_sum = 0
        self.decode_count = 0
        self.seq = seq  # creation order: a deterministic tie-break for heaps

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def is_large(self) -> bool:
        """PREBLE's important node: own segment longer than all its ancestors together."""
        return 2 * len(self.tokens) > self.context_length

    def __lt__(self, other: PrebleNode) -> bool:  # heap order: least recently used first
        return (self.last_access, self.seq) < (other.last_access, other.seq)


class PrebleTree:
    """The global radix tree. Not thread-safe (the policy's host is single-threaded)."""

    def __init__(self, num_gpus: int):
        self.num_gpus = num_gpus
        self.root = PrebleNode([], None, 0, num_gpus, 0)
        self.root.ref_counter = [1] * num_gpus  # never evictable, as PREBLE's root
        self.nodes: list[PrebleNode] = []  # every node but the root, creation order
        self.allocated_tokens = [0] * num_gpus

    # ------------------------------------------------------------------ structure

    def insert(self, ids: Sequence[int], clock: int) -> tuple[PrebleNode, list[tuple[PrebleNode, PrebleNode]]]:
        """Insert a prompt; returns its leaf (the node ending exactly at the prompt's
        end) and the `(head, tail)` pairs of the nodes split on the way."""
        ids = ids if isinstance(ids, list) else list(ids)
        node, pos, n, splits = self.root, 0, len(ids), []
        node.last_access = clock
        while pos < n:
            child = node.children.get(ids[pos])
            if child is None:
                leaf = self._new_node(ids[pos:], node, node.context_length + n - pos)
                node.children[ids[pos]] = leaf
                leaf.last_access = clock
                return leaf, splits
            length = len(child.tokens)
            if ids[pos : pos + length] == child.tokens:
                common = length
            else:
                common = _common_prefix(ids, pos, child.tokens)
                head = self._split(child, common)
                splits.append((head, child))
                child = head
            child.last_access = clock
            pos += common
            node = child
        return node, splits

    def find(self, ids: Sequence[int]) -> PrebleNode:
        """The deepest node fully matched by `ids` (the root if none)."""
        ids = ids if isinstance(ids, list) else list(ids)
        node, pos = self.root, 0
        while pos < len(ids):
            child = node.children.get(ids[pos])
            if child is None or ids[pos : pos + len(child.tokens)] != child.tokens:
                break
            pos += len(child.tokens)
            node = child
        return node

    def path(self, leaf: PrebleNode) -> list[PrebleNode]:
        """Nodes from `leaf` up to (not including) the root."""
        out, node = [], leaf
        while node is not None and node is not self.root:
            out.append(node)
            node = node.parent
        return out

    def important_node(self, leaf: PrebleNode) -> PrebleNode:
        node = leaf
        while node is not self.root and not node.is_large():
            node = node.parent
        return leaf if node is self.root else node

    @staticmethod
    def subtree(node: PrebleNode) -> Iterable[PrebleNode]:
        stack = list(node.children.values())
        while stack:
            child = stack.pop()
            yield child
            stack.extend(child.children.values())

    # --------------------------------------------------------- per-GPU bookkeeping

    def nearest_allocation(self, leaf: PrebleNode) -> set[int] | None:
        """PREBLE's `get_parent_gpu_allocation`: the GPUs of the deepest allocated
        node on the path (the leaf included); None when no node on it is allocated."""
        node = leaf
        while node is not None:
            if node.alloc:
                return node.alloc
            node = node.parent
        return None

    def allocate_path(self, leaf: PrebleNode, gpus: set[int]) -> None:
        """PREBLE's `update_gpu_allocation_for_parent`: add `gpus` up to the root."""
        for node in self.path(leaf):
            node.alloc |= gpus

    def mark_routed(self, leaf: PrebleNode, gpu: int) -> None:
        """PREBLE's `update_allocated_size`: one more request on `gpu` through the path."""
        for node in self.path(leaf):
            node.ref_counter[gpu] += 1
            if gpu not in node.cached:
                node.cached.add(gpu)
                self.allocated_tokens[gpu] += len(node.tokens)

    def release(self, leaf: PrebleNode, gpu: int) -> None:
        """A request on `gpu` through `leaf` finished (PREBLE's `dec_ref_counter`)."""
        for node in self.path(leaf):
            if node.ref_counter[gpu] > 0:
                node.ref_counter[gpu] -= 1

    def cached_prefix_tokens(self, leaf: PrebleNode, gpus: Iterable[int]) -> dict[int, int]:
        """Per GPU, how many tokens of the root-to-leaf path it holds as a prefix."""
        matched = {g: 0 for g in gpus}
        active = set(matched)
        for node in reversed(self.path(leaf)):
            active &= node.cached
            if not active:
                break
            for g in active:
                matched[g] += len(node.tokens)
        return matched

    def evict(self, gpu: int, num_tokens: int) -> list[PrebleNode]:
        """Real LRU eviction on `gpu` (marks only; nodes stay in the tree)."""
        victims = self.lru_victims(gpu, num_tokens)
        for node in victims:
            node.cached.discard(gpu)
            self.allocated_tokens[gpu] -= len(node.tokens)
        return victims

    def lru_victims(self, gpu: int, num_tokens: int) -> list[PrebleNode]:
        """What an LRU eviction of `num_tokens` on `gpu` would remove (PREBLE's virtual
        eviction). Scans every node, as PREBLE's `collected_nodes_with_runtime_idx`."""
        heap = [node for node in self.nodes if node.ref_counter[gpu] == 0 and gpu in node.cached]
        heapq.heapify(heap)
        victims, freed = [], 0
        while heap and freed < num_tokens:
            node = heapq.heappop(heap)
            victims.append(node)
            freed += len(node.tokens)
        return victims

    # ------------------------------------------------------------------ helpers

    def _new_node(self, tokens: list[int], parent: PrebleNode, context_length: int) -> PrebleNode:
        node = PrebleNode(tokens, parent, context_length, self.num_gpus, len(self.nodes) + 1)
        self.nodes.append(node)
        return node

    def _split(self, child: PrebleNode, k: int) -> PrebleNode:
        parent = child.parent
        head = self._new_node(child.tokens[:k], parent, parent.context_length + k)
        head.ref_counter = list(child.ref_counter)
        head.cached = set(child.cached)
        head.alloc = set(child.alloc)
        head.last_access = child.last_access
        parent.children[child.tokens[0]] = head
        child.tokens = child.tokens[k:]
        child.parent = head
        head.children[child.tokens[0]] = child
        return head


def _common_prefix(ids: list[int], pos: int, tokens: list[int]) -> int:
    """Length of the common prefix of ids[pos:] and tokens, by binary search over slice
    compares (C-speed) rather than a per-token loop."""
    lo, hi = 0, min(len(tokens), len(ids) - pos)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ids[pos : pos + mid] == tokens[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo
