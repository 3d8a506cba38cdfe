"""The controller's predicted length source: the real predictor thread and wake-up socket,
with the committed models or with small stand-in predictors that fail, stall or answer
NaN on cue (no server)."""

from __future__ import annotations

import threading
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


def make(wait_ms: float, model_dir: str | None = None, predictor=None, tokenizer_path=None):
    router = Router(RouterConfig(policy="prefix_length_aware", num_workers=2,
                                 length_source=LengthSource.PREDICTED))
    return router, PredictedLengths(model_dir, wait_ms, zmq.Context.instance(), tokenizer_path=tokenizer_path,
                                    predictor=predictor)


class Scripted:
    """A stand-in predictor: each call answers with the next entry of `script` (an
    exception is raised); after the script, every prompt is 10 tokens. Records the
    texts and the thread of each call."""

    def __init__(self, *script, gate: threading.Event | None = None):
        self.script, self.gate = list(script), gate
        self.calls: list[tuple[str, list[str]]] = []

    def predict(self, texts):
        if self.gate is not None:
            self.gate.wait(30)
        self.calls.append((threading.current_thread().name, list(texts)))
        step = self.script.pop(0) if self.script else None
        if isinstance(step, Exception):
            raise step
        return [step if step is not None else 10 for _ in texts]


# The default model and the fine-tuned one (`--length-model length_model/artifacts_finetuned`).
@pytest.mark.parametrize("model_dir", [None, FINETUNED_ARTIFACT_DIR], ids=["default", "finetuned"])
def test_requests_wait_for_their_prediction(model_dir):
    router, lengths = make(wait_ms=10_000, model_dir=model_dir)
    assert not lengths.failed
    for i, text in enumerate(["Hi!", "Write a long essay about the history of rivers in Europe."]):
        req = make_request(rid=f"r{i}", max_new_tokens=512)
        assert lengths.park(SimpleNamespace(input_text=text), req, time.monotonic())
    released = drain(lengths, router, 2)
    assert {r.request.rid for r in released} == {"r0", "r1"} and all(r.predicted for r in released)
    assert all(r.request.predicted_output_tokens >= 1 for r in released)
    assert lengths.pending.stats.predicted_in_time == 2 and lengths.pending.stats.fallbacks == 0
    lengths.close()


def test_without_waiting_a_late_prediction_reweighs_the_ledger():
    router, lengths = make(wait_ms=0)
    req = make_request(rid="late", max_new_tokens=512)
    assert lengths.park(SimpleNamespace(input_text="Hi!"), req, time.monotonic())
    [released] = lengths.collect(time.monotonic(), router)  # deadline already passed
    assert released.request.predicted_output_tokens is None and lengths.pending.stats.fallbacks == 1
    router.route(released.request, time.monotonic())
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


def test_a_failed_batch_sends_its_requests_on_the_fallback_and_the_next_ones_are_predicted():
    router, lengths = make(wait_ms=10_000, predictor=Scripted(RuntimeError("transient")))
    assert lengths.park(SimpleNamespace(input_text="one"), make_request(rid="a"), time.monotonic())
    [first] = drain(lengths, router, 1)
    assert first.request.rid == "a" and not first.predicted  # released at once, not after 10 s
    assert not lengths.failed and lengths.pending.stats.failed == 1
    assert lengths.park(SimpleNamespace(input_text="two"), make_request(rid="b"), time.monotonic())
    [second] = drain(lengths, router, 1)
    assert second.predicted and second.request.predicted_output_tokens == 10
    lengths.close()


def test_a_full_queue_sends_one_request_on_the_fallback_and_predictions_go_on():
    gate = threading.Event()
    router, lengths = make(wait_ms=10_000, predictor=Scripted(gate=gate))
    parked = 0
    while lengths.park(SimpleNamespace(input_text="q"), make_request(rid=f"q{parked}"), time.monotonic()):
        parked += 1
        assert parked < 10_000, "the predictor queue never filled"
    assert lengths.pending.stats.refused == 1 and not lengths.failed  # that request only
    gate.set()
    released = drain(lengths, router, parked, timeout_s=60)
    assert len(released) == parked and all(r.predicted for r in released)
    assert lengths.park(SimpleNamespace(input_text="after"), make_request(rid="after"), time.monotonic())
    [after] = drain(lengths, router, 1)
    assert after.predicted
    lengths.close()


def test_a_nan_prediction_is_not_a_length():
    # length_model's `predict` casts a NaN mean to int: -2**63.
    router, lengths = make(wait_ms=10_000, predictor=Scripted(-(2**63)))
    req = make_request(rid="nan", max_new_tokens=512)
    assert lengths.park(SimpleNamespace(input_text="x"), req, time.monotonic())
    [released] = drain(lengths, router, 1)
    assert not released.predicted and req.predicted_output_tokens is None
    assert lengths.pending.stats.invalid == 1
    lengths.close()


def test_token_ids_are_detokenized_on_the_predictor_thread(monkeypatch):
    import transformers

    from conftest import tiny_model

    path = tiny_model()
    ids = transformers.AutoTokenizer.from_pretrained(path).encode("Tell me about rivers.")
    loads = []  # the thread of every tokenizer load, observed
    real_load = transformers.AutoTokenizer.from_pretrained

    def observed(*args, **kwargs):
        loads.append(threading.current_thread().name)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", observed)
    predictor = Scripted()
    router, lengths = make(wait_ms=10_000, predictor=predictor, tokenizer_path=path)
    assert lengths.park(SimpleNamespace(input_text=None), make_request(rid="ids", prefix=ids, prompt_tokens=len(ids)),
                        time.monotonic())
    [released] = drain(lengths, router, 1)
    assert released.predicted
    assert loads == ["length-predictor"]  # loaded once, off the event loop
    [(thread, texts)] = predictor.calls
    assert thread == "length-predictor" and "rivers" in texts[0]
    lengths.close()
