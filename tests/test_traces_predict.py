"""`python -m traces predict`: the shipped predictor writes a prediction on every request
(ids-only prompts detokenized with the header's tokenizer), a rerun reads the cache beside
the trace and writes the same bytes, and the cache key follows the trace and the model."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

from traces import predict
from traces.format import TraceHeader, TraceRequest, read_trace, write_trace
from traces.tokenizer import DEFAULT_TOKENIZER, load_tokenizer

PROMPTS = [
    "Write a haiku about autumn.",
    "Explain in detail how TCP congestion control works, with examples of slow start and fast recovery.",
    "What is 2 + 2?",
    "Write a 2000-word essay on the history of the Roman Empire.",
    "Translate 'good morning' into French.",
]


def _trace(path: pathlib.Path, tokenizer: str | None = str(DEFAULT_TOKENIZER)) -> pathlib.Path:
    """Text prompts, then the same prompts again as token ids only."""
    tok = load_tokenizer(tokenizer) if tokenizer else load_tokenizer(None)
    reqs = [TraceRequest(f"t{i}", 0.1 * i, 512, 10, prompt=p) for i, p in enumerate(PROMPTS)]
    n = len(reqs)
    reqs += [TraceRequest(f"i{i}", 0.1 * (n + i), 512, 10, input_ids=tok.encode(p)) for i, p in enumerate(PROMPTS)]
    write_trace(path, TraceHeader(generator="test", seed=0, tokenizer=tokenizer), reqs)
    return path


class _MustNotPredict:
    def predict(self, texts):
        raise AssertionError("the cache should have answered")


@pytest.fixture(scope="module")
def shipped():
    from length_model.serving import LengthPredictor

    return LengthPredictor.load()


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, shipped):
    root = tmp_path_factory.mktemp("predict")
    trace = _trace(root / "t.jsonl")
    result = predict.run(predict.PredictConfig(str(trace), str(root / "p.jsonl"), progress=False), shipped)
    return root, trace, result


def test_every_request_gets_the_shipped_predictors_length(predicted, shipped):
    root, trace, result = predicted
    assert not result.cached and result.cache_file.exists() and result.cache_file.parent == trace.parent
    out = read_trace(root / "p.jsonl")
    original = read_trace(trace)
    assert [r.id for r in out.requests] == [r.id for r in original.requests]
    got = {r.id: r.predicted_output_tokens for r in out.requests}
    assert all(isinstance(n, int) and n >= 1 for n in got.values())
    # The text requests get what the live path's call gives in one batch of them...
    assert [got[f"t{i}"] for i in range(len(PROMPTS))] == shipped.predict(PROMPTS)
    # ...and the ids-only copies, detokenized with the header's tokenizer, the same lengths.
    assert [got[f"i{i}"] for i in range(len(PROMPTS))] == [got[f"t{i}"] for i in range(len(PROMPTS))]
    assert len(set(got.values())) > 1   # the predictor tells prompts apart
    # Everything else is the input's.
    for a, b in zip(original.requests, out.requests):
        assert (a.prompt, a.input_ids, a.output_tokens, a.arrival_s) == (b.prompt, b.input_ids, b.output_tokens, b.arrival_s)
    assert out.header.config["length_prediction"]["batch_size"] == 16


def test_a_rerun_reads_the_cache_and_writes_the_same_bytes(predicted):
    root, trace, first = predicted
    again = predict.run(predict.PredictConfig(str(trace), str(root / "p2.jsonl"), progress=False), _MustNotPredict())
    assert again.cached and again.cache_file == first.cache_file
    assert (root / "p2.jsonl").read_bytes() == (root / "p.jsonl").read_bytes()


def test_predicting_again_without_the_cache_gives_the_same_bytes(predicted, shipped):
    root, trace, _ = predicted
    fresh = predict.run(predict.PredictConfig(str(trace), str(root / "p3.jsonl"), progress=False, use_cache=False),
                        shipped)
    assert not fresh.cached
    assert (root / "p3.jsonl").read_bytes() == (root / "p.jsonl").read_bytes()


def test_the_cache_key_follows_the_trace_bytes_and_the_model_files(tmp_path):
    trace = _trace(tmp_path / "t.jsonl")
    model = tmp_path / "model"
    model.mkdir()
    (model / "meta.json").write_text("{}")
    key = predict.cache_key(trace, predict.folder_digest(model), 16)
    assert predict.cache_key(trace, predict.folder_digest(model), 16) == key
    assert predict.cache_key(trace, predict.folder_digest(model), 8) != key
    shutil.copy(trace, tmp_path / "copy.jsonl")   # same bytes elsewhere: same key
    assert predict.cache_key(tmp_path / "copy.jsonl", predict.folder_digest(model), 16) == key
    (model / "meta.json").write_text('{"x": 1}')
    assert predict.cache_key(trace, predict.folder_digest(model), 16) != key
    (model / "meta.json").write_text("{}")
    with trace.open("ab") as f:
        f.write(b"\n")
    assert predict.cache_key(trace, predict.folder_digest(model), 16) != key


def test_a_changed_trace_is_predicted_again(tmp_path, shipped):
    trace = _trace(tmp_path / "t.jsonl")
    first = predict.run(predict.PredictConfig(str(trace), str(tmp_path / "p.jsonl"), progress=False), shipped)
    reqs = read_trace(trace).requests[:3]
    write_trace(trace, TraceHeader(generator="test", seed=0, tokenizer=str(DEFAULT_TOKENIZER)), reqs)
    with pytest.raises(AssertionError, match="cache should have answered"):
        predict.run(predict.PredictConfig(str(trace), str(tmp_path / "p.jsonl"), progress=False), _MustNotPredict())
    second = predict.run(predict.PredictConfig(str(trace), str(tmp_path / "p.jsonl"), progress=False), shipped)
    assert second.cache_file != first.cache_file and len(read_trace(tmp_path / "p.jsonl").requests) == 3


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traces", "predict", *args], capture_output=True, text=True)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = _cli(str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such trace file" in missing.stderr
    ids_only = tmp_path / "ids.jsonl"
    write_trace(ids_only, TraceHeader(generator="test", seed=0), [TraceRequest("a", 0.0, 8, 4, input_ids=[5, 6, 7])])
    no_tok = _cli(str(ids_only), "--out", str(tmp_path / "o.jsonl"), "--no-progress")
    assert no_tok.returncode == 2 and no_tok.stderr.count("\n") == 1 and "names no tokenizer" in no_tok.stderr
    no_model = _cli(str(ids_only), "--out", str(tmp_path / "o.jsonl"), "--model", str(tmp_path / "none"))
    assert no_model.returncode == 2 and "no such folder" in no_model.stderr
    same = _cli(str(ids_only), "--out", str(ids_only))
    assert same.returncode == 2 and "--out must differ" in same.stderr
