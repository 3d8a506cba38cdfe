"""Our controller inside real SGLang (CPU, dp=2, tiny model, KV events on, loopback).

One server for the whole module, started with `prefix_length_aware` and a small KV pool
(`--max-total-tokens 3072`) so that the eviction test really evicts.
"""

from __future__ import annotations

import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from conftest import generate, post_json, sglang_server

pytestmark = pytest.mark.sglang

KV_TOKENS = 3072


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sglang_server(tmp_path_factory, load_balance_method="prefix_length_aware",
                       max_total_tokens=KV_TOKENS) as srv:
        yield srv


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(10, 1000) for _ in range(n)]


def meta(reply: dict) -> dict:
    return reply["meta_info"]


def test_every_request_of_a_concurrent_batch_is_answered(server):
    rng = random.Random(1)
    prompts = [ids(rng, 40) for _ in range(12)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda p: generate(server.url, input_ids=p, max_new_tokens=6), prompts))
    assert len(replies) == 12
    assert all(meta(r)["completion_tokens"] == 6 for r in replies)
    assert {meta(r)["dp_rank"] for r in replies} <= {0, 1}


def test_a_batch_in_one_call_is_answered(server):
    rng = random.Random(9)
    reply = generate(server.url, input_ids=[ids(rng, 30) for _ in range(4)], max_new_tokens=3)
    assert isinstance(reply, list) and len(reply) == 4
    assert all(meta(r)["completion_tokens"] == 3 for r in reply)


def test_shared_prefix_lands_on_one_rank_and_hits_its_cache(server):
    rng = random.Random(2)
    prefix = ids(rng, 200)
    replies = [generate(server.url, input_ids=prefix + ids(rng, 10), max_new_tokens=4) for _ in range(5)]
    ranks = [meta(r)["dp_rank"] for r in replies]
    assert len(set(ranks)) == 1, ranks
    assert all(meta(r)["cached_tokens"] >= 200 for r in replies[1:]), [meta(r)["cached_tokens"] for r in replies]


def test_a_burst_of_one_prefix_prefills_it_at_most_once_per_rank(server):
    """Six requests of a new 600-token prefix at once: SGLang's FCFS batches would
    prefill it once per request that waits beside the first; the controller holds
    those until the first one's prefill is done (`prefix_hold.py`)."""
    rng = random.Random(21)
    prefix = ids(rng, 600)
    prompts = [prefix + ids(rng, 10) for _ in range(6)]
    before = (server.status() or {}).get("prefix_holds", {}).get("held_total", 0)
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda p: generate(server.url, input_ids=p, max_new_tokens=4), prompts))
    misses = [meta(r)["dp_rank"] for r in replies if meta(r)["cached_tokens"] < 600]
    status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=30) or {}
    held = status.get("prefix_holds", {}).get("held_total", 0) - before
    assert len(misses) == len(set(misses)), (misses, [meta(r)["cached_tokens"] for r in replies], held)


def test_pinned_requests_go_to_their_rank(server):
    rng = random.Random(3)
    for rank in (1, 0, 1):
        reply = generate(server.url, input_ids=ids(rng, 30), max_new_tokens=2, routed_dp_rank=rank)
        assert meta(reply)["dp_rank"] == rank


def wait_for_events_of(server, reply: dict, stored_before: int) -> None:
    """Until the mirror has been told of the pages a finished request stored: its
    uncached prompt tokens, and its output but the last token, whose KV is never
    computed (page size 1; SGLang publishes them after the prefill batch and when the
    worker goes idle, `scheduler.py`). Fails if they never arrive."""
    m = meta(reply)
    new = m["prompt_tokens"] - m["cached_tokens"] + m["completion_tokens"] - 1
    status = server.wait_status(lambda s: s["kv_events"]["stored_pages"] >= stored_before + new, timeout_s=20)
    assert status["kv_events"]["stored_pages"] >= stored_before + new, (m, status["kv_events"])


