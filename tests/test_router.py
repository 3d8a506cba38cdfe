"""The host-independent routing core: mirror + ledger + policy, driven without sockets."""

from __future__ import annotations

from sglang_ext.policies import LengthSource
from sglang_ext.policies.base import Policy
from sglang_ext.router import Router, RouterConfig
from factories import make_request


class Recorder(Policy):
    name = "recorder"

    def __init__(self, config, choice: int = 0):
        super().__init__(config)
        self.choice = choice
        self.events: list[tuple] = []
        self.views = []

    def choose(self, request, view):
        self.views.append(list(view.cached_tokens))
        return self.choice

    def on_prefill_done(self, rid, worker, now_s):
        self.events.append(("prefill", rid, worker))

    def on_finished(self, rid, worker, output_tokens, now_s):
        self.events.append(("finished", rid, worker, output_tokens))

    def on_expired(self, rid, worker, now_s):
        self.events.append(("expired", rid, worker))


def make_router(choice=0, **cfg) -> tuple[Router, Recorder]:
    config = RouterConfig(policy="round_robin", num_workers=2, kv_capacity_tokens=10_000, **cfg)
    from sglang_ext.policies import PolicyConfig

    policy = Recorder(PolicyConfig(2), choice)
    return Router(config, policy), policy


def test_lifecycle_reaches_policy_and_ledger():
    router, policy = make_router(choice=1)
    req = make_request(prompt_tokens=40, max_new_tokens=16, rid="a")
    assert router.route(req, now_s=0.0) == 1
    load = router.ledger.loads[1]
    assert (load.requests, load.queued_prefill_tokens, load.pending_decode_tokens) == (1, 40, 16)
    router.prefill_done("a", 0.1)
    assert load.queued_prefill_tokens == 0 and load.kv_tokens_used == 40
    router.finished("a", output_tokens=16, now_s=0.5)
    assert policy.events == [("prefill", "a", 1), ("finished", "a", 1, 16)]
    assert (load.requests, load.kv_tokens_used, load.pending_decode_tokens) == (0, 0, 0)


def test_approximate_mirror_learns_from_dispatches():
    router, policy = make_router(choice=0)
    prefix = list(range(1, 101))
    router.route(make_request(prompt_tokens=120, prefix=prefix, rid="a"), 0.0)
    router.route(make_request(prompt_tokens=130, prefix=prefix, rid="b"), 0.0)
    assert policy.views[1][0] >= 100 and policy.views[1][1] == 0


def test_exact_mirror_is_not_written_by_dispatches():
    router, policy = make_router(exact_mirror=True)
    router.route(make_request(rid="a"), 0.0)
    router.route(make_request(rid="b"), 0.0)
    assert policy.views[1] == [0, 0]


def test_uncertain_worker_matches_count_as_zero():
    router, policy = make_router()
    router.route(make_request(prompt_tokens=50, rid="a"), 0.0)
    router.tree.mark_uncertain(0)
    router.route(make_request(prompt_tokens=50, rid="b"), 0.0)
    assert policy.views[1][0] == 0
    router.tree.mark_uncertain(0, False)
    router.route(make_request(prompt_tokens=50, rid="c"), 0.0)
    assert policy.views[2][0] == 50


def test_expiry_tells_the_policy():
    router, policy = make_router(ledger_expiry_s=10.0)
    router.route(make_request(rid="lost"), 0.0)
    assert router.expire(5.0) == []
    assert router.expire(11.0) == ["lost"]
    assert policy.events == [("expired", "lost", 0)]
    assert router.ledger.loads[0].requests == 0


def test_late_prediction_reweighs_pending_decode():
    router, _ = make_router(length_source=LengthSource.PREDICTED)
    router.route(make_request(max_new_tokens=300, rid="a"), 0.0)
    assert router.ledger.loads[0].pending_decode_tokens == 300  # fallback before a prediction
    router.update_expected_output("a", 12)
    assert router.ledger.loads[0].pending_decode_tokens == 12
    router.finished("a", 12, 1.0)
    assert router.ledger.loads[0].pending_decode_tokens == 0


def test_a_worker_going_down_drops_its_requests_and_cache():
    router, policy = make_router(choice=1)
    router.route(make_request(prompt_tokens=30, rid="a"), 0.0)
    assert router.tree.tokens_held(1) == 30
    router.set_alive(1, False, now_s=2.0)
    assert policy.events == [("expired", "a", 1)]
    assert router.ledger.loads[1].requests == 0 and not router.ledger.loads[1].alive
    assert router.tree.tokens_held(1) == 0
    router.set_alive(1, True, now_s=3.0)  # coming back up forgets nothing more
    assert router.ledger.loads[1].alive and policy.events == [("expired", "a", 1)]


def test_a_prompt_of_non_token_ids_is_routed_as_uncached():
    router, policy = make_router()
    router.route(make_request(rid="a", prefix=[1, 2, 3]), 0.0)
    bad = make_request(rid="b", prefix=[1, 2, -3])
    assert router.route(bad, 1.0) == 0
    assert policy.views[-1] == [0, 0]
    assert router.ledger.worker_of("b") == 0
