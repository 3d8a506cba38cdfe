"""Workers that go down, come back, or are activated at run time (`Router.set_alive`).

SGLang 0.5.23 changes its set of DP ranks at run time only under elastic EP: rank status
(`ActiveRanksOutput`) and scale-up into slots bound at launch (`ElasticScaleUpdateReq` ->
`DataParallelController.add_elastic_workers`); see README, "Running the controller". The router
has one worker per slot from the start; these tests check that a slot that comes up is
routable by every policy with clean state, and one that goes down is not.
"""

from __future__ import annotations

import pytest

from factories import make_request
from sglang_ext.core.policies import POLICIES
from sglang_ext.core.router import Router, RouterConfig


def fresh(rid: str, seed: int, tokens: int = 64, max_new_tokens: int = 64):
    prefix = [1 + (seed * 7919 + i * 31) % 30_000 for i in range(tokens)]
    return make_request(prompt_tokens=tokens, prefix=prefix, rid=rid, max_new_tokens=max_new_tokens)


def router_for(policy: str, exact_mirror: bool = False) -> Router:
    return Router(RouterConfig(policy=policy, num_workers=2, kv_capacity_tokens=100_000,
                               exact_mirror=exact_mirror, prefix_holds=False, cost_model="online"))


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_a_worker_that_comes_up_is_routable_by_every_policy_and_one_down_is_not(policy):
    router = router_for(policy)
    router.set_alive(1, False, now_s=0.0)  # an elastic slot not active yet
    down = [router.route(fresh(f"d{i}", i), now_s=0.01 * i).worker for i in range(8)]
    assert down == [0] * 8
    router.set_alive(1, True, now_s=1.0)
    up = [router.route(fresh(f"u{i}", 100 + i), now_s=1.0 + 0.01 * i).worker for i in range(16)]
    assert 1 in up, f"{policy} never routed to the worker that came up: {up}"
    router.set_alive(0, False, now_s=2.0)
    after = [router.route(fresh(f"a{i}", 200 + i), now_s=2.0 + 0.01 * i).worker for i in range(4)]
    assert after == [1] * 4


def test_a_revived_worker_starts_clean_whatever_arrived_while_it_was_down():
    router = router_for("prefix_length_aware", exact_mirror=True)
    router.tree.apply_stored(1, [1, 2, 3], None, [5, 6, 7])
    router.record_dispatch(fresh("x", 1), 1, 0, now_s=0.0)
    router.tree.mark_uncertain(1)
    router.set_alive(1, False, now_s=1.0)
    router.tree.apply_stored(1, [4, 5], None, [8, 9])  # a late batch of the dead rank
    router.set_alive(1, True, now_s=2.0)
    load = router.ledger.loads[1]
    assert load.alive and load.requests == 0 and load.kv_tokens_committed == 0
    assert router.tree.tokens_held(1) == 0 and not router.tree.is_uncertain(1)
    assert router.inflight.tokens(1) == 0 and router.inflight.requests(1) == 0
    assert router.columns.alive[1]
    assert router.load_check.status()["last"][1] is None


@pytest.mark.parametrize("policy", ["cache_aware", "preble"])
def test_a_policys_own_state_of_a_revived_worker_is_reset(policy):
    router = router_for(policy)
    prompt = fresh("a", 1, tokens=400)
    assert router.route(prompt, 0.0).worker == 0
    router.finished("a", 4, 0.5)
    router.set_alive(0, False, 1.0)
    router.set_alive(0, True, 1.1)
    if policy == "cache_aware":
        assert router.policy.tree.tokens_held(0) == 0
    else:
        tree = router.policy.tree
        assert tree.allocated_tokens[0] == 0
        assert all(0 not in node.cached and 0 not in node.alloc for node in tree.nodes)


def test_an_unknown_worker_is_a_clear_error_and_a_repeated_state_changes_nothing():
    router = router_for("round_robin")
    with pytest.raises(ValueError, match="worker 2 is not in 0..1"):
        router.set_alive(2, True, 0.0)
    router.route(fresh("a", 1), 0.0)
    worker = router.ledger.worker_of("a")
    router.set_alive(worker, True, 0.1)  # already up: its request stays booked
    assert router.ledger.worker_of("a") == worker


