"""The length predictor in a child process (`sglang_ext/predictor_process.py`): the same
answers as in-process, back-pressure per request, and a failed start or a dead child
turns into the fallback, as a dead thread does (no server)."""

from __future__ import annotations

import threading
import time
from array import array

import pytest
import zmq

from length_model.serving import LengthPredictor, PredictorBusy, PredictorError
from sglang_ext.core.policies import LengthSource
from sglang_ext.core.router import Router, RouterConfig
from sglang_ext.length_source import PredictedLengths
from sglang_ext.predictor_process import ProcessLengthPredictor
from conftest import tiny_model
from factories import make_request

TEXTS = ["Hi!", "Write a long essay about the history of rivers in Europe.", "List three primes."]


@pytest.fixture(scope="module")
def child():
    got: list = []
    woken = threading.Event()

    def on_result(rid, tokens):
        got.append((rid, tokens))
        woken.set()

    predictor = ProcessLengthPredictor(None, tiny_model(), on_result=on_result)
    yield predictor, got, woken
    predictor.close()


def wait_results(predictor, want: int, timeout_s: float = 30.0) -> list:
    results, deadline = [], time.monotonic() + timeout_s
    while len(results) < want and time.monotonic() < deadline:
        results += predictor.poll()
        time.sleep(0.005)
    return results


def test_the_child_answers_what_the_model_answers_in_process(child):
    predictor, got, _ = child
    for i, text in enumerate(TEXTS):
        predictor.submit(f"t{i}", text)
    results = dict(wait_results(predictor, len(TEXTS)))
    assert results == dict(zip((f"t{i}" for i in range(len(TEXTS))), LengthPredictor.load().predict(TEXTS)))
    assert {rid for rid, _ in got} >= set(results)  # on_result ran (the receiver thread) for each
    assert sum(predictor.batch_sizes) >= len(TEXTS) and predictor.pending() == 0


def test_prompts_sent_as_token_ids_are_detokenized_in_the_child(child):
    from transformers import AutoTokenizer

    predictor, _, _ = child
    tokenizer = AutoTokenizer.from_pretrained(tiny_model())
    ids = tokenizer.encode(TEXTS[1], add_special_tokens=False)
    predictor.submit("ids", array("q", ids))
    [(rid, tokens)] = wait_results(predictor, 1)
    assert rid == "ids" and tokens == LengthPredictor.load().predict([tokenizer.decode(ids)])[0]


def test_a_full_queue_is_back_pressure_for_that_request_only(child):
    predictor, _, _ = child
    predictor.max_queue, saved = 1, predictor.max_queue
    try:
        predictor._submitted += 1  # one request outstanding, as far as the queue bound sees
        with pytest.raises(PredictorBusy):
            predictor.submit("over", "x")
    finally:
        predictor._submitted -= 1
        predictor.max_queue = saved
    predictor.submit("next", "x")
    assert [rid for rid, _ in wait_results(predictor, 1)] == ["next"]


def test_a_model_that_cannot_load_fails_the_start_with_the_reason(tmp_path):
    with pytest.raises(PredictorError, match="could not start"):
        ProcessLengthPredictor(str(tmp_path / "no-model"), None)


def test_the_length_source_falls_back_when_the_child_cannot_start(tmp_path):
    router = Router(RouterConfig(num_workers=2, length_source=LengthSource.PREDICTED))
    lengths = PredictedLengths(str(tmp_path / "no-model"), 20, zmq.Context.instance(), None, host="process")
    try:
        assert lengths.failed and "could not start" in lengths.unavailable
        assert not lengths.park(None, make_request(rid="a"), 0.0)  # dispatched now, on max_new_tokens
        assert lengths.collect(0.0, router) == []
    finally:
        lengths.close()


def test_a_killed_child_turns_predictions_off_and_requests_go_on_the_fallback():
    lengths = PredictedLengths(None, 20, zmq.Context.instance(), None, host="process")
    try:
        assert not lengths.failed and lengths.host == "process"
        assert lengths.park(None, make_request(rid="before"), 0.0)
        lengths._async.process.kill()
        deadline = time.monotonic() + 10
        while lengths._async is not None and lengths._async._dead is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lengths.park(None, make_request(rid="after"), 1.0)
        assert lengths.failed and "stopped" in lengths.unavailable
    finally:
        lengths.close()


def test_the_host_defaults_to_a_process_and_a_predictor_object_runs_on_a_thread(monkeypatch):
    class Fixed:
        def predict(self, texts):
            return [7] * len(texts)

    lengths = PredictedLengths(None, 20, zmq.Context.instance(), None, predictor=Fixed())
    assert lengths.host == "thread"
    lengths.close()
    with pytest.raises(ValueError, match="predictor host"):
        PredictedLengths(None, 20, zmq.Context.instance(), None, host="gpu")
    monkeypatch.setenv("SGLANG_EXT_PREDICTOR_HOST", "nowhere")
    with pytest.raises(ValueError, match="nowhere"):
        PredictedLengths(None, 20, zmq.Context.instance(), None)


def test_the_launcher_passes_the_predictor_host_and_refuses_others():
    from sglang_ext.launch_server import UsageError, translate_args

    env: dict = {}
    argv = translate_args(["--model-path", "m", "--predictor-host", "thread"], env)
    assert "--predictor-host" not in argv and "thread" not in argv  # SGLang's parser would refuse it
    assert env["SGLANG_EXT_PREDICTOR_HOST"] == "thread"
    with pytest.raises(UsageError, match="valid: process, thread"):
        translate_args(["--predictor-host", "gpu"], {})
