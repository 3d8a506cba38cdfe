"""`core/pending.py`: requests parked for their length prediction (host-free rules the
controller and the simulator share). Times are passed in; the router is real."""

from __future__ import annotations

import pytest

from sglang_ext.core.pending import PendingConfig, PendingPredictions
from sglang_ext.core.policies import LengthSource
from sglang_ext.core.router import Router, RouterConfig
from factories import make_request


def router() -> Router:
    return Router(RouterConfig(policy="round_robin", num_workers=2, length_source=LengthSource.PREDICTED))


def pending_decode(r: Router) -> int:
    return sum(ld.pending_decode_tokens for ld in r.ledger.loads)


def test_a_prediction_in_time_releases_the_request_with_it():
    p = PendingPredictions(PendingConfig(max_wait_s=0.02))
    req = make_request(rid="a", max_new_tokens=512)
    assert p.park(req, "payload", now_s=1.0)
    assert p.due(1.019) == [] and p.next_deadline_s() == pytest.approx(1.02)
    released = p.deliver("a", 37, 1.01, router())
    assert released.request is req and released.payload == "payload" and released.predicted
    assert req.predicted_output_tokens == 37 and len(p) == 0 and p.stats.predicted_in_time == 1


def test_a_late_prediction_reweighs_the_ledger_once_and_not_after_the_request_finished():
    r, p = router(), PendingPredictions(PendingConfig(max_wait_s=0.02))
    for rid in ("late", "done"):
        assert p.park(make_request(rid=rid, max_new_tokens=512), None, 0.0)
    released = p.due(0.02)
    assert [x.request.rid for x in released] == ["late", "done"] and not any(x.predicted for x in released)
    for x in released:
        r.route(x.request, 0.02)
    assert pending_decode(r) == 1024  # both on the fallback
    p.forget("done")  # finished before its prediction came
    assert p.deliver("late", 40, 0.5, r) is None
    assert p.deliver("done", 40, 0.5, r) is None
    assert pending_decode(r) == 512 + 40
    assert p.deliver("late", 7, 0.6, r) is None  # a second answer changes nothing
    assert pending_decode(r) == 512 + 40 and p.stats.late_reweighed == 1


@pytest.mark.parametrize("bad", [float("nan"), -(2**63), 0, 2**40, 3.5, "many", None])
def test_a_prediction_that_is_no_length_is_an_error_not_a_length(bad):
    r, p = router(), PendingPredictions(PendingConfig(max_wait_s=1.0))
    req = make_request(rid="x", max_new_tokens=512)
    p.park(req, None, 0.0)
    released = p.deliver("x", bad, 0.1, r)
    assert released is not None and not released.predicted and req.predicted_output_tokens is None
    assert p.stats.invalid == 1 and p.stats.failed == 1
    # and for a request already dispatched on the fallback, it does not re-weigh
    p.park(make_request(rid="y", max_new_tokens=512), None, 0.0)
    [y] = p.due(2.0)
    r.route(y.request, 2.0)
    p.deliver("y", bad, 2.1, r)
    assert pending_decode(r) == 512


def test_one_failed_batch_does_not_switch_predictions_off_repeated_ones_suspend_them_for_a_while():
    p = PendingPredictions(PendingConfig(max_wait_s=1.0, trip_after_failures=3, suspend_s=5.0))
    batch = [f"b{i}" for i in range(16)]
    for rid in batch:
        p.park(make_request(rid=rid), None, 0.0)
    released = p.failed(batch, 0.1)  # one batch of 16 failed: one failure, not 16
    assert len(released) == 16 and p.stats.failed == 16
    assert p.accepting(0.1) and not p.suspended(0.1)
    p.failed(["gone"], 0.2)
    p.failed(["gone"], 0.3)  # the third failure in a row
    assert p.suspended(0.3) and not p.park(make_request(rid="s"), None, 0.4)
    assert p.stats.suspensions == 1 and p.stats.refused == 1
    assert not p.accepting(5.29) and p.accepting(5.3)  # recovers after suspend_s
    assert p.park(make_request(rid="back"), None, 5.3)


def test_a_success_resets_the_failure_count():
    p = PendingPredictions(PendingConfig(max_wait_s=1.0, trip_after_failures=2))
    r = router()
    for i in range(5):
        p.failed([f"f{i}"], float(i))
        p.park(make_request(rid=f"ok{i}"), None, float(i))
        assert p.deliver(f"ok{i}", 10, float(i), r).predicted
    assert p.stats.suspensions == 0 and p.accepting(5.0)


def test_parked_and_late_requests_are_bounded():
    p = PendingPredictions(PendingConfig(max_wait_s=0.0, max_parked=3, max_late=2))
    assert all(p.park(make_request(rid=f"p{i}"), None, 0.0) for i in range(3))
    assert not p.park(make_request(rid="p3"), None, 0.0)  # back-pressure: fallback for this one
    assert p.stats.refused == 1
    assert len(p.due(0.0)) == 3 and p.late_count() == 2  # the oldest late one was forgotten
    r = router()
    assert p.deliver("p0", 5, 1.0, r) is None and p.stats.late_reweighed == 0


def test_a_retried_rid_waits_afresh():
    p = PendingPredictions(PendingConfig(max_wait_s=0.0))
    p.park(make_request(rid="r"), None, 0.0)
    p.due(0.0)
    first = make_request(rid="r")
    p.park(first, None, 1.0)
    assert p.late_count() == 0
    assert p.deliver("r", 9, 1.0, router()).request is first


@pytest.mark.parametrize("field,value", [("max_wait_s", -1.0), ("max_wait_s", float("nan")), ("max_parked", 0),
                                         ("trip_after_failures", 0), ("suspend_s", -1.0)])
def test_bad_config_is_a_one_line_error(field, value):
    with pytest.raises(ValueError, match=field):
        PendingConfig(**{field: value})
