"""Every policy drives real SGLang (CPU, dp=2, tiny model) through our controller.

One server per policy (module-scoped, parametrized), started and stopped in turn. Each
answers a concurrent batch, accounts for it (the ledger returns to zero), and the
content-aware policies keep a shared prefix on one rank with cache hits, on an idle
cluster where nothing else competes.
"""

from __future__ import annotations

import contextlib
import random
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import generate, post_json, sglang_server
from sglang_ext.core.policies import POLICIES

pytestmark = pytest.mark.sglang

PREFIX_POLICIES = {"prefix_length_aware", "cache_aware", "kv_cost", "lmetric", "preble"}
LOAD_BALANCERS = {"total_requests", "total_tokens"}  # content-blind, load-aware


@pytest.fixture(scope="module", params=sorted(POLICIES))
def server(request, tmp_path_factory):
    with sglang_server(tmp_path_factory, load_balance_method=request.param) as srv:
        srv.policy = request.param
        yield srv


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(10, 1000) for _ in range(n)]


def test_policy_serves_and_accounts_for_a_concurrent_batch(server):
    rng = random.Random(7)
    prompts = [ids(rng, 50) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: generate(server.url, input_ids=p, max_new_tokens=4), prompts))
    assert all(r["meta_info"]["completion_tokens"] == 4 for r in replies)
    # The status file is rewritten at most every 0.2 s: wait for one written after this
    # batch was dispatched (a fresh server has counted only SGLang's warm-up request or
    # two), not the one from before it, which also shows nothing in flight.
    status = server.wait_status(lambda s: s["in_flight"] == 0 and sum(s["dispatched_by_worker"]) >= 8)
    assert status["policy"] == server.policy
    assert status["in_flight"] == 0 and all(ld["requests"] == 0 for ld in status["loads"])
    if server.policy == "round_robin":
        assert sum(status["dispatched_by_worker"]) >= 8 and min(status["dispatched_by_worker"]) >= 4


def test_policy_routing_shape(server):
    rng = random.Random(8)
    if server.policy == "round_robin":
        ranks = [generate(server.url, input_ids=ids(rng, 20), max_new_tokens=2)["meta_info"]["dp_rank"]
                 for _ in range(6)]
        assert all(a != b for a, b in zip(ranks, ranks[1:])), ranks  # strictly alternating
        return
    prefix = ids(rng, 120)
    replies = [generate(server.url, input_ids=prefix + ids(rng, 8), max_new_tokens=2)["meta_info"]
               for _ in range(4)]
    assert all(m["completion_tokens"] == 2 for m in replies)
    if server.policy in PREFIX_POLICIES:
        assert len({m["dp_rank"] for m in replies}) == 1, [m["dp_rank"] for m in replies]
        assert all(m["cached_tokens"] >= 120 for m in replies[1:])
    elif server.policy in LOAD_BALANCERS:
        check_a_busy_rank_is_avoided(server, rng)
    else:
        check_random_choices_are_served_as_decided(server, rng)


def check_a_busy_rank_is_avoided(server, rng: random.Random) -> None:
    """A long request holds one rank; short ones, each sent once the ledger is back to
    the long one alone, see one request (and its tokens) there and none on the other
    rank: a load balancer sends every one of them to the other rank."""
    rid = f"long-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(1) as pool:
        long_reply = pool.submit(generate, server.url, input_ids=ids(rng, 40), max_new_tokens=3000, rid=rid)
        try:
            status = server.wait_status(lambda s: s["in_flight"] == 1 and decided(s, rid) is not None, timeout_s=30)
            busy = decided(status, rid)
            assert busy is not None, "the long request was never dispatched"
            ranks = []
            for _ in range(3):
                ranks.append(generate(server.url, input_ids=ids(rng, 40), max_new_tokens=2)["meta_info"]["dp_rank"])
                # A status written after this request was dispatched and finished (a
                # stale one from before its dispatch also shows one in flight).
                dispatched = sum(status["dispatched_by_worker"]) + len(ranks)
                server.wait_status(lambda s: s["in_flight"] == 1 and sum(s["dispatched_by_worker"]) >= dispatched)
            assert ranks == [1 - busy] * 3, f"rank {busy} was busy; short requests went to {ranks}"
        finally:
            post_json(server.url, "/abort_request", {"rid": rid})
            with contextlib.suppress(Exception):
                long_reply.result(timeout=60)


def check_random_choices_are_served_as_decided(server, rng: random.Random) -> None:
    """Each reply comes from the rank the controller decided on (its status file), and
    16 uniform choices of 2 ranks use both (all on one rank: probability 2**-15)."""
    replies = [generate(server.url, input_ids=ids(rng, 20), max_new_tokens=2)["meta_info"] for _ in range(16)]
    status = server.wait_status(lambda s: all(decided(s, m["id"]) is not None for m in replies))
    assert [decided(status, m["id"]) for m in replies] == [m["dp_rank"] for m in replies]
    assert {m["dp_rank"] for m in replies} == {0, 1}


def decided(status: dict, rid: str) -> int | None:
    """The worker the controller chose for `rid`, from the status file's recent decisions."""
    return next((d["worker"] for d in status["recent_decisions"] if d["rid"] == rid), None)
