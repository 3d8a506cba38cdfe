"""The controller's predicted length source with the real committed predictor (no server)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import zmq

from length_model.config import FINETUNED_ARTIFACT_DIR
from sglang_ext.length_source import PredictedLengths
from sglang_ext.core.policies import LengthSource
from sglang_ext.core.router import Router, RouterConfig
from factories import make_request


def drain(lengths: PredictedLengths, router: Router, want: int, timeout_s: float = 30.0) -> list:
    released, deadline = [], time.monotonic() + timeout_s
    while len(released) < want and time.monotonic() < deadline:
        released += lengths.collect(time.monotonic(), router)
        time.sleep(0.005)
    return released


def make(wait_ms: float, model_dir: str | None = None):
    router = Router(RouterConfig(policy="prefix_length_aware", num_workers=2,
                                 length_source=LengthSource.PREDICTED))
    return router, PredictedLengths(model_dir, wait_ms, zmq.Context.instance(), tokenizer_path=None)


# The default model and the fine-tuned one (`--length-model length_model/artifacts_finetuned`).
@pytest.mark.parametrize("model_dir", [None, FINETUNED_ARTIFACT_DIR], ids=["default", "finetuned"])
def test_requests_wait_for_their_prediction(model_dir):
    router, lengths = make(wait_ms=10_000, model_dir=model_dir)
    assert not lengths.failed
    for i, text in enumerate(["Hi!", "Write a long essay about the history of rivers in Europe."]):
        req = make_request(rid=f"r{i}", max_new_tokens=512)
        assert lengths.park(SimpleNamespace(input_text=text), req, time.monotonic())
    released = drain(lengths, router, 2)
    assert {r.rid for _, r in released} == {"r0", "r1"}
    assert all(r.predicted_output_tokens is not None and r.predicted_output_tokens >= 1 for _, r in released)
    assert lengths.predicted == 2 and lengths.fallbacks == 0
    lengths.close()


def test_without_waiting_a_late_prediction_reweighs_the_ledger():
    router, lengths = make(wait_ms=0)
    req = make_request(rid="late", max_new_tokens=512)
    assert lengths.park(SimpleNamespace(input_text="Hi!"), req, time.monotonic())
    [(_, released)] = lengths.collect(time.monotonic(), router)  # deadline already passed
    assert released.predicted_output_tokens is None and lengths.fallbacks == 1
    router.route(released, time.monotonic())
    assert router.ledger.loads[0].pending_decode_tokens + router.ledger.loads[1].pending_decode_tokens == 512
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lengths.collect(time.monotonic(), router)
        if sum(ld.pending_decode_tokens for ld in router.ledger.loads) != 512:
            break
        time.sleep(0.01)
    pending = sum(ld.pending_decode_tokens for ld in router.ledger.loads)
    assert pending != 512 and pending >= 1  # the prediction replaced the fallback
    lengths.close()


def test_a_missing_model_falls_back_to_max_new_tokens():
    lengths = PredictedLengths("/nonexistent/model", 20, zmq.Context.instance(), tokenizer_path=None)
    assert lengths.failed
    assert not lengths.park(SimpleNamespace(input_text="Hi"), make_request(), time.monotonic())
    lengths.close()