def test_mirror_agrees_with_the_cached_tokens_workers_report_under_eviction(server):
    """Fill both workers' KV pools past capacity with 12 prefix families, then probe every
    family with a fresh suffix: for each probe the mirror's figure for the chosen worker
    (recorded at dispatch) must equal the cached_tokens that worker reports."""
    rng = random.Random(4)
    families = [ids(rng, 300) for _ in range(12)]  # 3,600 tokens of prefixes > one pool
    for prefix in families:
        before = server.status()["kv_events"]["stored_pages"]
        reply = generate(server.url, input_ids=prefix + ids(rng, 5), max_new_tokens=4)
        wait_for_events_of(server, reply, before)
    status = server.wait_status(lambda s: s["kv_events"]["removed_pages"] > 0)
    assert status["kv_events"]["removed_pages"] > 0, "the pool never evicted: test is not exercising eviction"
    mismatches = []
    for i, prefix in enumerate(families):
        rid = f"probe-{i}-{uuid.uuid4().hex[:6]}"
        before = server.status()["kv_events"]["stored_pages"]
        reply = generate(server.url, input_ids=prefix + ids(rng, 5), max_new_tokens=2, rid=rid)
        decision = server.wait_status(lambda s: any(d["rid"] == rid for d in s["recent_decisions"]))
        record = next(d for d in decision["recent_decisions"] if d["rid"] == rid)
        assert record["worker"] == meta(reply)["dp_rank"]
        mirrored = record["cached_tokens"][record["worker"]]
        if mirrored != meta(reply)["cached_tokens"]:
            mismatches.append((i, mirrored, meta(reply)["cached_tokens"]))
        wait_for_events_of(server, reply, before)  # sequential probes: one's events land before the next
    assert not mismatches, f"(family, mirror, worker) disagreements: {mismatches}"
    assert status["tree"]["uncertain_mask"] == 0
    assert max(status["tree"]["tokens_held"]) <= KV_TOKENS


def test_flush_cache_reaches_both_workers(server):
    rng = random.Random(5)
    for rank in (0, 1):
        generate(server.url, input_ids=ids(rng, 50), max_new_tokens=2, routed_dp_rank=rank)
    status = server.wait_status(lambda s: all(t > 0 for t in s["tree"]["tokens_held"]))
    assert all(t > 0 for t in status["tree"]["tokens_held"])
    cleared_before = status["kv_events"]["cleared"]
    code, _ = post_json(server.url, "/flush_cache")
    assert code == 200
    status = server.wait_status(lambda s: s["kv_events"]["cleared"] >= cleared_before + 2)
    assert status["kv_events"]["cleared"] >= cleared_before + 2  # one AllBlocksCleared per rank
    assert status["tree"]["tokens_held"] == [0, 0]


def test_ledger_returns_to_zero_when_all_requests_finish(server):
    rng = random.Random(6)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: generate(server.url, input_ids=ids(rng, 60), max_new_tokens=8), range(8)))
    status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=10)
    assert status["in_flight"] == 0
    for load in status["loads"]:
        assert (load["requests"], load["queued_requests"], load["queued_prefill_tokens"],
                load["pending_decode_tokens"], load["kv_tokens_used"]) == (0, 0, 0, 0, 0), load
    assert status["expired"] == 0 and status["bad_reports"] == 0


def test_ledger_is_cross_checked_with_the_workers_load_snapshots(server):
    """SGLang's schedulers publish their own load each step; the controller reads it
    every second beside its ledger. Idle workers and an empty ledger agree, and no
    request had to be dropped for a lost completion report."""
    rng = random.Random(7)
    generate(server.url, input_ids=ids(rng, 40), max_new_tokens=4)
    status = server.wait_status(
        lambda s: s["in_flight"] == 0 and s["load_check"]["reports"] >= 4
        and all(c is not None and c["reported_requests"] == 0 for c in s["load_check"]["last"]),
        timeout_s=15)
    check = status["load_check"]
    assert check["stale_dropped"] == 0
    for comparison, load in zip(check["last"], status["loads"]):
        assert comparison["ledger_requests"] == comparison["reported_requests"] == 0
        assert load["kv_capacity_tokens"] == KV_TOKENS  # the worker's real KV pool


def test_an_aborted_request_leaves_the_ledger(server):
    """A request aborted mid-generation must not stay in the ledger (by its completion
    report, or by the cross-check with the worker's load once the worker is idle)."""
    rid = f"abort-{uuid.uuid4().hex[:8]}"
    rng = random.Random(8)
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(generate, server.url, input_ids=ids(rng, 40), max_new_tokens=3000, rid=rid)
        # Aborted mid-generation: after its prefill was reported.
        server.wait_status(lambda s: s["in_flight"] >= 1 and all(ld["queued_prefill_tokens"] == 0
                                                                 for ld in s["loads"]), timeout_s=30)
        code, _ = post_json(server.url, "/abort_request", {"rid": rid})
        assert code == 200
        try:
            reply.result(timeout=60)
        except Exception:
            pass  # an aborted request may end its HTTP call with an error status
    status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=20)
    assert status["in_flight"] == 0
    assert all(load["requests"] == 0 for load in status["loads"])


