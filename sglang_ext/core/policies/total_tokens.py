"""`total_tokens`: SGLang's stock rule. The worker with the fewest tokens, ties by requests.

Source: `DPBudget.dispatch(TOTAL_TOKENS)` in SGLang 0.5.23: tokens = the worker's
`num_total_tokens` (KV tokens in use plus waiting prompt tokens) from its load snapshot,
plus each dispatched prompt's length until the next refresh. Here: KV tokens in use plus
the prompt tokens still queued for prefill, both from the exact ledger. Like the stock
rule it ignores the prefix cache.
"""

from sglang_ext.core.policies.base import ClusterView, Policy, Request, alive_only, lowest


class TotalTokens(Policy):
    name = "total_tokens"
    uses_prefix_match = False

    def choose(self, request: Request, view: ClusterView) -> int:
        cols = view.load_columns()
        tokens = alive_only(cols.kv_tokens_used + cols.queued_prefill_tokens, cols.alive)
        ties = lowest(tokens)
        if len(ties) == 1:
            return ties[0]
        requests = cols.requests
        return min(ties, key=lambda w: (requests[w], w))
