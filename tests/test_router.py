"""The host-independent routing core: mirror + ledger + policy, driven without sockets."""

from __future__ import annotations

import json

from sglang_ext.core.policies import LengthSource
from sglang_ext.core.policies.base import Policy
from sglang_ext.core.router import Router, RouterConfig
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
    from sglang_ext.core.policies import PolicyConfig

    policy = Recorder(PolicyConfig(2), choice)
    return Router(config, policy), policy


def test_lifecycle_reaches_policy_and_ledger():
    router, policy = make_router(choice=1)
    req = make_request(prompt_tokens=40, max_new_tokens=16, rid="a")
    assert router.route(req, now_s=0.0).worker == 1
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
    router.finished("a", 1, 0.5)
    router.route(make_request(rid="b"), 1.0)
    assert policy.views[1] == [0, 0] and router.tree.tokens_held(0) == 0


def test_a_burst_follower_sees_the_prompt_in_flight_before_any_event():
    """Exact mode learns of a prefix only from the prefill's events; until then the
    worker's in-flight prompt says it is about to be cached there."""
    router, policy = make_router(exact_mirror=True, choice=1)
    prefix = list(range(1, 201))
    router.route(make_request(prompt_tokens=230, prefix=prefix, rid="lead"), 0.0)
    follow = make_request(prompt_tokens=240, prefix=prefix, rid="follow")
    follow.input_ids[200:] = range(30_000, 30_040)
    router.route(follow, 0.0)
    assert policy.views[1] == [0, 200]
    router.finished("lead", 1, 1.0)
    router.finished("follow", 1, 1.0)
    router.route(make_request(prompt_tokens=240, prefix=prefix, rid="later"), 2.0)
    assert policy.views[2] == [0, 0]  # nothing in flight, no events: nothing known


def test_shared_prefix_is_counted_once_at_capacity():
    """Eight in-flight requests of 1,000 shared + 50 own tokens on a 4,096-token worker
    hold about 1,400 tokens, not 8,400: none is pushed to the worker without the prefix
    (the per-request sum sent request 6 away)."""
    for exact in (False, True):
        config = RouterConfig(policy="prefix_length_aware", num_workers=2, kv_capacity_tokens=4096,
                              exact_mirror=exact)
        router = Router(config)
        prefix = list(range(1, 1001))
        if exact:  # worker 0 already caches the prefix (its events arrived)
            router.tree.apply_stored(0, [h + 7 for h in prefix], None, prefix)
        else:
            router.route(make_request(prompt_tokens=1000, prefix=prefix, max_new_tokens=16, rid="warm"), 0.0)
            router.finished("warm", 16, 0.5)
        placed = []
        for i in range(8):
            req = make_request(prompt_tokens=1050, prefix=prefix, max_new_tokens=16, rid=f"r{i}")
            req.input_ids[1000:] = range(20_000 + 50 * i, 20_050 + 50 * i)
            placed.append(router.route(req, 1.0 + i).worker)
            router.prefill_done(f"r{i}", 1.0 + i)
        assert placed == [0] * 8, (exact, placed)
        load = router.ledger.loads[0]
        assert load.kv_tokens_used == 1000 + 8 * 50  # the prefix once, each own part once
        assert load.kv_tokens_committed < 4096


def test_uncertain_worker_matches_count_as_zero():
    router, policy = make_router()
    router.route(make_request(prompt_tokens=50, rid="a"), 0.0)
    router.finished("a", 1, 0.5)  # no longer in flight: only the mirror knows it
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
    assert router.route(bad, 1.0).worker == 0
    assert policy.views[-1] == [0, 0]
    assert router.ledger.worker_of("b") == 0


class HoldingRecorder(Recorder):
    holds_for_prefix = True


def _holding_router(**cfg) -> tuple[Router, Recorder]:
    from sglang_ext.core.policies import PolicyConfig

    config = RouterConfig(policy="round_robin", num_workers=2, kv_capacity_tokens=10_000, exact_mirror=True, **cfg)
    policy = HoldingRecorder(PolicyConfig(2), 1)
    return Router(config, policy), policy


