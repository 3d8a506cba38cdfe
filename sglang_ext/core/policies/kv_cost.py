"""`kv_cost`: NVIDIA Dynamo's KV-router cost rule, on our exact mirror and ledger.

Source: Dynamo's KV router ("Routing Concepts" in the Dynamo docs;
`lib/llm/src/kv_router/scheduler.rs`): per worker

    cost = overlap_score_weight x prefill_blocks + decode_blocks

the lowest cost wins; with `router_temperature` > 0 the worker is instead sampled from a
softmax over the costs. Defaults as Dynamo's: weight 1.0, temperature 0.0.

Dynamo's terms, and how they map onto what a policy sees here (blocks = tokens / page
size, rounded up; `page = view.page_size`):

- prefill_blocks: Dynamo books, per worker, the prompt tokens of its active requests that
  still await prefill, plus the incoming request's tokens not covered by the worker's
  cached prefix (overlap), until the first output token marks prefill done. Here:
  `ceil((queued_prefill_tokens[w] + prompt - cached_tokens[w]) / page)`. The ledger's
  `queued_prefill_tokens` is exactly that booking (uncached prompt tokens dispatched and
  not yet prefilled); `cached_tokens[w]` is the exact mirror's overlap (Dynamo's indexer
  is exact too, fed by the same kind of KV events).
- decode_blocks: Dynamo counts the KV blocks of the worker's active sequences (every
  block of every request dispatched and not finished, from admission on, a block shared
  by several active requests counted once), plus the blocks the incoming request would
  add. Here: `ceil((kv_tokens_used[w] + queued_prefill_tokens[w]) / page)` for the
  active sequences (prompt tokens of running requests plus the uncached prompt tokens of
  queued ones; the cached part of a queued request's prompt is already resident and
  counted once, as Dynamo's de-duplication would), plus `ceil((prompt - cached[w]) /
  page)` for the incoming request (its blocks not already on the worker).
  Two approximations, both documented for the report: the ledger sums prompt tokens per
  request, so a prefix shared by several *running* requests is counted once per request
  (Dynamo would count it once); and Dynamo does not know future output, so by default
  the ledger's `pending_decode_tokens` (expected tokens still to generate) is NOT
  counted. `include_pending_decode=True` adds `ceil(pending_decode_tokens[w] / page)`,
  i.e. the blocks the active sequences will grow into (a length-aware variant, not
  Dynamo's rule). Generated tokens so far are unknown to the host and are not counted.

Selection: temperature 0 takes the lowest cost, ties broken uniformly at random with
`self.rng` (as Dynamo breaks them randomly; seeded, so runs repeat). Temperature t > 0
normalises the costs by their range and samples with probability proportional to
exp(-cost / range / t), as Dynamo's `softmax_sample` does; equal costs sample uniformly.
Dead workers never win. Cost: O(workers) on top of the host's prefix match, as numpy
vector operations over the view's load columns.
"""

from __future__ import annotations

import math

import numpy as np

from sglang_ext.core.policies.base import ClusterView, Policy, PolicyConfig, Request, all_alive, lowest

DEFAULT_OVERLAP_WEIGHT = 1.0
DEFAULT_TEMPERATURE = 0.0


def _blocks(tokens: np.ndarray, page: int) -> np.ndarray:
    """ceil(tokens / page) per worker, 0 where tokens <= 0."""
    if page == 1:  # integer division is the slowest vector step; skip it when it is a no-op
        return np.maximum(tokens, 0)
    blocks = -(-tokens // page)
    np.maximum(blocks, 0, out=blocks)
    return blocks


class KvCost(Policy):
    name = "kv_cost"

    def __init__(self, config: PolicyConfig, overlap_weight: float = DEFAULT_OVERLAP_WEIGHT,
                 temperature: float = DEFAULT_TEMPERATURE, include_pending_decode: bool = False):
        """Build the policy.

        Args:
            config: shared policy options (number of workers, seed).
            overlap_weight: Dynamo's `overlap_score_weight` on the prefill blocks.
            temperature: Dynamo's `router_temperature`; 0 = deterministic argmin.
            include_pending_decode: also count the blocks of expected remaining decode
                tokens (not Dynamo's rule; see the module notes).
        """
        super().__init__(config)
        if temperature < 0:
            raise ValueError("temperature must be >= 0")
        self.overlap_weight = overlap_weight
        self.temperature = temperature
        self.include_pending_decode = include_pending_decode

    def cost_array(self, request: Request, view: ClusterView) -> np.ndarray:
        """Each worker's cost in blocks as float64 (inf for dead ones), a few vector
        operations over the view's load columns (a per-worker loop: ~90 us at 128)."""
        page = max(1, view.page_size)
        cols = view.load_columns()
        uncached = request.prompt_tokens - np.asarray(view.cached_tokens, dtype=np.int64)
        np.maximum(uncached, 0, out=uncached)
        queued = cols.queued_prefill_tokens
        prefill = _blocks(queued + uncached, page)
        decode = _blocks(cols.kv_tokens_used + queued, page)
        decode += _blocks(uncached, page)
        if self.include_pending_decode:
            decode += _blocks(cols.pending_decode_tokens, page)
        cost = self.overlap_weight * prefill + decode
        if not all_alive(cols.alive):
            cost[~cols.alive] = math.inf
        return cost

    def costs(self, request: Request, view: ClusterView) -> list[float]:
        """Each worker's cost in blocks (inf for dead ones); exposed for tests and reports."""
        return self.cost_array(request, view).tolist()

    def choose(self, request: Request, view: ClusterView) -> int:
        cost = self.cost_array(request, view)
        if self.temperature == 0.0:
            ties = lowest(cost)  # dead workers are inf: never the lowest while one lives
            return ties[0] if len(ties) == 1 else self.rng.choice(ties)
        costs = cost.tolist()
        return self._softmax_sample(costs, [w for w in range(len(costs)) if costs[w] != math.inf])

    def _softmax_sample(self, costs: list[float], alive: list[int]) -> int:
        values = [costs[w] for w in alive]
        low, high = min(values), max(values)
        if high == low:
            return self.rng.choice(alive)
        scale = (high - low) * self.temperature
        # Shift by the best (lowest) cost so the largest exponent is 0: no overflow.
        weights = [math.exp(-(v - low) / scale) for v in values]
        return self.rng.choices(alive, weights=weights, k=1)[0]
