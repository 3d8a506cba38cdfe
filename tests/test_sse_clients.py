"""The replay client and the calibration probe read SGLang's stream through the shared SSE
decoder: a local aiohttp server (no SGLang) streams events split at awkward places."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp import web

from traces.format import TraceRequest

CHUNKS = [{"text": "a", "meta_info": {"completion_tokens": 1, "prompt_tokens": 3, "cached_tokens": 0,
                                      "dp_rank": 1}},
          {"text": "ab", "meta_info": {"completion_tokens": 2, "prompt_tokens": 3, "cached_tokens": 0,
                                       "dp_rank": 1}}]


def _stream_bytes(error: bool) -> bytes:
    events = [f"data: {json.dumps(c)}\r\n\r\n" for c in CHUNKS]
    if error:
        events.insert(1, 'data: {"error": {"message": "KV cache full"}}\r\n\r\n')
    return ("".join(events) + "data: [DONE]\r\n\r\n").encode()


async def _serve(error: bool):
    async def generate(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        data = _stream_bytes(error)
        for i in range(0, len(data), 7):   # splits inside "data:", the JSON and each CRLF pair
            await resp.write(data[i:i + 7])
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


def _replay_one(error: bool):
    import aiohttp

    from traces.metrics import RequestResult
    from traces.replay import ReplayConfig, _send

    async def go():
        runner, url = await _serve(error)
        try:
            req = TraceRequest(id="r", arrival_s=0.0, max_new_tokens=2, output_tokens=2, input_ids=[1, 2, 3])
            result = RequestResult(id="r", arrival_s=0.0)
            async with aiohttp.ClientSession() as session:
                await _send(session, req, ReplayConfig(trace="x", url=url), time.perf_counter(),
                            asyncio.Semaphore(1), result)
            return result
        finally:
            await runner.cleanup()

    return asyncio.run(go())


def test_the_replay_client_reads_a_crlf_stream_split_anywhere():
    result = _replay_one(error=False)
    assert result.ok and result.error == ""
    assert (result.output_tokens, result.prompt_tokens, result.worker) == (2, 3, 1)
    assert result.ttft_s is not None and result.ttft_s <= result.e2e_s


def test_the_replay_client_fails_a_request_on_an_error_chunk():
    result = _replay_one(error=True)
    assert not result.ok and "server error" in result.error and "KV cache full" in result.error


def test_the_calibration_probe_counts_tokens_per_chunk_and_fails_on_an_error_chunk():
    import aiohttp

    from cluster.calibration.probes import ProbeError, _generate

    async def go(error: bool):
        runner, url = await _serve(error)
        try:
            async with aiohttp.ClientSession() as session:
                return await _generate(session, url, [1, 2, 3], 2, None, 30.0)
        finally:
            await runner.cleanup()

    stream = asyncio.run(go(False))
    assert stream.tokens == [1, 2] and stream.meta["dp_rank"] == 1
    with pytest.raises(ProbeError, match="mid-stream.*KV cache full"):
        asyncio.run(go(True))
