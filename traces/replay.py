"""Open-loop replay of a trace against SGLang's `/generate` (streaming).

Each request is sent at its trace timestamp divided by `rate_scale`, whatever happened to
earlier ones; at most `max_concurrency` are in flight (a request beyond that waits for a
slot, and the wait counts as latency, see metrics.py). With `force_lengths`, each request
asks for exactly its true output length (`max_new_tokens` = the trace's `output_tokens`,
`ignore_eos`): random-weight test models would otherwise stop anywhere. The worker,
cached tokens and token counts come from `meta_info` of SGLang's last stream chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import pathlib
import sys
import time
from dataclasses import asdict, dataclass

from sglang_ext.settings import CLIENT_MAX_NEW_TOKENS_KEY, ORACLE_OUTPUT_TOKENS_KEY
from sglang_ext.gateway import worker_index
from traces.format import Trace, TraceRequest
from traces.metrics import RequestResult, summarize, write_csv
from traces.sse import decode_async


class ServerUnreachable(RuntimeError):
    pass


@dataclass(frozen=True)
class ReplayConfig:
    trace: str
    url: str = "http://127.0.0.1:30000"
    out_dir: str = "replay-out"
    rate_scale: float = 1.0             # 2.0 replays twice as fast (timestamps halved)
    max_concurrency: int = 256          # requests in flight at most
    force_lengths: bool = True          # max_new_tokens = true length, ignore_eos
    max_requests: int | None = None     # replay only the first N requests
    max_duration_s: float | None = None # replay only requests scheduled before this (scaled) time
    request_timeout_s: float = 600.0
    send_rid: bool = True               # send the trace id as SGLang's rid
    progress: bool = True

    def check(self) -> None:
        if not self.rate_scale > 0:
            raise ValueError("--rate-scale must be > 0")
        if self.max_concurrency < 1:
            raise ValueError("--max-concurrency must be >= 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("--max-requests must be >= 1")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https://, got {self.url!r}")


def request_body(req: TraceRequest, cfg: ReplayConfig) -> dict:
    sampling = {"max_new_tokens": req.output_tokens if cfg.force_lengths else req.max_new_tokens}
    if cfg.force_lengths:
        sampling["ignore_eos"] = True
        # Forcing the length rewrites max_new_tokens; tell our controller what the client
        # declared and the true length, so that its `max_new_tokens` and `oracle` length
        # sources stay distinct (stock SGLang passes custom_params through untouched).
        sampling["custom_params"] = {
            CLIENT_MAX_NEW_TOKENS_KEY: req.max_new_tokens,
            ORACLE_OUTPUT_TOKENS_KEY: req.output_tokens,
        }
    body: dict = {"sampling_params": sampling, "stream": True}
    if req.input_ids:
        body["input_ids"] = list(req.input_ids)
    else:
        body["text"] = req.prompt
    if cfg.send_rid:
        body["rid"] = req.id
    return body


def select(trace: Trace, cfg: ReplayConfig) -> list[TraceRequest]:
    reqs = trace.requests[: cfg.max_requests] if cfg.max_requests else list(trace.requests)
    if cfg.max_duration_s is not None:
        reqs = [r for r in reqs if r.arrival_s / cfg.rate_scale < cfg.max_duration_s]
    return reqs


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text[:300]


async def _probe(session, url: str) -> int | None:
    """Fail fast when nothing listens at `url`; return the server's dp_size if it says."""
    import aiohttp

    try:
        async with session.get(url + "/server_info", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            if resp.status != 200:
                async with session.get(url + "/health", timeout=aiohttp.ClientTimeout(total=10)) as health:
                    if health.status != 200:
                        raise ServerUnreachable(f"SGLang at {url} answered /health with HTTP {health.status}")
                return await _gateway_workers(session, url)
            info = await resp.json(content_type=None)
            return int(info.get("dp_size") or 1) if isinstance(info, dict) else None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        raise ServerUnreachable(f"cannot reach SGLang at {url} ({_one_line(err)})") from None


async def _gateway_workers(session, url: str) -> int | None:
    """The SGLang Model Gateway has no /server_info; its /get_server_info counts the
    workers (`{"workers_count": N, ...}`), so that a worker that served nothing still
    counts in the per-worker figures."""
    import aiohttp

    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError):
        async with session.get(url + "/get_server_info", timeout=aiohttp.ClientTimeout(total=10)) as resp:
            info = await resp.json(content_type=None) if resp.status == 200 else None
            if isinstance(info, dict) and isinstance(info.get("workers_count"), int):
                return info["workers_count"]
    return None


def _worker(meta: dict) -> int | None:
    """The rank that served a request; behind the SGLang Model Gateway (dp=1 workers, no
    rank) the worker index that `sglang_ext.gateway` labels each worker's replies with."""
    rank = meta.get("dp_rank")
    return rank if rank is not None else worker_index(meta.get("weight_version"))


