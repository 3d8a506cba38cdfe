"""Tests of the per-worker load ledger (`sglang_ext.core.ledger`)."""

from __future__ import annotations

import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_ext.core.ledger import LoadLedger

PROPS = settings(max_examples=int(__import__("os").environ.get("LEDGER_EXAMPLES", 150)), derandomize=True, deadline=None)
# The KV figures are the router's (derived from the mirror), not the ledger's: see test_router.py.
FIELDS = ("requests", "queued_requests", "queued_prefill_tokens", "pending_decode_tokens")


def totals_from_entries(ledger: LoadLedger) -> list[dict[str, int]]:
    """The ledger's figures recomputed from scratch over its live entries."""
    out = [dict.fromkeys(FIELDS, 0) for _ in ledger.loads]
    for entry in ledger._entries.values():
        t = out[entry.worker]
        t["requests"] += 1
        t["pending_decode_tokens"] += entry.expected_output_tokens
        if not entry.prefilled:
            t["queued_requests"] += 1
            t["queued_prefill_tokens"] += entry.uncached_tokens
    return out


def figures(ledger: LoadLedger) -> list[dict[str, int]]:
    return [{f: getattr(load, f) for f in FIELDS} for load in ledger.loads]


def test_lifecycle_of_one_request():
    ledger = LoadLedger(2, 1000)
    ledger.on_dispatch("a", 1, prompt_tokens=100, cached_tokens=30, expected_output_tokens=20, now_s=0.0)
    load = ledger.loads[1]
    assert (load.requests, load.queued_requests, load.queued_prefill_tokens,
            load.pending_decode_tokens) == (1, 1, 70, 20)
    assert ledger.on_prefill_done("a")
    assert not ledger.on_prefill_done("a")  # reported twice: counted once
    assert (load.requests, load.queued_requests, load.queued_prefill_tokens) == (1, 0, 0)
    done = ledger.on_finished("a")
    assert done is not None and done.worker == 1 and done.uncached_tokens == 70
    assert figures(ledger) == [dict.fromkeys(FIELDS, 0)] * 2
    assert ledger.on_finished("a") is None and len(ledger) == 0


def test_cached_beyond_the_prompt_and_negative_lengths_clamp_to_zero():
    ledger = LoadLedger(1, 1000)
    ledger.on_dispatch("a", 0, prompt_tokens=10, cached_tokens=50, expected_output_tokens=-3, now_s=0.0)
    assert ledger.loads[0].queued_prefill_tokens == 0 and ledger.loads[0].pending_decode_tokens == 0


def test_redispatching_a_rid_does_not_double_count():
    ledger = LoadLedger(2, 1000)
    ledger.on_dispatch("a", 0, 100, 0, 10, now_s=0.0)
    ledger.on_dispatch("a", 0, 100, 0, 10, now_s=1.0)
    assert ledger.loads[0].requests == 1 and ledger.loads[0].queued_prefill_tokens == 100
    ledger.on_prefill_done("a")
    ledger.on_dispatch("a", 1, 100, 40, 10, now_s=2.0)  # retried elsewhere after prefill
    assert figures(ledger)[0] == dict.fromkeys(FIELDS, 0)
    assert ledger.loads[1].requests == 1 and ledger.loads[1].queued_prefill_tokens == 60
    assert len(ledger) == 1 and ledger.worker_of("a") == 1


