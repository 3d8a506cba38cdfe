"""`total_tokens`: SGLang's stock rule. The worker with the fewest tokens, ties by requests.

Source: `DPBudget.dispatch(TOTAL_TOKENS)` in SGLang 0.5.23: tokens = the worker's
`num_total_tokens` (KV tokens in use plus waiting prompt tokens) from its load snapshot,
plus each dispatched prompt's length until the next refresh. Here: KV tokens in use plus
the prompt tokens still queued for prefill, both from the exact ledger. Like the stock
rule it ignores the prefix cache.
"""

from sglang_ext.core.policies.base import ClusterView, Policy, Request, least_loaded


class TotalTokens(Policy):
    name = "total_tokens"
    uses_prefix_match = False

    def choose(self, request: Request, view: ClusterView) -> int:
        loads = view.loads
        return least_loaded(
            view.alive_workers(),
            lambda w: (loads[w].kv_tokens_used + loads[w].queued_prefill_tokens, loads[w].requests),
        )
