"""`round_robin`: SGLang's stock rule. Workers in turn, skipping dead ones.

Source: `DataParallelController.round_robin_scheduler` in SGLang 0.5.23.
"""

from sglang_ext.core.policies.base import ClusterView, Policy, Request


class RoundRobin(Policy):
    name = "round_robin"
    uses_prefix_match = False

    def __init__(self, config):
        super().__init__(config)
        self._next = 0

    def choose(self, request: Request, view: ClusterView) -> int:
        n = view.num_workers
        for _ in range(n):
            worker = self._next % n
            self._next = (self._next + 1) % n
            if view.loads[worker].alive:
                return worker
        raise RuntimeError("round_robin: no worker is alive")