def test_expiry_drops_only_old_entries_and_logs(caplog):
    ledger = LoadLedger(2, 1000, expiry_s=10.0)
    ledger.on_dispatch("old", 0, 50, 0, 5, now_s=0.0)
    ledger.on_dispatch("old2", 1, 60, 0, 5, now_s=1.0)
    ledger.on_prefill_done("old2")
    ledger.on_dispatch("new", 0, 70, 0, 5, now_s=8.0)
    with caplog.at_level(logging.WARNING, logger="sglang_ext.core.ledger"):
        assert ledger.expire(now_s=9.0) == []
        assert not caplog.records
        assert ledger.expire(now_s=11.5) == ["old", "old2"]
    assert len(caplog.records) == 1 and "old" in caplog.records[0].getMessage()
    assert ledger.expired == 2 and "new" in ledger and len(ledger) == 1
    assert figures(ledger) == totals_from_entries(ledger)
    assert ledger.loads[1].requests == 0 and ledger.loads[0].queued_prefill_tokens == 70
    # A report for an expired request is ignored, not subtracted twice.
    assert ledger.on_finished("old") is None
    assert figures(ledger) == totals_from_entries(ledger)


def test_redispatch_refreshes_the_expiry_clock():
    ledger = LoadLedger(1, 1000, expiry_s=10.0)
    ledger.on_dispatch("a", 0, 10, 0, 1, now_s=0.0)
    ledger.on_dispatch("b", 0, 10, 0, 1, now_s=5.0)
    ledger.on_dispatch("a", 0, 10, 0, 1, now_s=6.0)  # retried: now the newest entry
    assert ledger.expire(now_s=15.0) == ["b"]
    assert ledger.expire(now_s=16.0) == ["a"]


def test_forget_worker_and_alive_flag():
    ledger = LoadLedger(2, [100, 200])
    assert [load.kv_capacity_tokens for load in ledger.loads] == [100, 200]
    ledger.on_dispatch("a", 0, 10, 0, 1, 0.0)
    ledger.on_dispatch("b", 1, 10, 0, 1, 0.0)
    assert ledger.forget_worker(0) == ["a"]
    assert figures(ledger)[0] == dict.fromkeys(FIELDS, 0) and ledger.loads[1].requests == 1
    ledger.set_alive(0, False)
    assert not ledger.loads[0].alive


# -------------------------------------------------------------- property based

RIDS = [f"r{i}" for i in range(6)]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("dispatch"), st.sampled_from(RIDS), st.integers(0, 2),
                  st.integers(0, 500), st.integers(0, 600), st.integers(0, 300)),
        st.tuples(st.just("prefill"), st.sampled_from(RIDS)),
        st.tuples(st.just("finish"), st.sampled_from(RIDS)),
        st.tuples(st.just("expire")),
        st.tuples(st.just("tick"), st.floats(0.0, 8.0)),
    ),
    max_size=60,
)


@PROPS
@given(ops)
def test_totals_always_equal_the_sum_over_live_entries(sequence):
    ledger = LoadLedger(3, 10_000, expiry_s=20.0)
    now = 0.0
    dispatched_at: dict[str, float] = {}
    for op in sequence:
        kind = op[0]
        if kind == "dispatch":
            _, rid, worker, prompt, cached, expected = op
            ledger.on_dispatch(rid, worker, prompt, cached, expected, now)
            dispatched_at[rid] = now
        elif kind == "prefill":
            ledger.on_prefill_done(op[1])
        elif kind == "finish":
            ledger.on_finished(op[1])
            dispatched_at.pop(op[1], None)
        elif kind == "expire":
            dropped = ledger.expire(now)
            # Only entries at least `expiry_s` old go, and every such entry goes (the
            # clock is monotonic, so dispatch order is age order).
            assert all(now - dispatched_at[rid] >= ledger.expiry_s for rid in dropped)
            for rid in dropped:
                del dispatched_at[rid]
            assert all(now - t < ledger.expiry_s for t in dispatched_at.values())
        else:
            now += op[1]
        assert figures(ledger) == totals_from_entries(ledger)
        assert set(dispatched_at) == set(ledger._entries)
        assert all(min(v.values()) >= 0 for v in figures(ledger))
    for rid in list(dispatched_at):
        ledger.on_finished(rid)
    assert len(ledger) == 0
    assert figures(ledger) == [dict.fromkeys(FIELDS, 0)] * 3
