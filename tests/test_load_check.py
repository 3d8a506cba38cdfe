"""Cross-check of the ledger with the workers' own load reports (`load_check.py`)."""

from __future__ import annotations

import time

import pytest
from sglang.srt.managers.load_snapshot import LoadSnapshot, QueueMetrics, ShmLoadSnapshotReader, ShmLoadSnapshotWriter

from sglang_ext.core.ledger import LoadLedger
from sglang_ext.core.load_check import LoadCrossCheck, ReportedLoad, reports_from_snapshots
from sglang_ext.core.router import Router, RouterConfig
from factories import make_request


def idle(worker: int, at_s: float, capacity: int = 0) -> ReportedLoad:
    return ReportedLoad(worker, at_s, 0, 0, 0, capacity)


def busy(worker: int, at_s: float) -> ReportedLoad:
    return ReportedLoad(worker, at_s, 1, 2, 100, 0)


def ledger_with(*dispatches: tuple[str, int, float]) -> LoadLedger:
    ledger = LoadLedger(2, 1000)
    for rid, worker, at in dispatches:
        ledger.on_dispatch(rid, worker, 50, 10, 20, at)
    return ledger


def test_two_idle_reports_drop_what_was_sent_before_the_first():
    ledger = ledger_with(("old", 0, 0.0), ("other-worker", 1, 0.5), ("late", 0, 9.0))
    check = LoadCrossCheck(2, grace_s=2.0)
    assert check.observe(idle(0, 10.0), ledger) == []  # one idle report is not enough
    assert check.observe(idle(0, 11.0), ledger) == ["old"]  # sent before 10 - 2
    assert "late" in ledger and "other-worker" in ledger
    assert ledger.loads[0].requests == 1 and check.stale_dropped == 1


def test_a_busy_report_resets_the_idle_streak():
    ledger = ledger_with(("r", 0, 0.0))
    check = LoadCrossCheck(2, grace_s=1.0)
    check.observe(idle(0, 10.0), ledger)
    check.observe(busy(0, 11.0), ledger)
    assert check.observe(idle(0, 12.0), ledger) == []
    assert "r" in ledger
    assert check.observe(idle(0, 13.0), ledger) == ["r"]


def test_nothing_is_dropped_while_the_worker_is_busy():
    ledger = ledger_with(("r", 0, 0.0))
    check = LoadCrossCheck(2)
    for t in range(10, 20):
        assert check.observe(busy(0, float(t)), ledger) == []
    assert check.last[0].ledger_requests == 1 and check.last[0].reported_requests == 3


def test_requests_in_the_grammar_paused_or_retracted_queues_keep_a_worker_busy():
    """Nothing running or waiting, but a request held in another queue: not idle, nothing dropped."""
    ledger = ledger_with(("r", 0, 0.0))
    check = LoadCrossCheck(2, grace_s=1.0)
    held = ReportedLoad(0, 10.0, 0, 0, 50, 0, held_requests=1)
    assert not held.idle
    check.observe(held, ledger)
    assert check.observe(ReportedLoad(0, 11.0, 0, 0, 50, 0, held_requests=1), ledger) == []
    assert "r" in ledger and check.last[0].reported_requests == 1


def test_the_reported_kv_pool_replaces_the_configured_capacity():
    ledger = ledger_with()
    LoadCrossCheck(2).observe(idle(1, 1.0, capacity=4321), ledger)
    assert ledger.loads[1].kv_capacity_tokens == 4321 and ledger.loads[0].kv_capacity_tokens == 1000


def test_a_report_for_an_unknown_worker_is_refused():
    with pytest.raises(ValueError, match="worker 5"):
        LoadCrossCheck(2).observe(idle(5, 1.0), ledger_with())


def test_router_reconcile_tells_the_policy_and_empties_the_ledger():
    router = Router(RouterConfig(policy="round_robin", num_workers=2, kv_capacity_tokens=1000))
    expired = []
    router.policy.on_expired = lambda rid, worker, now_s: expired.append((rid, worker))
    for i in range(4):
        router.route(make_request(rid=f"r{i}"), float(i))
    router.reconcile(idle(0, 10.0), 10.0)
    router.reconcile(idle(1, 10.0), 10.0)
    router.reconcile(idle(0, 11.0), 11.0)
    router.reconcile(idle(1, 11.0), 11.0)
    assert len(router.ledger) == 0
    assert sorted(expired) == [("r0", 0), ("r1", 1), ("r2", 0), ("r3", 1)]
    assert all(ld.requests == ld.queued_prefill_tokens == ld.pending_decode_tokens == 0
               for ld in router.ledger.loads)


def test_sglang_shared_memory_snapshots_become_reports(tmp_path):
    """SGLang's own writer and reader: what the live controller reads each second."""
    path = str(tmp_path / "loads")
    writers = [ShmLoadSnapshotWriter(path, 2, rank) for rank in range(2)]
    try:
        wall = time.time()
        writers[1].write(LoadSnapshot(dp_rank=1, timestamp=wall - 3.0, num_running_reqs=2, num_waiting_reqs=1,
                                      num_used_tokens=640, max_total_num_tokens=8192))
        reader = ShmLoadSnapshotReader(path, 2)
        try:
            reports = {r.worker: r for r in reports_from_snapshots(reader.read_all(), 100.0, wall)}
        finally:
            reader.close()
    finally:
        for w in writers:
            w.close()
    assert reports[1] == ReportedLoad(1, 97.0, 2, 1, 640, 8192)
    assert reports[0].idle and reports[0].worker == 0


@pytest.mark.parametrize("queue", ["grammar", "paused", "retracted"])
def test_sglang_snapshot_with_a_request_outside_running_and_waiting_is_not_idle(tmp_path, queue):
    """SGLang counts these queues apart from num_waiting_reqs (its QueueMetrics section)."""
    path = str(tmp_path / "loads")
    writer = ShmLoadSnapshotWriter(path, 1, 0)
    try:
        counts = {"waiting": 0, "grammar": 0, "paused": 0, "retracted": 0, "prealloc_ready": 0, queue: 1}
        writer.write(LoadSnapshot(dp_rank=0, timestamp=time.time(), queues=QueueMetrics(**counts)))
        reader = ShmLoadSnapshotReader(path, 1)
        try:
            [report] = reports_from_snapshots(reader.read_all(), 100.0, time.time())
        finally:
            reader.close()
    finally:
        writer.close()
    assert report.held_requests == 1 and not report.idle