# ------------------------------------------------------ the controller (no SGLang processes)


def test_an_elastic_slot_activated_at_run_time_gets_requests_from_the_controller(controller_harness):
    """SGLang's scale-up message reaches the controller through the tokenizer manager
    (`tokenizer_manager.py: forward_elastic_scale_update`); the stock
    `add_elastic_workers` activates the slot and our override tells the router."""
    from sglang.srt.managers.io_struct import ElasticScaleUpdateReq
    from test_controller_dispatch import tokenized

    h = controller_harness(num_workers=3)
    ctl = h.ctl
    ctl.dp_active[2] = ctl.status[2] = False  # bound at launch, not active (max_dp_size > dp)
    ctl._refresh_active_workers()
    ctl._sync_alive()
    for i in range(4):
        h.send(tokenized(f"b{i}", prompt=[7 + i] * 8))
    h.run_until(lambda: len(ctl.router.ledger) == 4)
    assert [len(got) for got in h.received()] == [2, 2, 0]
    ctl.router.tree.apply_stored(0, [1, 2], None, [7, 7])  # cached under the old EP size
    h.send(ElasticScaleUpdateReq(success=True, effective_ep_size=3, slot_offset=2, slot_count=1))
    h.run_until(lambda: ctl.router.ledger.loads[2].alive)
    assert ctl.router.tree.tokens_held(0) == 0  # a namespace no new request is in
    for i in range(3):
        h.send(tokenized(f"a{i}", prompt=[50 + i] * 8))
    h.run_until(lambda: len(ctl.router.ledger) == 7)
    assert [len(got) for got in h.received()] == [1, 1, 1]


def test_the_controller_reads_the_requests_cache_namespace(controller_harness):
    from sglang_ext.controller import _request_of
    from sglang_ext.core.namespaces import CacheNamespace
    from test_controller_dispatch import tokenized

    message = tokenized("n")
    assert _request_of(message).namespace is None
    message.cache_salt, message.extra_key, message.lora_id, message.lora_name = "A", "k", "L1", "ad"
    assert _request_of(message).namespace == CacheNamespace("kL1", "A", "ad")


@pytest.fixture
def controller_harness(sglang_config):
    from test_controller_dispatch import Harness

    made = []

    def make(**kwargs):
        made.append(Harness(**kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


@pytest.fixture(scope="module")
def sglang_config():
    pytest.importorskip("sglang")
    from test_controller_dispatch import sglang_config as publish

    publish.__wrapped__()


# ------------------------------------------------------------------ the simulator


def test_a_worker_joining_mid_run_in_the_simulator_gets_requests_only_after_it_joined(tmp_path_factory):
    import dataclasses

    from cluster.engine import Simulation
    from cluster.config import resolve
    from test_sim_engine import BASE, react_trace

    trace = react_trace(tmp_path_factory, rate_rps=24, duration_s=6)
    config = dataclasses.replace(BASE, worker_joins="3@3.0", debug_checks=True)
    sim = Simulation(trace, resolve(config))
    outcome = sim.run()
    assert outcome.summary["succeeded"] == len(trace.requests)
    assert sim.joined_s == {3: 3.0}
    early = [r.worker for r in outcome.results if r.arrival_s < 3.0]
    late = [r.worker for r in outcome.results if r.arrival_s >= 3.0]
    assert early and 3 not in early
    assert late.count(3) > 0, late


@pytest.mark.parametrize("spec, message", [
    ("4@1", "the worker must be in 0..3"), ("1@x", "is not WORKER@SECONDS"), ("1@-1", "a finite time >= 0"),
    ("1@2,1@3", "once per worker"), ("0@1,1@1,2@1,3@1", "no worker is there from the start"),
])
def test_a_bad_worker_schedule_is_a_one_line_value_error(spec, message):
    from cluster.config import SimConfig

    with pytest.raises(ValueError, match=message):
        SimConfig(gpus=4, worker_joins=spec).check()
