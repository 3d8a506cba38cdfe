"""`random`: a uniformly random live worker, from the policy's seeded generator.

The prefix- and load-blind floor of the comparison (the poster's study lists it among the
baselines); the same seed gives the same sequence of choices.
"""

from sglang_ext.core.policies.base import ClusterView, Policy, Request


class RandomChoice(Policy):
    name = "random"
    uses_prefix_match = False

    def choose(self, request: Request, view: ClusterView) -> int:
        alive = view.alive_workers()
        if not alive:
            raise RuntimeError("random: no worker is alive")
        return alive[self.rng.randrange(len(alive))]
