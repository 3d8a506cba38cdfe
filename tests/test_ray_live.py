"""Our controller over SGLang's Ray path: real SGLang (CPU, dp=2, tiny model) whose
schedulers are Ray actors on a second Ray node, our hooks loaded there by the job's
worker setup hook, the feeds over TCP on the address the ranks advertised.

The Ray cluster is Ray's own `ray.cluster_utils.Cluster` on this machine: a head node
with no GPU (where the launcher's driver, our controller and the HTTP front end run) and
a second node declaring two logical GPUs, where SGLang's placement group (one bundle,
`{"CPU": 1, "GPU": 2}`, `sglang/srt/ray/engine.py`) can only land. The ranks bind their
feeds on 127.0.0.2 (`--feed-host`), an address neither the front end (127.0.0.1) nor the
shared KV-event config names, so the controller hears them only through what they
advertised.

SGLang's own channels on this path (controller -> scheduler, scheduler -> detokenizer)
are `ipc://` paths (`PortArgs.init_new`, sglang/srt/server_args.py, plain DP), which only
work because both Ray nodes share this machine's file system: SGLang's limit, not ours
(docs/multinode.md).
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import generate, sglang_server

pytestmark = pytest.mark.sglang
ray = pytest.importorskip("ray", reason="ray is not installed (requirements/ray.txt)")

FEED_HOST = "127.0.0.2"
KV_TOKENS = 4096


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, num_gpus=2)
        cluster.wait_for_nodes()
        yield cluster, worker
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    ray_cluster, _ = cluster
    with sglang_server(tmp_path_factory, load_balance_method="prefix_length_aware", max_total_tokens=KV_TOKENS,
                       startup_timeout_s=420, extra_args=["--use-ray", "--feed-host", FEED_HOST],
                       env={"RAY_ADDRESS": ray_cluster.address}) as srv:
        yield srv


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(10, 1000) for _ in range(n)]


def meta(reply: dict) -> dict:
    return reply["meta_info"]


def test_the_ranks_run_as_actors_on_the_second_node(server, cluster):
    ray_cluster, worker = cluster
    ray.init(address=ray_cluster.address)
    try:
        groups = [g for g in ray.util.placement_group_table().values() if g["state"] == "CREATED"]
        assert len(groups) == 1, groups
        assert set(groups[0]["bundles_to_node_id"].values()) == {worker.node_id}
    finally:
        ray.shutdown()


def test_the_controller_connected_to_the_feeds_the_ranks_advertised(server):
    log = server.log_file.read_text(errors="replace")
    line = next((ln for ln in log.splitlines() if "feeds the ranks advertised" in ln), None)
    assert line is not None, "the controller saw no advertised feeds"
    for rank in (0, 1):
        assert f"{rank}: {{'dp_rank': {rank}, 'reports': 'tcp://{FEED_HOST}:" in line, line
    assert f"'kv_events': 'tcp://{FEED_HOST}:" in line


def test_every_request_of_a_concurrent_batch_is_answered(server):
    rng = random.Random(1)
    prompts = [ids(rng, 40) for _ in range(12)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda p: generate(server.url, input_ids=p, max_new_tokens=6), prompts))
    assert len(replies) == 12
    assert all(meta(r)["completion_tokens"] == 6 for r in replies)
    assert {meta(r)["dp_rank"] for r in replies} == {0, 1}


def test_shared_prefix_lands_on_one_rank_and_hits_its_cache(server):
    rng = random.Random(2)
    prefix = ids(rng, 200)
    replies = [generate(server.url, input_ids=prefix + ids(rng, 10), max_new_tokens=4) for _ in range(5)]
    ranks = [meta(r)["dp_rank"] for r in replies]
    assert len(set(ranks)) == 1, ranks
    assert all(meta(r)["cached_tokens"] >= 200 for r in replies[1:]), [meta(r)["cached_tokens"] for r in replies]


def test_the_mirror_equals_the_cached_tokens_the_workers_report(server):
    """Fed only by the ranks' KV events over TCP: for each probe, the mirror's figure
    for the chosen worker (recorded at dispatch) equals what that worker reports."""
    rng = random.Random(4)
    families = [ids(rng, 150) for _ in range(6)]
    for prefix in families:
        generate(server.url, input_ids=prefix + ids(rng, 5), max_new_tokens=3)
    status = server.wait_status(lambda s: s["kv_events"]["stored_pages"] >= 6 * 150)
    assert status["kv_events"]["stored_pages"] >= 6 * 150, status["kv_events"]
    mismatches = []
    for i, prefix in enumerate(families):
        rid = f"probe-{i}-{uuid.uuid4().hex[:6]}"
        reply = generate(server.url, input_ids=prefix + ids(rng, 5), max_new_tokens=2, rid=rid)
        decision = server.wait_status(lambda s: any(d["rid"] == rid for d in s["recent_decisions"]))
        record = next(d for d in decision["recent_decisions"] if d["rid"] == rid)
        assert record["worker"] == meta(reply)["dp_rank"]
        assert meta(reply)["cached_tokens"] >= 150  # the family's prefix was cached
        if record["cached_tokens"][record["worker"]] != meta(reply)["cached_tokens"]:
            mismatches.append((i, record["cached_tokens"][record["worker"]], meta(reply)["cached_tokens"]))
        # The probe's own events land before the next one is routed.
        server.wait_status(lambda s: s["in_flight"] == 0)
        time.sleep(0.2)
    assert not mismatches, f"(family, mirror, worker) disagreements: {mismatches}"
    assert status["tree"]["uncertain_mask"] == 0


def test_completions_reach_the_ledger_and_it_returns_to_zero(server):
    rng = random.Random(6)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: generate(server.url, input_ids=ids(rng, 60), max_new_tokens=8), range(8)))
    status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=10)
    assert status["in_flight"] == 0
    for load in status["loads"]:
        assert (load["requests"], load["queued_requests"], load["queued_prefill_tokens"],
                load["pending_decode_tokens"], load["kv_tokens_used"]) == (0, 0, 0, 0, 0), load
    # Nothing left the ledger by expiry: every request's FINISHED report arrived.
    assert status["expired"] == 0 and status["bad_reports"] == 0
