"""`python -m traces predict TRACE --out TRACE2`: the shipped length predictor's estimate of
every request's output tokens, written into the trace as `predicted_output_tokens`.

The predictions come from `length_model.serving.LengthPredictor.predict(texts)`, the call
the live controller's predictor thread makes (`sglang_ext/length_source.py`), on the text
the controller would see: the request's prompt text when the trace has one (SGLang hands
the controller `input_text`), else its token ids decoded with the trace header's tokenizer
(the live thread decodes ids the same way, without skipping special tokens).

Batching is fixed: trace order, `batch_size` prompts per call (16, the live
`AsyncLengthPredictor`'s largest micro-batch). The predictor is deterministic for a given
batching, but not across batchings: float sums in a batch of 16 and in a batch of 1 can
round to either side of a calibration step (seen: 1 prompt in 40 of a ShareGPT trace,
228 vs 213 tokens). A fixed batching makes a rerun byte-identical; the live controller's
micro-batches depend on arrival timing, so live predictions can differ by that much.

Cache: the predictions are stored beside the trace as `TRACE.predictions-<key>.json`,
`key` a hash of the trace file's bytes, every file of the model folder, the batch size and
this module's `CACHE_VERSION`; a rerun with the same inputs reads them instead of loading
the model (about 12 s) and predicting again.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from dataclasses import dataclass

import msgspec

from traces.format import Trace, TraceError, read_trace, write_trace

CACHE_VERSION = 1
# The live controller's `AsyncLengthPredictor(max_batch_size=16)` (length_model/serving.py).
LIVE_MAX_BATCH = 16


@dataclass(frozen=True)
class PredictConfig:
    trace: str                     # input trace (JSONL)
    out: str                       # output trace: the input plus predicted_output_tokens
    model_dir: str | None = None   # predictor folder; None = length_model/artifacts
    batch_size: int = LIVE_MAX_BATCH   # prompts per predict() call (fixed: see the module note)
    progress: bool = True          # tqdm bar on the terminal
    use_cache: bool = True

    def resolved_model_dir(self) -> str:
        return self.model_dir or _default_model_dir()

    def check(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if pathlib.Path(self.out).resolve() == pathlib.Path(self.trace).resolve():
            raise ValueError("--out must differ from the input trace (the cache is keyed by the input's bytes)")
        model = pathlib.Path(self.resolved_model_dir())
        if not model.is_dir():
            raise ValueError(f"--model {model}: no such folder")


@dataclass(frozen=True)
class PredictResult:
    requests: int
    cached: bool          # True: the predictions were read from the cache, not computed
    cache_file: pathlib.Path
    out: pathlib.Path


def _default_model_dir() -> str:
    from length_model.config import DEFAULT_ARTIFACT_DIR

    return str(DEFAULT_ARTIFACT_DIR)


def folder_digest(folder: str | pathlib.Path) -> str:
    """sha256 over every file of `folder` (relative names and bytes, sorted by name)."""
    root = pathlib.Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def cache_key(trace: str | pathlib.Path, model_sha256: str, batch_size: int) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(pathlib.Path(trace).read_bytes()).digest())
    h.update(model_sha256.encode())
    h.update(f"batch={batch_size};v={CACHE_VERSION}".encode())
    return h.hexdigest()[:16]


def cache_path(trace: str | pathlib.Path, key: str) -> pathlib.Path:
    trace = pathlib.Path(trace)
    return trace.with_name(f"{trace.name}.predictions-{key}.json")


def prompt_texts(trace: Trace) -> list[str]:
    """What the controller would hand its predictor, per request."""
    need_ids = [r for r in trace.requests if r.prompt is None]
    tokenizer = None
    if need_ids:
        if not trace.header.tokenizer:
            raise TraceError(f"request {need_ids[0].id!r} has only token ids and the trace header names no tokenizer")
        from traces.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(trace.header.tokenizer)
    return [r.prompt if r.prompt is not None else tokenizer.decode(list(r.input_ids)) for r in trace.requests]


def predict_lengths(texts: list[str], predictor, batch_size: int, progress: bool = True) -> list[int]:
    """`predictor.predict` over `texts` in fixed batches, in order."""
    from tqdm import tqdm

    out: list[int] = []
    with tqdm(total=len(texts), desc="predict", unit="req", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = texts[start:start + batch_size]
            got = predictor.predict(batch)
            if len(got) != len(batch):
                raise RuntimeError(f"the predictor returned {len(got)} lengths for {len(batch)} prompts")
            out += [int(n) for n in got]
            bar.update(len(batch))
    return out


def _read_cache(path: pathlib.Path, ids: list[str]) -> list[int] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if data.get("ids") != ids or len(data.get("predicted_output_tokens", ())) != len(ids):
        return None   # a damaged or foreign file: predict again
    return [int(n) for n in data["predicted_output_tokens"]]


def run(cfg: PredictConfig, predictor=None) -> PredictResult:
    """Predict (or read the cache), then write `cfg.out`. `predictor` (anything with
    `predict(texts) -> list[int]`) replaces loading the model; it is still keyed by the
    model folder, so pass it only with the folder it came from."""
    cfg.check()
    trace = read_trace(cfg.trace)
    if not trace.requests:
        raise TraceError(f"{cfg.trace}: the trace holds no request")
    model_dir = cfg.resolved_model_dir()
    model_sha = folder_digest(model_dir)
    key = cache_key(cfg.trace, model_sha, cfg.batch_size)
    cache = cache_path(cfg.trace, key)
    ids = [r.id for r in trace.requests]
    lengths = _read_cache(cache, ids) if cfg.use_cache else None
    cached = lengths is not None
    if lengths is None:
        texts = prompt_texts(trace)
        if predictor is None:
            from length_model.serving import LengthPredictor

            predictor = LengthPredictor.load(model_dir)
        lengths = predict_lengths(texts, predictor, cfg.batch_size, cfg.progress)
        tmp = cache.with_suffix(".partial")
        tmp.write_text(json.dumps({"trace": pathlib.Path(cfg.trace).name, "model_dir": model_dir,
                                   "batch_size": cfg.batch_size, "ids": ids,
                                   "predicted_output_tokens": lengths}) + "\n")
        tmp.replace(cache)
    header = msgspec.structs.replace(trace.header, config={
        **trace.header.config,
        # Provenance of the predictions; the folder's digest, not its path, says which model.
        "length_prediction": {"model": pathlib.Path(model_dir).name, "model_sha256": model_sha,
                              "batch_size": cfg.batch_size}})
    requests = [msgspec.structs.replace(r, predicted_output_tokens=n) for r, n in zip(trace.requests, lengths)]
    out = pathlib.Path(cfg.out)
    tmp_out = out.with_name(out.name + ".partial")
    write_trace(tmp_out, header, requests)
    tmp_out.replace(out)
    return PredictResult(len(requests), cached, cache, out)


class LazyPredictor:
    """Loads the model on the first `predict` call, so that a run whose every trace is
    cached never pays the load."""

    def __init__(self, model_dir: str | None):
        self.model_dir = model_dir
        self._predictor = None

    def predict(self, texts: list[str]) -> list[int]:
        if self._predictor is None:
            from length_model.serving import LengthPredictor

            self._predictor = LengthPredictor.load(self.model_dir) if self.model_dir else LengthPredictor.load()
        return self._predictor.predict(texts)


def run_many(configs: list[PredictConfig]) -> list[PredictResult]:
    """`run` over several traces, the model loaded once per folder (at most)."""
    loaded: dict[str, LazyPredictor] = {}
    results = []
    for cfg in configs:
        model_dir = cfg.resolved_model_dir()
        predictor = loaded.setdefault(model_dir, LazyPredictor(model_dir))
        results.append(run(cfg, predictor))
    return results
