"""`cache_aware`: the SGLang Model Gateway's (sglang-router's) cache-aware rule, on token ids.

Source: `sgl-router/src/policies/cache_aware.rs` (SGLang Model Gateway), whose documented
defaults are `--cache-threshold 0.3 --balance-abs-threshold 64 --balance-rel-threshold 1.5`.

Rule, per request:
1. load[w] = the router's own in-flight request count (`WorkerLoad.requests`: +1 on
   dispatch, -1 on completion, as the gateway counts).
2. If max(load) - min(load) > 64 *and* max(load) > 1.5 x min(load), the cluster is
   imbalanced: route to the least loaded worker (the gateway's shortest queue), and still
   insert the prompt into that worker's tree.
3. Otherwise look the prompt up in the router's approximate per-worker tree. If the best
   match covers more than 30 % of the prompt (matched / prompt > 0.3), route to the
   worker holding that match; else route to the worker with the *smallest tree* (the
   gateway's `get_smallest_tenant`: "most available cache capacity"). Insert the prompt
   under the chosen worker.

Faithful to the gateway, the policy keeps its OWN approximate tree of what it routed
(insert on route, LRU eviction when a worker's tree exceeds `max_tree_size_tokens`),
rather than reading the exact mirror in the view: the point of this baseline is to show
what an approximate, routing-history tree does (it drifts from the real cache when the
workers evict). It reuses `GlobalTree` in approximate mode (page size 1, like the
gateway's character tree). `use_exact_mirror=True` instead reads `view.cached_tokens`
(our exact mirror) and falls back to the least loaded worker, as there is then no tree
of its own to size.

Deviations from the gateway, all in corner cases:
- Token ids instead of characters (the gateway's tree stores request text); the match
  rate is matched tokens / prompt tokens.
- The gateway evicts in a background thread every `eviction_interval_secs` down to
  `max_tree_size`; here eviction runs on insert (no threads, no clocks), bounded per
  worker in tokens. The default bound is the gateway's default `max_tree_size` (2^26),
  read as tokens.
- Loads are taken over alive workers only (the gateway's max/min include unhealthy
  workers), and dead workers' tree entries are ignored for matching (the gateway picks
  the matched worker and then falls back to the first healthy one if it is down).
- Ties the gateway leaves to hash-map order (several workers with the same longest
  match, or the same tree size) go to the lower load, then the lowest index, so runs
  are deterministic. The shortest-queue tie goes to the lowest index, as Rust's
  `min_by_key` does.

Cost: one tree match, O(prompt + workers), plus an insert; no history scan.
"""

from __future__ import annotations

from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.policies.base import ClusterView, Policy, PolicyConfig, Request

DEFAULT_CACHE_THRESHOLD = 0.3
DEFAULT_BALANCE_ABS_THRESHOLD = 64
DEFAULT_BALANCE_REL_THRESHOLD = 1.5
DEFAULT_MAX_TREE_SIZE_TOKENS = 2**26  # the gateway's default max_tree_size


class CacheAware(Policy):
    name = "cache_aware"

    def __init__(self, config: PolicyConfig, cache_threshold: float = DEFAULT_CACHE_THRESHOLD,
                 balance_abs_threshold: int = DEFAULT_BALANCE_ABS_THRESHOLD,
                 balance_rel_threshold: float = DEFAULT_BALANCE_REL_THRESHOLD,
                 max_tree_size_tokens: int = DEFAULT_MAX_TREE_SIZE_TOKENS,
                 use_exact_mirror: bool = False):
        """Build the policy.

        Args:
            config: shared policy options (number of workers, seed).
            cache_threshold: minimum match rate to follow the cache (gateway default 0.3).
            balance_abs_threshold: imbalance needs max - min load above this (default 64).
            balance_rel_threshold: imbalance needs max load above this x min (default 1.5).
            max_tree_size_tokens: per-worker bound of the approximate tree, in tokens.
            use_exact_mirror: read `view.cached_tokens` instead of the policy's own tree.
        """
        super().__init__(config)
        self.cache_threshold = cache_threshold
        self.balance_abs_threshold = balance_abs_threshold
        self.balance_rel_threshold = balance_rel_threshold
        self.max_tree_size_tokens = max_tree_size_tokens
        self.use_exact_mirror = use_exact_mirror
        # The gateway's tree has character granularity: page size 1 here.
        self.tree = None if use_exact_mirror else GlobalTree(config.num_workers, page_size=1)
        self.last_mode = ""  # "balance" | "cache" | "fallback": for tests and reports

    def on_worker_reset(self, worker: int, now_s: float) -> None:
        if self.tree is not None:
            self.tree.apply_cleared(worker)

    def choose(self, request: Request, view: ClusterView) -> int:
        loads = view.loads
        alive = view.alive_workers()
        counts = [loads[w].requests for w in alive]
        max_load, min_load = max(counts), min(counts)
        imbalanced = (max_load - min_load > self.balance_abs_threshold
                      and max_load > min_load * self.balance_rel_threshold)
        if imbalanced:
            self.last_mode = "balance"
            worker = min(alive, key=lambda w: (loads[w].requests, w))
        else:
            worker = self._cache_choice(request, view, alive)
        if self.tree is not None:
            self.tree.insert_approximate(worker, request.input_ids, self.max_tree_size_tokens)
        return worker

    def _cache_choice(self, request: Request, view: ClusterView, alive: list[int]) -> int:
        loads = view.loads
        matched = view.cached_tokens if self.tree is None else self.tree.match(request.input_ids)
        best = max(matched[w] for w in alive)
        prompt = request.prompt_tokens
        if prompt and best / prompt > self.cache_threshold:
            self.last_mode = "cache"
            return min((w for w in alive if matched[w] == best), key=lambda w: (loads[w].requests, w))
        self.last_mode = "fallback"
        if self.tree is None:
            return min(alive, key=lambda w: (loads[w].requests, w))
        tree = self.tree
        return min(alive, key=lambda w: (tree.tokens_held(w), loads[w].requests, w))
