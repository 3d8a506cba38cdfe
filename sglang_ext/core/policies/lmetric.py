"""`lmetric`: the LMetric rule. Uncached prefill tokens times (load + 1), lowest wins.

Source: DESIGN.md 3.3 / 7.6 (the rule as the SGLang Model Gateway and AIBrix describe it):
score = new (uncached) prefill tokens x (running requests + 1), lowest wins, no
thresholds. Its point is that neither term can be ignored: a worker holding the whole
prompt scores 0 whatever its load, a long miss is weighed by how many requests it would
stall, and there is no cache-vs-balance switch to tune.

Mapping onto the view:
- uncached prefill tokens = prompt tokens - `cached_tokens[w]` (the host's mirror plus
  in-flight prompts, page-aligned);
- running requests = `WorkerLoad.requests`, the requests dispatched to the worker and
  not finished. It counts queued ones too: they run beside this request by the time it
  is prefilled, and it is the router-side in-flight count the gateway keeps.
- Ties (several workers hold the whole prompt, or equal products) go to the worker with
  fewer requests, then the lowest index, so runs repeat. Dead workers never win.

Cost: O(workers) numpy over the view's load columns on top of the host's prefix match; no
history, no scan of the tree.
"""

from __future__ import annotations

import numpy as np

from sglang_ext.core.policies.base import ClusterView, Policy, Request, alive_only, lowest


class LMetric(Policy):
    name = "lmetric"

    def scores(self, request: Request, view: ClusterView) -> np.ndarray:
        """Each worker's score (float64; inf for dead workers)."""
        cols = view.load_columns()
        uncached = request.prompt_tokens - np.asarray(view.cached_tokens, dtype=np.int64)
        np.maximum(uncached, 0, out=uncached)
        load = cols.requests + 1
        load *= uncached
        return alive_only(load, cols.alive).astype(np.float64, copy=False)

    def choose(self, request: Request, view: ClusterView) -> int:
        ties = lowest(self.scores(request, view))
        if len(ties) == 1:
            return ties[0]
        requests = view.load_columns().requests
        return min(ties, key=lambda w: (requests[w], w))
