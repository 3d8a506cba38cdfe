"""`preble`: PREBLE's E2 scheduler (Srivatsa et al. 2024), as published, as a baseline.

Source: the paper ("Preble: Efficient Distributed Prompt Scheduling for LLM Serving")
and its public code (github.com/WukLab/preble, `multi_node/global_scheduler_with_time.py`
and `multi_node/global_lru_cache.py`), read for the algorithm; this is our own code.

Rule, per request (one global token radix tree, `preble_tree.py`; windowed statistics,
`preble_window.py`):
1. Insert the prompt into the tree (nodes are never deleted). The request's *important
   node* is the deepest node on its path whose own segment is longer than all its
   ancestors together.
2. Exploit if the prompt's new (leaf) tokens are fewer than its matched tokens: the
   candidates are the GPUs allocated to the deepest allocated node on its path (all GPUs
   if none). Otherwise explore: if some GPU holds at least 70 % of the prompt (local hit
   ratio >= 0.7) send it there, else the GPU with the lowest cost overall.
3. Among several candidates, the lowest cost wins. Cost of GPU g = L + M:
   L sums, over the important nodes in the 3-minute window allocated to g,
   prefill = miss rate x request count x T_prefill(node) / (GPUs sharing the node) and
   decode = active requests on g through the node x output length x median TPOT of g
   (TPOT history initialised to 0.15 s; output length = the `max_new_tokens` of the
   node's last request, default 45); M = the prefill cost of the important nodes a
   virtual LRU eviction on g would throw out to fit the request.
4. Record the request in the window, allocate the candidates to the path, count the
   request on the chosen GPU; if the GPU's allocated tokens exceed its KV capacity,
   evict (LRU marks) for real.
5. After a warm-up of 50 requests, rebalance on every request: while the heaviest GPU's
   L (nodes with at least 2 windowed requests) is at least 1.5x the lightest's, move its
   cheapest important nodes (and their subtrees) to the lightest GPU; when it has a
   single such node, replicate it to the lightest GPU instead if that prefix's TTFT
   doubled (mean of the window's second half >= 2x the first half's) on the heavy GPU.
   Then compare the next heaviest with the lightest.

Per-decision work is O(windowed important nodes x GPUs) for L, O(tree nodes) per GPU for
M when a GPU is full, O(GPUs x TPOT history) for the medians and O(subtree) per moved
node: this growth with GPUs, tree size and request rate is what this baseline is for.
The per-decision cost also grows with the number of requests served (the tree is never
pruned), as published.

Deviations, every one of them:
- Time is the host's `now_s`, never a wall clock; LRU order is a logical counter.
- TTFT is not reported to policies. Proxy: dispatch (`view.now_s` in `choose`) to
  `on_prefill_done`'s `now_s`, i.e. router-observed time to first token (queueing plus
  prefill), recorded at prefill completion per (important node, GPU). PREBLE measured
  TTFT at the client and recorded it when the request finished.
- TPOT samples come from `on_prefill_done` / `on_finished` timestamps:
  (finish - prefill done) / (output tokens - 1), for requests with more than one output
  token, 200 samples per GPU as published.
- Output length: the request's `max_new_tokens` (default 45 when it is not positive), as
  the brief and the paper state. The public code switches to the mean observed output
  length once requests under the node finished; `use_observed_output_len=True` does so.
- M only evicts what the request needs (allocated + its new tokens - capacity); the public
  code assumed memory always full and always evicted the leaf's size
  (`assume_full_memory=True` restores that). Capacity is the worker's
  `kv_capacity_tokens` from the view (PREBLE hard-coded 198,516).
- Rebalancing ratio 1.5 as in the paper and DESIGN.md (the last public code used 15).
- The public code's tie-break among several candidate GPUs returned the position in the
  candidate list rather than the GPU id (a bug); we return the GPU.
- Dead workers: excluded from candidates and from rebalancing (PREBLE has no notion of
  them); if every candidate of an exploit is dead, all alive GPUs are candidates.
- The explore rule's "local hit ratio" is the share of this prompt already cached on the
  GPU per the tree's marks (the public code took it from a caller-supplied argument).
- The window expires old entries before the costs are computed (PREBLE expired them
  after recording), so a decision never uses entries older than the window.
- Matching keys children by first token (see `preble_tree.py`) instead of scanning all
  children with a per-token loop; results are the same, only faster.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from statistics import median

from sglang_ext.core.policies.base import ClusterView, Policy, PolicyConfig, Request
from sglang_ext.core.policies.preble_tree import PrebleNode, PrebleTree
from sglang_ext.core.policies.preble_window import LoadWindow, TtftDetector, prefill_time_s

WINDOW_S = 180.0
TPOT_INIT_S = 0.15
TPOT_HISTORY = 200
DEFAULT_OUTPUT_TOKENS = 45
HIT_RATIO_THRESHOLD = 0.7
REBALANCE_RATIO = 1.5
WARMUP_REQUESTS = 50
MIN_WINDOW_COUNT = 2


@dataclass(slots=True)
class _InFlight:
    leaf: PrebleNode
    gpu: int
    dispatched_s: float
    prefill_done_s: float | None = None


class Preble(Policy):
    name = "preble"

    def __init__(self, config: PolicyConfig, window_s: float = WINDOW_S,
                 enable_eviction: bool = True, enable_rebalancing: bool = True,
                 rebalance_ratio: float = REBALANCE_RATIO, warmup_requests: int = WARMUP_REQUESTS,
                 use_observed_output_len: bool = False, assume_full_memory: bool = False,
                 capacity_tokens: int | None = None):
        """Build the policy.

        Args:
            config: shared policy options (number of workers, seed).
            window_s: the statistics window (PREBLE: 3 minutes).
            enable_eviction: include M in the cost and evict for real when a GPU is full.
            enable_rebalancing: run the post-assignment rebalancing.
            rebalance_ratio: rebalance while heaviest >= ratio x lightest (paper: 1.5).
            warmup_requests: requests before rebalancing starts (PREBLE: 50).
            use_observed_output_len: use the mean observed output length under a node
                once known (the public code's behaviour).
            assume_full_memory: M always evicts the leaf's size (the public code).
            capacity_tokens: KV capacity per GPU; None reads it from the view.
        """
        super().__init__(config)
        n = config.num_workers
        self.window_s = window_s
        self.enable_eviction = enable_eviction
        self.enable_rebalancing = enable_rebalancing
        self.rebalance_ratio = rebalance_ratio
        self.warmup_requests = warmup_requests
        self.use_observed_output_len = use_observed_output_len
        self.assume_full_memory = assume_full_memory
        self.capacity_tokens = capacity_tokens
        self.tree = PrebleTree(n)
        self.window = LoadWindow(window_s)
        self.ttft = TtftDetector(window_s)
        self.tpot_s = [deque([TPOT_INIT_S], maxlen=TPOT_HISTORY) for _ in range(n)]
        self.routed = 0
        self._clock = 0
        self._inflight: dict[str, _InFlight] = {}
        self.last_mode = ""  # "exploit" | "explore-hit" | "explore" (tests, reports)
        self.moves = 0  # important nodes moved by rebalancing
        self.replications = 0  # hot prefixes replicated

    # ------------------------------------------------------------------ decision

    def choose(self, request: Request, view: ClusterView) -> int:
        now = view.now_s
        alive = view.alive_workers()
        self._clock += 1
        self.window.expire(now)
        if not request.input_ids:  # nothing to place in the tree: the cheapest GPU
            costs = self._costs(None, alive, view)
            return min(alive, key=lambda g: (costs[g], g))
        leaf, splits = self.tree.insert(request.input_ids, self._clock)
        for head, tail in splits:
            if head.is_large() and not tail.is_large():
                self.window.rename(tail, head)
                self.ttft.rename(tail, head)
        important = self.tree.important_node(leaf)
        new_tokens = leaf.num_tokens
        matched = leaf.context_length - new_tokens

        if new_tokens < matched:
            self.last_mode = "exploit"
            allocated = self.tree.nearest_allocation(leaf)
            selected = set(alive) if allocated is None else allocated
            candidates = [g for g in sorted(selected) if view.loads[g].alive] or alive
        else:
            candidates = self._explore(request, leaf, view, alive)
            selected = set(candidates)
        if len(candidates) == 1:
            gpu = candidates[0]
        else:
            costs = self._costs(leaf, candidates, view)
            gpu = min(candidates, key=lambda g: (costs[g], g))

        output = request.max_new_tokens if request.max_new_tokens > 0 else DEFAULT_OUTPUT_TOKENS
        self.window.record(now, important, leaf, output)
        self.tree.allocate_path(leaf, selected)
        self.routed += 1
        self.tree.mark_routed(leaf, gpu)
        if self.enable_eviction:
            excess = self.tree.allocated_tokens[gpu] - self._capacity(view, gpu)
            if excess > 0:
                self.tree.evict(gpu, excess)
        if self.enable_rebalancing and self.routed >= self.warmup_requests:
            self._rebalance(view, alive, now)
        self._inflight[request.rid] = _InFlight(leaf, gpu, now)
        return gpu

    def _explore(self, request: Request, leaf: PrebleNode, view: ClusterView,
                 alive: list[int]) -> list[int]:
        prompt = request.prompt_tokens
        hits = self.tree.cached_prefix_tokens(leaf, alive)
        best = max(alive, key=lambda g: (hits[g], -g))
        if hits[best] >= HIT_RATIO_THRESHOLD * prompt:
            self.last_mode = "explore-hit"
            return [best]
        self.last_mode = "explore"
        costs = self._costs(leaf, alive, view)
        return [min(alive, key=lambda g: (costs[g], g))]

    # ------------------------------------------------------------------ costs

    def _costs(self, leaf: PrebleNode | None, gpus: list[int], view: ClusterView) -> dict[int, float]:
        """L (+ M) for the given GPUs; L is computed for every GPU, as PREBLE does."""
        load = self.allocation_costs(min_count=0)
        out = {}
        for g in gpus:
            cost = load[g]
            if self.enable_eviction and leaf is not None:
                cost += self._eviction_cost(leaf, g, view)
            out[g] = cost
        return out

    def allocation_costs(self, min_count: int = 0) -> list[float]:
        """PREBLE's `current_allocation_per_gpu`: L of every GPU, summed over the
        window's important nodes (only those with >= `min_count` requests)."""
        tpots = [median(history) for history in self.tpot_s]  # recomputed, as published
        allocation = [0.0] * self.config.num_workers
        for stat in self.window.stats.values():
            if stat.count < min_count:
                continue
            for g in stat.node.alloc:
                allocation[g] += self.node_cost(stat.node, g, tpots[g])
        return allocation

    def node_cost(self, node: PrebleNode, gpu: int, tpot_s: float) -> float:
        stat = self.window.stats[node]
        sharing = len(node.alloc) or 1
        prefill = (stat.miss_rate * stat.count
                   * prefill_time_s(node.num_tokens, node.context_length) / sharing)
        output = stat.decode_size
        if self.use_observed_output_len and node.decode_count:
            output = node.decode_sum / node.decode_count
        return prefill + node.ref_counter[gpu] * output * tpot_s

    def _eviction_cost(self, leaf: PrebleNode, gpu: int, view: ClusterView) -> float:
        """M: prefill cost of the important nodes a virtual LRU eviction would remove."""
        if self.assume_full_memory:
            need = leaf.num_tokens
        else:
            need = self.tree.allocated_tokens[gpu] + leaf.num_tokens - self._capacity(view, gpu)
        if need <= 0:
            return 0.0
        stats = self.window.stats
        cost = 0.0
        for victim in self.tree.lru_victims(gpu, need):
            if not victim.is_large():
                continue
            stat = stats.get(victim)
            miss = stat.miss_rate if stat else 1.0
            count = stat.count if stat else victim.ref_counter[gpu]
            cost += miss * count * prefill_time_s(victim.num_tokens, victim.context_length)
        return cost

    def _capacity(self, view: ClusterView, gpu: int) -> int:
        return self.capacity_tokens or view.loads[gpu].kv_capacity_tokens

    # ------------------------------------------------------------------ rebalancing

    def _rebalance(self, view: ClusterView, alive: list[int], now: float) -> None:
        """PREBLE's `handle_important_node_stealing`, iterative instead of recursive."""
        if len(alive) < 2:
            return
        costs = self.allocation_costs(min_count=MIN_WINDOW_COUNT)
        order = sorted(alive, key=lambda g: (-costs[g], g))
        tpots = [median(history) for history in self.tpot_s]
        while len(order) > 1:
            heavy, light = order[0], order[-1]
            if costs[heavy] < self.rebalance_ratio * costs[light]:
                return
            heap = [(self.node_cost(stat.node, heavy, tpots[heavy]), stat.node.seq, stat.node)
                    for stat in self.window.stats.values()
                    if heavy in stat.node.alloc and stat.node.is_large() and stat.count > 1]
            if len(heap) == 1:
                cost, _, node = heap[0]
                cost /= 2  # a replica splits the node's load in two
                if light not in node.alloc and self.ttft.is_overloaded(node, heavy, now):
                    costs[heavy] -= cost
                    costs[light] += cost
                    node.alloc.add(light)
                    self.ttft.forget(node, heavy)
                    self.replications += 1
            else:
                heapq.heapify(heap)
                while heap:
                    cost, _, node = heapq.heappop(heap)
                    if costs[heavy] < costs[light] + cost:
                        break
                    costs[heavy] -= cost
                    costs[light] += cost
                    node.alloc = {light}
                    for child in self.tree.subtree(node):
                        child.alloc = {light}
                    self.moves += 1
            order = order[1:]

    # ------------------------------------------------------------------ feedback

    def on_prefill_done(self, rid: str, worker: int, now_s: float) -> None:
        entry = self._inflight.get(rid)
        if entry is None or entry.prefill_done_s is not None:
            return
        entry.prefill_done_s = now_s
        important = self.tree.important_node(entry.leaf)
        self.ttft.add(now_s, important, entry.gpu, max(0.0, now_s - entry.dispatched_s))

    def on_worker_reset(self, worker: int, now_s: float) -> None:
        """Not in PREBLE (its GPUs never leave): a GPU that went down or came back holds
        nothing and is assigned no prefix, so exploit and rebalancing start over for it.
        Its in-flight requests were released (`on_expired`) before this."""
        for node in self.tree.nodes:
            node.cached.discard(worker)
            node.alloc.discard(worker)
        self.tree.allocated_tokens[worker] = 0
        self.tpot_s[worker].clear()
        self.tpot_s[worker].append(TPOT_INIT_S)

    def on_expired(self, rid: str, worker: int, now_s: float) -> None:
        entry = self._inflight.pop(rid, None)
        if entry is not None:
            self.tree.release(entry.leaf, entry.gpu)

    def on_finished(self, rid: str, worker: int, output_tokens: int, now_s: float) -> None:
        entry = self._inflight.pop(rid, None)
        if entry is None:
            return
        self.tree.release(entry.leaf, entry.gpu)
        if output_tokens != 1:
            important = self.tree.important_node(entry.leaf)
            important.decode_sum += output_tokens
            important.decode_count += 1
        if entry.prefill_done_s is not None and output_tokens > 1:
            tpot = (now_s - entry.prefill_done_s) / (output_tokens - 1)
            if tpot > 0 and math.isfinite(tpot):
                self.tpot_s[entry.gpu].append(tpot)
