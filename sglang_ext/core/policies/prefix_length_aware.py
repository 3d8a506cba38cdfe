"""`prefix_length_aware` (ours): prefix reuse and predicted decode work in one cost.

Rule: send the request to the alive worker with the lowest estimated cost, in microseconds,
of serving it there, counting both what the request suffers and what it inflicts:

    prefill   = b1 * (queued_prefill[w] + uncached[w] * (1 + requests[w]))
                the request waits for the worker's queued prefill, then its own uncached
                part (uncached = prompt - tokens cached on w, or about to be: prefix
                reuse); and since SGLang runs a prefill batch before the next decode
                step, that uncached part stalls every request in flight on w as long;
    decode    = 2 * b2 * min(pending_decode[w], requests[w] * L)
                for its L decode steps the request shares batches with the worker's
                in-flight requests, each step slower by b2 per co-runner, and it slows
                them the same way; a co-runner overlaps at most L of its remaining tokens,
                so requests that will finish soon weigh little (this is where the
                predicted length enters, for the new request and for the running ones);
    eviction  = b1 * max(0, kv_committed[w] + uncached[w] + L - capacity[w])
                tokens of cached prefixes the placement would push out, charged as the
                prefill needed to recompute them (PREBLE's M term, without a virtual LRU).

L is the request's expected decode length from the selected length source
(`max_new_tokens`, `predicted`, or `oracle`). b1 (us per prefill token) and b2 (us per
co-running request per decode step) come from the host's cost model (`--cost-model`, see
`sglang_ext/core/cost_model.py`; default: the Llama-3.1-8B-on-H100 fit), read at each decision
so that an online fit takes effect at once. Only their ratio matters for the choice.

Why the stall term: measured on SmolLM2 dp=2 (CPU), a 544-token prefill took about 3.5 s
and a decode step 0.3 s, so one cache miss cost every co-running request some ten decode
steps; without the term, a small queue difference sent a request away from the worker
holding its prefix and the whole worker paid for the miss.

The policy also asks the host to hold a request whose prefix on its worker is still being
prefilled for another request (`holds_for_prefix`, see `sglang_ext/core/prefix_hold.py`).

Ties go to the worker with fewer requests, then the lowest index. Cost: O(workers) on top
of the host's prefix match; no history, no scan of the tree. `cost_array` is the rule as a
few numpy vector operations over the view's load columns (a Python loop over 128 workers
cost ~50 us per decision, these ~15 us); `choose` runs the same arithmetic in one C loop
(`sglang_ext/_policy_costs.c`, ~1-2 us at 128 workers) when the package was built with a
compiler, else the numpy form. Both compute the same expression in the same order and
types per worker, so costs and choices are identical (a test checks it on random views).
"""

import numpy as np

from sglang_ext.core.cost_model import DEFAULT_COST_MODEL, CostModel, load_cost_model
from sglang_ext.core.policies.base import ClusterView, Policy, PolicyConfig, Request, all_alive, lowest

try:
    from sglang_ext._policy_costs import choose as _choose_compiled
except ImportError:  # built without a C compiler: the numpy form decides
    _choose_compiled = None


class PrefixLengthAware(Policy):
    name = "prefix_length_aware"
    holds_for_prefix = True

    def __init__(self, config: PolicyConfig, cost_model: CostModel | None = None):
        super().__init__(config)
        self.cost = cost_model or config.cost_model or load_cost_model(DEFAULT_COST_MODEL)

    def cost_array(self, request: Request, view: ClusterView) -> np.ndarray:
        """Each worker's cost as float64 (inf for dead ones). In-place steps keep the
        number of small-array operations (about 1 us each at 128 workers) low."""
        cols = view.load_columns()
        out = request.expected_output_tokens(self.config.length_source)
        b1, b2 = self.cost.prefill_us_per_token, self.cost.decode_us_per_request
        requests = cols.requests
        uncached = request.prompt_tokens - np.asarray(view.cached_tokens, dtype=np.int64)
        # prefill = b1 * (queued + uncached * (1 + requests))
        work = requests + 1
        work *= uncached
        work += cols.queued_prefill_tokens
        cost = work * b1
        # decode = 2 b2 * min(pending decode, requests * L)
        overlap = requests * out
        np.minimum(overlap, cols.pending_decode_tokens, out=overlap)
        cost += overlap * (2.0 * b2)
        # eviction = b1 * max(0, committed + uncached + L - capacity)
        overflow = cols.kv_tokens_committed - cols.kv_capacity_tokens
        overflow += uncached
        overflow += out
        np.maximum(overflow, 0, out=overflow)
        cost += overflow * b1
        if not all_alive(cols.alive):
            cost[~cols.alive] = np.inf
        return cost

    def costs(self, request: Request, view: ClusterView) -> list[float]:
        """The cost of each worker (inf for dead ones); exposed for tests and reports."""
        return self.cost_array(request, view).tolist()

    def choose(self, request: Request, view: ClusterView) -> int:
        if _choose_compiled is not None:
            cols = view.load_columns()
            return _choose_compiled(
                view.cached_tokens, request.prompt_tokens, request.expected_output_tokens(self.config.length_source),
                self.cost.prefill_us_per_token, self.cost.decode_us_per_request, cols.requests,
                cols.queued_prefill_tokens, cols.pending_decode_tokens, cols.kv_tokens_committed,
                cols.kv_capacity_tokens, cols.alive)
        return self.choose_numpy(request, view)

    def choose_numpy(self, request: Request, view: ClusterView) -> int:
        """`choose` in numpy (the form without a compiler; tests compare both)."""
        best = lowest(self.cost_array(request, view))
        if len(best) == 1:
            return best[0]
        requests = view.load_columns().requests
        return min(best, key=lambda w: (requests[w], w))