async def _send(session, req: TraceRequest, cfg: ReplayConfig, start: float, slots: asyncio.Semaphore,
                result: RequestResult) -> None:
    import aiohttp

    scheduled = start + result.arrival_s
    await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
    async with slots:
        sent = time.perf_counter()
        result.sent_s = sent - start
        result.queue_delay_s = max(0.0, sent - scheduled)
        first_token: float | None = None
        meta: dict = {}
        try:
            timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s)
            async with session.post(cfg.url + "/generate", json=request_body(req, cfg), timeout=timeout) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                # Raw bytes into the SSE decoder: a cumulative-text chunk can outgrow
                # aiohttp's line-length limit, so the stream is not read by lines.
                async for chunk in decode_async(resp.content.iter_any()):
                    meta = chunk.get("meta_info") or meta
                    if first_token is None and (meta.get("completion_tokens") or 0) >= 1:
                        first_token = time.perf_counter()
            done = time.perf_counter()
            if not meta:
                raise RuntimeError("the stream ended without any output")
            result.prompt_tokens = meta.get("prompt_tokens")
            result.output_tokens = meta.get("completion_tokens")
            result.cached_tokens = meta.get("cached_tokens")
            result.worker = _worker(meta)
            result.finish(None if first_token is None else first_token - scheduled, done - scheduled)
            result.ok = True
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, RuntimeError, ValueError) as err:
            result.error = _one_line(err)
            result.e2e_s = time.perf_counter() - scheduled


async def _progress(results: list[RequestResult], start: float, stop: asyncio.Event) -> None:
    """A tqdm bar of finished requests on a terminal; off one (a log file), a plain line
    every 5 s, since a bar's redraws would fill the log."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    period = 1.0 if tty else 5.0
    bar = tqdm(total=len(results), desc="replay", unit="req", file=sys.stderr, dynamic_ncols=True, disable=not tty)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=period)
            except asyncio.TimeoutError:
                pass
            sent = sum(1 for r in results if r.sent_s is not None)
            done = sum(1 for r in results if r.ok or r.error)
            failed = sum(1 for r in results if r.error)
            if tty:
                bar.set_postfix(sent=sent, in_flight=sent - done, failed=failed, refresh=False)
                bar.update(done - bar.n)
            else:
                print(f"replay: {time.perf_counter() - start:6.1f} s  sent {sent}/{len(results)}  "
                      f"done {done}  in flight {sent - done}  failed {failed}", file=sys.stderr, flush=True)
    finally:
        bar.close()


async def replay_async(trace: Trace, cfg: ReplayConfig) -> tuple[list[RequestResult], int | None]:
    import aiohttp

    reqs = select(trace, cfg)
    results = [RequestResult(id=r.id, arrival_s=r.arrival_s / cfg.rate_scale, prefix_group=r.prefix_group,
                             session=r.session, turn=r.turn, expected_output_tokens=r.output_tokens if cfg.force_lengths else None)
               for r in reqs]
    # A fresh connection per request: a pooled idle one can be closed by the server's
    # keep-alive timeout (SGLANG_TIMEOUT_KEEP_ALIVE, 5 s: sglang/srt/environ.py) just as
    # a request goes out on it, and the client then sees "Server disconnected" for a
    # request the server never received (seen in a live benchmark: 2 of 59 requests,
    # neither in the server's access log).
    connector = aiohttp.TCPConnector(limit=cfg.max_concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        dp_size = await _probe(session, cfg.url)
        slots = asyncio.Semaphore(cfg.max_concurrency)
        stop = asyncio.Event()
        start = time.perf_counter()
        progress = asyncio.create_task(_progress(results, start, stop)) if cfg.progress else None
        await asyncio.gather(*(_send(session, r, cfg, start, slots, res) for r, res in zip(reqs, results)))
        stop.set()
        if progress is not None:
            await progress
    return results, dp_size


def run(trace: Trace, cfg: ReplayConfig) -> dict:
    """Replay and write requests.csv, summary.json and config.json into `out_dir`."""
    cfg.check()
    if not select(trace, cfg):
        raise ValueError("no request to replay (check --max-requests / --max-duration-s)")
    results, dp_size = asyncio.run(replay_async(trace, cfg))
    out = pathlib.Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(results, dp_size)
    summary["url"] = cfg.url
    summary["trace"] = cfg.trace
    write_csv(results, out / "requests.csv")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps({"replay": asdict(cfg), "trace_header": {
        "generator": trace.header.generator, "seed": trace.header.seed, "version": trace.header.version,
        "config": trace.header.config}}, indent=2) + "\n")
    return summary


def simulate(trace: Trace, cfg: ReplayConfig, sim) -> dict:
    """`replay --simulate`: the same selection and rate scaling as a live replay, run on
    the cluster simulator (`sim`, a `cluster.config.SimConfig`) instead of a server;
    writes the same files. The simulated client has no concurrency cap: it sends every
    request at its scheduled time (`--max-concurrency`, `--request-timeout-s` do not apply)."""
    import msgspec

    from cluster.engine import run_simulation
    from cluster.results import write_outputs

    cfg.check()
    reqs = select(trace, cfg)
    if not reqs:
        raise ValueError("no request to replay (check --max-requests / --max-duration-s)")
    if cfg.rate_scale != 1.0:
        reqs = [msgspec.structs.replace(r, arrival_s=r.arrival_s / cfg.rate_scale) for r in reqs]
    scaled = Trace(trace.header, reqs, trace.skipped_lines)
    outcome = run_simulation(scaled, dataclasses.replace(sim, force_lengths=cfg.force_lengths))
    write_outputs(outcome, cfg.out_dir, trace_path=cfg.trace)
    config = dict(outcome.config, replay=asdict(cfg))
    (pathlib.Path(cfg.out_dir) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return outcome.summary
