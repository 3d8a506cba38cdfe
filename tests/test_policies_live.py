"""Every policy drives real SGLang (CPU, dp=2, tiny model) through our controller.

One server per policy (module-scoped, parametrized), started and stopped in turn. Each
answers a concurrent batch, accounts for it (the ledger returns to zero), and the
content-aware policies keep a shared prefix on one rank with cache hits, on an idle
cluster where nothing else competes.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import generate, sglang_server
from sglang_ext.core.policies import POLICIES

pytestmark = pytest.mark.sglang

PREFIX_POLICIES = {"prefix_length_aware", "cache_aware", "kv_cost", "lmetric", "preble"}


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
    else:
        # Content-blind policies: the completion report of one request may or may not
        # have reached the ledger before the next arrives, so either rank may serve it.
        assert {m["dp_rank"] for m in replies} <= {0, 1}
