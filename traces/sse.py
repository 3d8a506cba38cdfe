"""Server-sent events from SGLang's streaming `/generate`, decoded incrementally.

SGLang writes each chunk as `data: {json}\\n\\n` and ends the stream with
`data: [DONE]\\n\\n` (`sglang/srt/entrypoints/http_server.py`, `generate_request`); an
error mid-stream is a chunk `{"error": {...}}`. This decoder follows the SSE framing
rules that apply to such a stream (W3C EventSource, "event stream interpretation"):
lines end in LF, CRLF or CR; a blank line ends an event; several `data:` lines of one
event are joined with LF; lines starting with `:` are comments; one space after the
colon is dropped. Fields other than `data` (event, id, retry) carry nothing SGLang uses
and are ignored.

Both the replay client (aiohttp, `traces/replay.py`) and the Locust user
(`locustfile.py`, requests) feed it the raw bytes they read: a chunk of cumulative text
can outgrow aiohttp's line-length limit, so neither reads by lines itself.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator

DONE = "[DONE]"


class StreamError(RuntimeError):
    """The server reported an error inside the stream."""


class SSEDecoder:
    """Feed bytes as they arrive; get each complete event's JSON object back.

    `feed` returns the JSON objects of the events completed by these bytes (the `[DONE]`
    sentinel, comments and events without data give none), and raises `StreamError` for an
    SGLang error chunk and `ValueError` for data that is not JSON. `done` tells whether the
    `[DONE]` sentinel has been seen.
    """

    __slots__ = ("_pending", "_data", "done")

    def __init__(self):
        self._pending: list[bytes] = []   # pieces of an incomplete last line
        self._data: list[str] = []        # the data lines of the event being read
        self.done = False

    def feed(self, data: bytes) -> list[dict]:
        if b"\n" not in data and b"\r" not in data:
            # Mid-line (a long cumulative-text chunk arrives in many reads): keep the
            # pieces and join once, so a line costs linear time in its length.
            if data:
                self._pending.append(data)
            return []
        self._pending.append(data)
        lines = b"".join(self._pending).splitlines(keepends=True)
        self._pending = []
        # A last line without its end waits for the next read; so does one ending in CR,
        # which may be the first half of a CRLF split across two reads.
        if not lines[-1].endswith(b"\n"):
            self._pending.append(lines.pop())
        out: list[dict] = []
        for raw in lines:
            self._line(raw.rstrip(b"\r\n"), out)
        return out

    def close(self) -> list[dict]:
        """The end of the stream: an event not yet ended by a blank line is dispatched (a
        server that closes right after its last data line)."""
        out: list[dict] = []
        rest = b"".join(self._pending)
        self._pending = []
        for raw in rest.splitlines():
            self._line(raw, out)
        self._line(b"", out)
        return out

    def _line(self, line: bytes, out: list[dict]) -> None:
        if not line:
            if self._data:
                chunk = self._event("\n".join(self._data))
                self._data = []
                if chunk is not None:
                    out.append(chunk)
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if name != b"data":
            return
        if value.startswith(b" "):
            value = value[1:]
        self._data.append(value.decode("utf-8"))

    def _event(self, payload: str) -> dict | None:
        if payload.strip() == DONE:
            self.done = True
            return None
        chunk = json.loads(payload)
        if not isinstance(chunk, dict):
            return None
        if "error" in chunk:
            raise StreamError(f"server error: {chunk['error']}")
        return chunk


def decode_all(chunks: Iterable[bytes]) -> Iterator[dict]:
    """Every event's JSON object from byte chunks read synchronously (requests, Locust)."""
    decoder = SSEDecoder()
    for data in chunks:
        yield from decoder.feed(data)
    yield from decoder.close()


async def decode_async(chunks: AsyncIterable[bytes]) -> AsyncIterator[dict]:
    """Every event's JSON object from byte chunks read asynchronously (aiohttp)."""
    decoder = SSEDecoder()
    async for data in chunks:
        for chunk in decoder.feed(data):
            yield chunk
    for chunk in decoder.close():
        yield chunk
