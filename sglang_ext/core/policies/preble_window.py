"""PREBLE's windowed statistics (helper of `preble`): the load histogram over important
nodes, the TTFT overload detector, and the prefill-time model.

All times are the `now_s` the host passes in (seconds); nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from functools import lru_cache

from sglang_ext.core.policies.preble_tree import PrebleNode


@lru_cache(maxsize=65536)
def prefill_time_s(num_tokens: int, context_tokens: int) -> float:
    """PREBLE's fitted prefill time of one request (Mistral-7B, A6000, SGLang), seconds.

    DESIGN.md section 4: 0.1084 n + 4.21 ms for n >= 384 extend tokens, a 22 ms floor
    below 192, plus attention 0.32 ms if the context is <= 1024 tokens, else
    1.86e-4 x context + 0.159 ms; all divided by 0.9. Between 192 and 384 tokens the fit
    is not stated; we interpolate linearly between the floor and the line (our choice).
    """
    line_384 = 0.1084 * 384 + 4.21
    if num_tokens >= 384:
        base = 0.1084 * num_tokens + 4.21
    elif num_tokens < 192:
        base = 22.0
    else:
        base = 22.0 + (line_384 - 22.0) * (num_tokens - 192) / 192
    attention = 0.32 if context_tokens <= 1024 else 1.86e-4 * context_tokens + 0.159
    return (base + attention) / 0.9 / 1000.0


class NodeStat:
    """Window counters of one important node (PREBLE's per-node histogram entries)."""

    __slots__ = ("node", "count", "weighted_tokens", "hit_tokens", "prompt_tokens",
                 "miss_rate", "decode_size")

    def __init__(self, node: PrebleNode):
        self.node = node
        self.count = 0
        self.weighted_tokens = 0
        self.hit_tokens = 0
        self.prompt_tokens = 0
        self.miss_rate = 1.0
        self.decode_size = 0


class LoadWindow:
    """PREBLE's `SlidingWindowHistogram`: requests of the last `window_s` per important node.

    Entries point at a `NodeStat`, not at the node, so renaming a node after a split is
    O(1) (PREBLE rewrote its whole timestamp list). When a node's count drops to zero it
    leaves the window and its GPU allocation is reset, as published.
    """

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.stats: dict[PrebleNode, NodeStat] = {}
        self._entries: deque[tuple[float, NodeStat, int, int]] = deque()

    def record(self, now_s: float, important: PrebleNode, leaf: PrebleNode, decode_size: int) -> None:
        stat = self.stats.get(important)
        if stat is None:
            stat = self.stats[important] = NodeStat(important)
        context = leaf.context_length
        # PREBLE's hit estimate: everything above the leaf's own segment was a hit.
        hit = context - len(leaf.tokens)
        stat.count += 1
        stat.weighted_tokens += context
        stat.hit_tokens += hit
        stat.prompt_tokens += context
        stat.decode_size = decode_size
        if stat.prompt_tokens:
            stat.miss_rate = 1.0 - stat.hit_tokens / stat.prompt_tokens
        self._entries.append((now_s, stat, context, hit))
        self.expire(now_s)

    def expire(self, now_s: float) -> None:
        start = now_s - self.window_s
        entries = self._entries
        while entries and entries[0][0] < start:
            _, stat, context, hit = entries.popleft()
            stat.count -= 1
            stat.weighted_tokens -= context
            stat.hit_tokens -= hit
            stat.prompt_tokens -= context
            if stat.weighted_tokens <= 0 and self.stats.get(stat.node) is stat:
                del self.stats[stat.node]
                stat.node.alloc = set()

    def rename(self, old: PrebleNode, new: PrebleNode) -> None:
        stat = self.stats.pop(old, None)
        if stat is not None:
            stat.node = new
            self.stats[new] = stat


class TtftDetector:
    """PREBLE's `TTFTWindowedOverloadedDetector`: per (important node, GPU), a node is
    overloaded when the mean TTFT of the window's second half is at least twice that of
    its first half (both halves non-empty)."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self.data: dict[PrebleNode, dict[int, deque[tuple[float, float]]]] = {}

    def add(self, now_s: float, node: PrebleNode, gpu: int, ttft_s: float) -> None:
        points = self.data.setdefault(node, {}).setdefault(gpu, deque())
        points.append((now_s, ttft_s))
        self._purge(points, now_s)

    def is_overloaded(self, node: PrebleNode, gpu: int, now_s: float) -> bool:
        points = self.data.get(node, {}).get(gpu)
        if not points:
            return False
        self._purge(points, now_s)
        cutoff = now_s - self.window_s / 2
        first = [v for t, v in points if t < cutoff]
        second = [v for t, v in points if t >= cutoff]
        if not first or not second:
            return False
        return sum(second) / len(second) >= 2 * sum(first) / len(first)

    def forget(self, node: PrebleNode, gpu: int) -> None:
        self.data.get(node, {}).pop(gpu, None)

    def rename(self, old: PrebleNode, new: PrebleNode) -> None:
        if old in self.data:
            self.data[new] = self.data.pop(old)

    def _purge(self, points: deque, now_s: float) -> None:
        while points and points[0][0] < now_s - self.window_s:
            points.popleft()
