"""Controlled live probes of real SGLang ranks, for the step-time fit.

Two kinds, each sent to one rank (`routed_dp_rank`, which our controller honours as
SGLang's does), with prompts of random token ids from a seeded generator (so no probe
shares a prefix with another beyond chance; the uncached count comes from the server's
`meta_info.cached_tokens`):

- prefill: one request at a time, `max_new_tokens` = 1. Its time to first token is one
  prefill step of its uncached tokens with nothing else running, plus the path around
  the engine (HTTP, tokenizer manager, controller, detokenizer), which grows with the
  prompt too. Each length is sent fresh, then again with only a new tail of
  `tail_tokens` (so most of it is cached), to tell the two apart (`fit.py`).
- decode: B requests sent together, each with a short prompt and `ignore_eos` output of
  N tokens. Once all B have their first token, every engine step is one decode step of
  batch B (prefill first, `srt/managers/scheduler.py` `get_next_batch_to_run`, but no
  prefill is left), so the per-token gap in that window is the decode step time:
  y = b0 + b2 B. The window ends when the first request finishes.

`ranks` lists the ranks that run one probe concurrently: `(0,)` is a rank alone, `(0, 1)`
both ranks at once (on 2 cores the ranks then share them with the client and SGLang's
other processes, as they do in a dp=2 replay).

Host time is read here (this is the live side); nothing here runs in the simulator.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from traces.sse import SSEDecoder, StreamError


@dataclass(frozen=True)
class PrefillSample:
    setting: str            # "dp1", "dp2-solo", "dp2-paired": which fit group it belongs to
    rank: int
    prompt_tokens: int
    cached_tokens: int
    ttft_s: float

    @property
    def uncached_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class DecodeSample:
    setting: str
    rank: int
    batch: int              # decode requests running together
    step_s: float           # mean per-token gap while all `batch` requests decoded
    tokens_in_window: int   # tokens per request the gap was averaged over


class ProbeError(RuntimeError):
    pass


@dataclass(frozen=True)
class TokenStream:
    times: list[float]          # arrival of each chunk, host monotonic seconds
    tokens: list[int]           # completion tokens reported with each chunk
    meta: dict


def random_prompt(rng: np.random.Generator, tokens: int, vocab_size: int) -> list[int]:
    # Stay clear of the low ids, where tokenizers keep special tokens.
    low = min(16, max(1, vocab_size // 4))
    return [int(t) for t in rng.integers(low, vocab_size, size=tokens)]


async def _generate(session, url: str, input_ids: list[int], max_new_tokens: int, rank: int | None,
                    timeout_s: float) -> TokenStream:
    import aiohttp

    body: dict = {"input_ids": input_ids, "stream": True,
                  "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True, "temperature": 0.0}}
    if rank is not None:
        body["routed_dp_rank"] = rank
    times, tokens, meta = [], [], {}
    async with session.post(url + "/generate", json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        if resp.status != 200:
            raise ProbeError(f"/generate answered HTTP {resp.status}: {(await resp.text())[:200]}")
        sse = SSEDecoder()
        try:
            async for piece in resp.content.iter_any():
                now = time.monotonic()   # a chunk's time is when its bytes arrived
                for chunk in sse.feed(piece):
                    meta = chunk.get("meta_info", {}) or {}
                    times.append(now)
                    tokens.append(int(meta.get("completion_tokens", len(tokens) + 1)))
        except StreamError as exc:
            raise ProbeError(f"/generate failed mid-stream: {exc}") from None
    if not times:
        raise ProbeError("/generate streamed no token")
    return TokenStream(times, tokens, meta)


async def _prefill_on(session, url, setting, rank, lengths, rng, vocab_size, timeout_s, out, tail_tokens,
                      repeats):
    for n in [n for _ in range(repeats) for n in lengths]:
        prompt = random_prompt(rng, n, vocab_size)
        # Fresh (all uncached), then the same prompt with a new tail (cached prefix): the
        # pair separates the per-prompt-token path cost from the per-uncached-token one.
        variants = [prompt]
        if n > 2 * tail_tokens:
            variants.append(prompt[:-tail_tokens] + random_prompt(rng, tail_tokens, vocab_size))
        for ids in variants:
            sent = time.monotonic()
            stream = await _generate(session, url, ids, 1, rank, timeout_s)
            out.append(PrefillSample(setting, int(stream.meta.get("dp_rank", rank or 0) or 0), n,
                                     int(stream.meta.get("cached_tokens", 0) or 0), stream.times[0] - sent))


def decode_window(streams: list[TokenStream]) -> tuple[float, int] | None:
    """(mean per-token gap, fewest tokens counted) over the window in which every stream
    has had its first token and none has had its last; None when there is no such window
    (the last request's first token came after the first one finished: prefills admitted
    over several steps on a slow host, so no step of the full batch was seen) or when
    its chunks all arrived at one instant."""
    window_start = max(s.times[0] for s in streams)
    window_end = min(s.times[-1] for s in streams)
    gaps, counted = [], []
    for s in streams:
        inside = [(t, k) for t, k in zip(s.times, s.tokens) if window_start <= t <= window_end]
        # Chunks read in one burst share a timestamp (a client starved of CPU): a window
        # that is all burst measured no step.
        if len(inside) >= 2 and inside[-1][1] > inside[0][1] and inside[-1][0] > inside[0][0]:
            gaps.append((inside[-1][0] - inside[0][0]) / (inside[-1][1] - inside[0][1]))
            counted.append(inside[-1][1] - inside[0][1])
    if not gaps:
        return None
    return float(np.mean(gaps)), int(min(counted))


async def _decode_on(session, url, setting, rank, batch, prompt_tokens, output_tokens, rng, vocab_size,
                     timeout_s) -> DecodeSample | None:
    prompts = [random_prompt(rng, prompt_tokens, vocab_size) for _ in range(batch)]
    streams = await asyncio.gather(*[_generate(session, url, p, output_tokens, rank, timeout_s) for p in prompts])
    window = decode_window(streams)
    if window is None:
        return None
    step_s, tokens = window
    return DecodeSample(setting, rank or 0, batch, step_s, tokens)


async def probe_rank_group(url: str, setting: str, ranks: tuple[int | None, ...], *, prefill_lengths: list[int],
                           decode_batches: list[int], decode_prompt_tokens: int, decode_output_tokens: int,
                           vocab_size: int, seed: int, tail_tokens: int = 16, repeats: int = 1,
                           timeout_s: float = 600.0
                           ) -> tuple[list[PrefillSample], list[DecodeSample]]:
    """Run the prefill then the decode probes on every rank of `ranks` at the same time
    (each rank its own seeded stream of prompts), every shape `repeats` times (the sweep
    over shapes repeated, so that a burst of host noise hits one repeat of several shapes
    rather than every repeat of one)."""
    import aiohttp

    seqs = np.random.SeedSequence(seed).spawn(len(ranks))
    rngs = [np.random.default_rng(s) for s in seqs]
    prefill: list[PrefillSample] = []
    decode: list[DecodeSample] = []
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*[_prefill_on(session, url, setting, r, prefill_lengths, g, vocab_size, timeout_s,
                                           prefill, tail_tokens, repeats) for r, g in zip(ranks, rngs)])
        for b in [b for _ in range(repeats) for b in decode_batches]:
            got = await asyncio.gather(*[_decode_on(session, url, setting, r, b, decode_prompt_tokens,
                                                    decode_output_tokens, g, vocab_size, timeout_s)
                                         for r, g in zip(ranks, rngs)])
            # A probe that saw no full-batch window is dropped (and so counted: fewer rows).
            decode += [d for d in got if d is not None]
    return prefill, decode


def run_probes(url: str, setting: str, ranks: tuple[int | None, ...], **kw) -> tuple[list[PrefillSample],
                                                                                  list[DecodeSample]]:
    return asyncio.run(probe_rank_group(url, setting, ranks, **kw))
