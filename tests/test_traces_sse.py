"""The SSE decoder shared by the replay client and the Locust user."""

from __future__ import annotations

import asyncio
import json

import pytest

from traces.sse import SSEDecoder, StreamError, decode_all, decode_async

# What SGLang's streaming /generate sends: cumulative text, meta_info, then [DONE].
STREAM = (b'data: {"text": "Hel", "meta_info": {"completion_tokens": 1}}\n\n'
          b'data: {"text": "Hello", "meta_info": {"completion_tokens": 2}}\n\n'
          b"data: [DONE]\n\n")


def _split_every(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_events_split_anywhere_across_reads_decode_the_same(size):
    decoder = SSEDecoder()
    got = [c for part in _split_every(STREAM, size) for c in decoder.feed(part)] + decoder.close()
    assert [c["text"] for c in got] == ["Hel", "Hello"]
    assert decoder.done


@pytest.mark.parametrize("ending", [b"\r\n", b"\r"])
def test_crlf_and_cr_line_endings(ending):
    data = STREAM.replace(b"\n", ending)
    for size in (1, 5, len(data)):
        assert [c["text"] for c in decode_all(_split_every(data, size))] == ["Hel", "Hello"]


def test_comments_other_fields_and_multi_line_data():
    data = (b': keep-alive\n\nevent: chunk\nid: 3\ndata: {"text":\ndata: "a b"}\n\n'
            b'data:{"text": "no space"}\n\n')
    assert [c["text"] for c in decode_all([data])] == ["a b", "no space"]


def test_an_error_chunk_raises_with_the_servers_message():
    decoder = SSEDecoder()
    decoder.feed(b'data: {"text": "x"}\n\n')
    with pytest.raises(StreamError, match="server error: .*out of memory"):
        decoder.feed(b'data: {"error": {"message": "out of memory"}}\n\n')


def test_data_that_is_no_json_is_a_value_error():
    with pytest.raises(ValueError):
        SSEDecoder().feed(b"data: {broken\n\n")


def test_a_last_event_without_its_blank_line_is_kept_at_close():
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"text": "end"}') == []
    assert decoder.close() == [{"text": "end"}]


def test_a_long_line_in_many_reads_is_joined_once():
    text = "x" * 200_000
    data = f'data: {json.dumps({"text": text})}\n\n'.encode()
    assert [c["text"] for c in decode_all(_split_every(data, 100))] == [text]


def test_async_decoding_matches_sync():
    async def chunks():
        for part in _split_every(STREAM, 5):
            yield part

    async def collect():
        return [c async for c in decode_async(chunks())]

    assert asyncio.run(collect()) == list(decode_all([STREAM]))