def test_requests_of_another_cache_salt_are_not_credited_with_its_cache(server):
    """SGLang keeps cache_salt namespaces apart (`radix_cache.py: RadixKey.child_key_at`)
    and its KV events name the salt: the mirror credits a prompt cached under salt
    "alpha" to "alpha" requests only, never to "beta" or unsalted ones."""
    rng = random.Random(12)
    prefix = ids(rng, 200)

    def decide(salt: str | None) -> tuple[dict, dict]:
        rid = f"salt-{salt}-{uuid.uuid4().hex[:6]}"
        fields = {"rid": rid} if salt is None else {"rid": rid, "cache_salt": salt}
        reply = generate(server.url, input_ids=prefix + ids(rng, 8), max_new_tokens=2, **fields)
        status = server.wait_status(lambda s: any(d["rid"] == rid for d in s["recent_decisions"]))
        return reply, next(d for d in status["recent_decisions"] if d["rid"] == rid)

    first, _ = decide("alpha")
    server.wait_status(lambda s: s["in_flight"] == 0 and s["tree"]["namespaces"] >= 1)
    again, record = decide("alpha")
    assert meta(again)["cached_tokens"] >= 200  # SGLang's own hit: the salt is the same
    assert record["cached_tokens"][meta(first)["dp_rank"]] >= 200, record
    for salt in ("beta", None):
        reply, record = decide(salt)
        assert meta(reply)["cached_tokens"] == 0, (salt, meta(reply))  # SGLang: another namespace
        assert record["cached_tokens"] == [0, 0], (salt, record)


def test_controller_is_idle_when_no_requests_arrive(server):
    pid = server.controller_pid()
    assert pid is not None
    proc = psutil.Process(pid)
    proc.cpu_percent(None)
    time.sleep(3.0)
    assert proc.cpu_percent(None) < 5.0


class _RankStatusFeed:
    """Tells the server that ranks went up or down, as SGLang's schedulers do under
    elastic EP (`scheduler.py: _maybe_report_active_ranks`): an `ActiveRanksOutput` sent
    to the tokenizer manager, which forwards it to the controller. The tokenizer
    manager's reply PULL is the only PULL its process binds (`tokenizer_manager.py:
    init_ipc_channels`); IMMEDIATE keeps the message off the other sockets it binds
    (they are PUSH / DEALER, whose handshakes with a PUSH fail)."""

    def __init__(self, server):
        import zmq

        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.LINGER, 1000)
        paths = {c.laddr for c in psutil.Process(server.proc.pid).net_connections(kind="unix")
                 if isinstance(c.laddr, str) and c.laddr}
        assert paths, "the server's main process binds no unix sockets"
        for path in paths:
            self.sock.connect(f"ipc://{path}")

    def send(self, status: list[bool]) -> None:
        from sglang.srt.managers.io_struct import ActiveRanksOutput, sock_send

        import zmq

        deadline = time.monotonic() + 20
        while True:  # IMMEDIATE: Again until a handshake with the reply PULL completed
            try:
                sock_send(self.sock, ActiveRanksOutput(status=status), flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise TimeoutError("the tokenizer manager's reply socket never accepted us") from None
                time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def test_zz_a_request_pinned_to_a_dead_rank_gets_an_error_and_the_server_keeps_serving(server):
    """Runs last: marking a rank down clears its mirror."""
    import urllib.error

    rng = random.Random(10)
    feed = _RankStatusFeed(server)
    try:
        feed.send([True, False])
        status = server.wait_status(lambda s: not s["loads"][1]["alive"], timeout_s=20)
        assert not status["loads"][1]["alive"], "the controller never heard that rank 1 went down"
        before = status["unroutable"]["error_replies"]
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as err:
            generate(server.url, input_ids=ids(rng, 20), max_new_tokens=2, routed_dp_rank=1, timeout_s=60)
        assert err.value.code == 503 and "routed_dp_rank=1 is not active" in err.value.read().decode()
        assert time.monotonic() - started < 30  # answered, not timed out
        replies = [generate(server.url, input_ids=ids(rng, 20), max_new_tokens=2) for _ in range(3)]
        assert [meta(r)["dp_rank"] for r in replies] == [0, 0, 0]  # the live rank serves everything
        status = server.wait_status(lambda s: s["unroutable"]["error_replies"] > before)
        assert status["unroutable"]["error_replies"] == before + 1
        assert status["tree"]["tokens_held"][1] == 0  # its mirror went with it
    finally:
        feed.send([True, True])
        status = server.wait_status(lambda s: all(ld["alive"] for ld in s["loads"]), timeout_s=20)
        feed.close()
    # Revived clean, and routable by the policy again, not only when pinned.
    assert status["loads"][1]["requests"] == 0 and status["tree"]["tokens_held"][1] == 0
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda p: generate(server.url, input_ids=p, max_new_tokens=24),
                                [ids(rng, 40) for _ in range(8)]))
    assert 1 in [meta(r)["dp_rank"] for r in replies], [meta(r)["dp_rank"] for r in replies]
    reply = generate(server.url, input_ids=ids(rng, 20), max_new_tokens=2, routed_dp_rank=1)
    assert meta(reply)["dp_rank"] == 1
