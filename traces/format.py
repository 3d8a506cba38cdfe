"""The trace format: versioned JSONL, one header line then one line per request.

Line 1 is a `TraceHeader` (format name, version, the generator and its resolved config);
every later line is a `TraceRequest`. Both are tagged msgspec structs (`"kind"`), decoded
by one typed decoder, so a reader can tell a header from a request and a typo from either.
New fields are appended with defaults; `version` is bumped only when a reader of the old
version would misread a new file.

Invariants a valid trace keeps (checked by `validate`): ids are unique, arrival times are
finite, non-negative and non-decreasing, `output_tokens <= max_new_tokens`, and each
request carries a prompt as text, token ids or both.
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import msgspec

FORMAT_NAME = "sglang-pldp-trace"
FORMAT_VERSION = 1


class TraceError(ValueError):
    """Bad trace input; its message is one line, naming the file and line where known."""


class TraceHeader(msgspec.Struct, tag="header", tag_field="kind", frozen=True):
    generator: str
    seed: int
    config: dict = {}
    tokenizer: str | None = None
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION


class TraceRequest(msgspec.Struct, tag="request", tag_field="kind", omit_defaults=True,
                   frozen=True, gc=False):
    """One request. `output_tokens` is the true output length (what a real model would
    produce); `max_new_tokens` is the cap the client sends, chosen independently."""

    id: str
    arrival_s: float
    max_new_tokens: int
    output_tokens: int
    prompt: str | None = None
    input_ids: list[int] | None = None
    prompt_tokens: int | None = None
    prefix_group: str | None = None   # requests sharing a long prompt prefix (workload, tool)
    session: str | None = None        # conversation / agent episode the request belongs to
    episode: int | None = None
    turn: int | None = None
    # A length predictor's estimate of `output_tokens`, written by whoever ran one over the
    # trace (the simulator's `--length-source predicted` reads it).
    predicted_output_tokens: int | None = None


_ENCODER = msgspec.json.Encoder()
_LINE_DECODER = msgspec.json.Decoder(TraceHeader | TraceRequest)


@dataclass(frozen=True)
class Trace:
    header: TraceHeader
    requests: list[TraceRequest]
    skipped_lines: tuple[str, ...] = ()   # one-line messages for lines dropped when lenient


def encode_line(record: TraceHeader | TraceRequest) -> bytes:
    return _ENCODER.encode(record) + b"\n"


def write_trace(path: str | pathlib.Path, header: TraceHeader, requests: Iterable[TraceRequest]) -> int:
    """Write a trace; returns the number of requests. Output depends only on the inputs."""
    count = 0
    with open(path, "wb") as f:
        f.write(encode_line(header))
        for req in requests:
            f.write(encode_line(req))
            count += 1
    return count


def _describe(err: Exception) -> str:
    return "malformed record: " + " ".join(str(err).split())   # keep messages on one line


def iter_lines(path: str | pathlib.Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if raw.strip():
                yield lineno, raw


def read_trace(path: str | pathlib.Path, strict: bool = True) -> Trace:
    """Read and validate a trace.

    strict: the first malformed line raises `TraceError("PATH:LINE: reason")`. Otherwise
    malformed request lines are dropped, each reported in `skipped_lines`, and every other
    request is kept. A bad or missing header is always an error: without it the file's
    version is unknown.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    header: TraceHeader | None = None
    requests: list[TraceRequest] = []
    skipped: list[str] = []
    seen: set[str] = set()
    last_arrival = 0.0
    for lineno, raw in iter_lines(path):
        where = f"{path}:{lineno}"
        try:
            record = _LINE_DECODER.decode(raw)
        except msgspec.DecodeError as err:
            if header is None or strict:
                raise TraceError(f"{where}: {_describe(err)}") from None
            skipped.append(f"{where}: {_describe(err)}")
            continue
        if header is None:
            if not isinstance(record, TraceHeader):
                raise TraceError(f"{where}: the first line must be a trace header (kind=header)")
            if record.format != FORMAT_NAME:
                raise TraceError(f"{where}: format {record.format!r} is not {FORMAT_NAME!r}")
            if record.version > FORMAT_VERSION:
                raise TraceError(f"{where}: trace version {record.version} is newer than this reader ({FORMAT_VERSION})")
            header = record
            continue
        problem = _check(record, seen, last_arrival) if isinstance(record, TraceRequest) else "a second header"
        if problem is not None:
            if strict:
                raise TraceError(f"{where}: {problem}")
            skipped.append(f"{where}: {problem}")
            continue
        seen.add(record.id)
        last_arrival = record.arrival_s
        requests.append(record)
    if header is None:
        raise TraceError(f"{path}: empty trace (no header line)")
    return Trace(header, requests, tuple(skipped))


def _check(req: TraceRequest, seen: set[str], last_arrival: float) -> str | None:
    if req.id in seen:
        return f"duplicate request id {req.id!r}"
    if not math.isfinite(req.arrival_s) or req.arrival_s < 0:
        return f"arrival_s must be finite and >= 0, got {req.arrival_s}"
    if req.arrival_s < last_arrival:
        return f"arrival_s {req.arrival_s} is earlier than the previous request's {last_arrival}"
    if req.max_new_tokens < 1 or req.output_tokens < 1:
        return "max_new_tokens and output_tokens must be >= 1"
    if req.output_tokens > req.max_new_tokens:
        return f"output_tokens {req.output_tokens} exceeds max_new_tokens {req.max_new_tokens}"
    if req.prompt is None and not req.input_ids:
        return "a request needs prompt text or input_ids"
    return None


def validate(requests: Iterable[TraceRequest]) -> None:
    """Raise TraceError if generated requests break the format's invariants."""
    seen: set[str] = set()
    last = 0.0
    for req in requests:
        problem = _check(req, seen, last)
        if problem is not None:
            raise TraceError(f"request {req.id}: {problem}")
        seen.add(req.id)
        last = req.arrival_s