def _family(rid: str, own: int, prefix=tuple(range(1, 301))):
    req = make_request(prompt_tokens=340, prefix=list(prefix), rid=rid)
    req.input_ids[300:] = range(40_000 + 40 * own, 40_040 + 40 * own)
    return req


def test_a_follower_waits_for_its_leaders_prefill_then_goes_to_the_same_worker():
    router, _ = _holding_router()
    assert not router.route(_family("lead", 0), 0.0).held
    router.route(_family("f1", 1), 0.1)
    assert router.route(_family("f2", 2), 0.2).held and len(router.holds) == 2
    assert router.take_released(0.3) == []
    router.prefill_done("lead", 1.0)
    assert router.take_released(1.0) == ["f1", "f2"]
    assert router.ledger.worker_of("f1") == 1 and len(router.holds) == 0
    # Counted as the worker's queued prefill from the decision on: the prefix once.
    assert router.ledger.loads[1].queued_prefill_tokens == 2 * 40


def test_a_queued_prompt_of_non_token_ids_leads_no_one_and_breaks_no_follower():
    router, _ = _holding_router()
    bad = _family("bad", 0)
    bad.input_ids[320] = -5  # shares the family's prefix, but is no token ids
    assert router.route(bad, 0.0).worker == 1
    router.route(_family("lead", 1), 0.1)
    follower = router.route(_family("f1", 2), 0.2)  # compared with the queued prompts
    assert follower.held and router.holds._held["f1"].leader == "lead"


def test_no_hold_when_the_mirror_already_has_the_prefix_or_for_other_policies():
    router, _ = _holding_router()
    prefix = list(range(1, 301))
    router.tree.apply_stored(1, [p + 5 for p in prefix], None, prefix)
    router.route(_family("lead", 0), 0.0)
    assert not router.route(_family("f1", 1), 0.1).held
    plain, _ = make_router(exact_mirror=True, choice=1)
    plain.route(_family("lead", 0), 0.0)
    assert not plain.route(_family("f1", 1), 0.1).held


def test_prefix_holds_off_sends_a_follower_at_once():
    router, _ = _holding_router(prefix_holds=False)
    router.route(_family("lead", 0), 0.0)
    assert not router.route(_family("f1", 1), 0.1).held and len(router.holds) == 0


def test_a_hold_ends_when_the_leader_leaves_or_after_max_hold_s():
    router, _ = _holding_router()
    router.route(_family("lead", 0), 0.0)
    router.route(_family("f1", 1), 0.0)
    router.finished("lead", 1, 0.5)  # finished without a prefill report (a lost one)
    assert router.take_released(0.5) == ["f1"]
    other = tuple(range(501, 801))
    router.route(_family("lead2", 3, other), 1.0)
    router.route(_family("f2", 4, other), 1.0)
    assert router.take_released(1.0 + router.holds.max_hold_s - 0.1) == []
    assert router.take_released(1.0 + router.holds.max_hold_s) == ["f2"] and router.holds.timeouts == 1


def test_decision_and_snapshot_show_what_the_router_saw_and_holds():
    router, _ = make_router(choice=1, exact_mirror=True)
    prefix = list(range(1, 101))
    router.tree.apply_stored(1, [p + 7 for p in prefix], None, prefix)
    decision = router.route(make_request(prompt_tokens=130, prefix=prefix, rid="a"), 0.0)
    assert (decision.worker, decision.cached_tokens, decision.held) == (1, [0, 100], False)
    snap = router.snapshot()
    assert snap["in_flight"] == 1 and snap["tree"]["tokens_held"] == [0, 100]
    assert [ld["queued_prefill_tokens"] for ld in snap["loads"]] == [0, 30]
    json.dumps(snap)  # plain data: the status file writes it as is
