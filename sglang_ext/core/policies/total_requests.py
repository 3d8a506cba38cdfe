"""`total_requests`: SGLang's stock rule. The worker with the fewest requests in flight.

Source: `DPBudget.dispatch(TOTAL_REQUESTS)` in SGLang 0.5.23, which reads running plus
waiting requests from the workers' load snapshots and adds 1 per dispatch until the next
refresh. Our ledger's `requests` is that count kept exactly (dispatch +1, completion -1),
so the rule is the same without the 20 ms staleness. Ties: lowest index, as `list.index(min)`.
"""

from sglang_ext.core.policies.base import ClusterView, Policy, Request, alive_only


class TotalRequests(Policy):
    name = "total_requests"
    uses_prefix_match = False

    def choose(self, request: Request, view: ClusterView) -> int:
        cols = view.load_columns()
        # argmin returns the first minimum: the lowest index among ties.
        return int(alive_only(cols.requests, cols.alive).argmin())
