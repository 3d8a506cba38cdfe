"""Prefix groups: a few long shared prefixes, each with several short questions.

G groups x P prompts. Every prompt of group g is group g's prefix (exactly
`prefix_tokens` tokens) followed by the prompt's own question (exactly `question_tokens`
tokens); every request asks for `output_tokens`. The G*P requests arrive as a Poisson
(or gamma) process at `rate_rps`, in a random order of groups. This is the shape where
keeping a group on one worker saves its prefix's prefill, and where piling a group onto
one worker while the other idles costs latency: a regression case for prefix-aware
routing (`python -m sglang_ext.bench shared-prefix`).

Token counts are exact for the given tokenizer, so prompts are stored as `input_ids`
(the replay sends ids when a request has them; the `prompt` text is their decoding, for
reading). Invariants, checked by the tests:
- prompts of one group share exactly their first `prefix_tokens` tokens (questions of a
  group differ at their first token);
- prefixes of different groups differ at token 0;
- words are drawn from FanOutQA's question text, so prefixes read like prose, not noise.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

import numpy as np

from traces import sources
from traces.arrivals import PROCESSES, ArrivalConfig, first_arrivals
from traces.config import as_dict, streams
from traces.format import TraceHeader, TraceRequest
from traces.tokenizer import Tokenizer, load_tokenizer

def _opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class PrefixGroupsConfig:
    seed: int = _opt(0, "the same seed gives a byte-identical file")
    groups: int = _opt(4, "G prefix groups")
    prompts_per_group: int = _opt(6, "P prompts (requests) per group")
    prefix_tokens: int = _opt(512, "tokens of each group's shared prefix")
    question_tokens: int = _opt(32, "tokens of each prompt's own question, after the prefix")
    output_tokens: int = _opt(16, "true output length of every request (the replay forces it)")
    max_new_tokens: int = _opt(16, "cap the client declares with each request")
    rate_rps: float = _opt(0.5, "mean arrival rate, requests per second")
    arrival: str = _opt("poisson", "arrival process", choices=PROCESSES)
    cv: float = _opt(1.0, "gamma: coefficient of variation of the gaps (burstiness)")
    tokenizer: str | None = _opt(None, "HF model folder whose tokens are counted; unset: models/tiny-llama")

    @property
    def requests(self) -> int:
        return self.groups * self.prompts_per_group

    def arrivals(self) -> ArrivalConfig:
        # duration_s is unused: the request count, not a duration, ends the trace.
        return ArrivalConfig(process=self.arrival, rate_rps=self.rate_rps, cv=self.cv)

    def check(self) -> None:
        for name in ("groups", "prompts_per_group", "prefix_tokens", "question_tokens", "output_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if self.output_tokens > self.max_new_tokens:
            raise ValueError(f"--output-tokens {self.output_tokens} exceeds --max-new-tokens {self.max_new_tokens}")
        if not self.rate_rps > 0:
            raise ValueError(f"--rate-rps must be > 0, got {self.rate_rps}")
        self.arrivals().check()


@functools.lru_cache(maxsize=1)
def word_pool() -> tuple[str, ...]:
    """Distinct words of FanOutQA's questions, sorted (a set's order would vary by run)."""
    words = {w for q in sources.fanoutqa_questions("all") for w in re.findall(r"[A-Za-z]+", q.text)}
    return tuple(sorted(words))


@functools.lru_cache(maxsize=8)
def _words_by_first_token(tok: Tokenizer, lead: str) -> dict[int, tuple[str, ...]]:
    by_first: dict[int, list[str]] = {}
    for word in word_pool():
        by_first.setdefault(tok.encode(lead + word)[0], []).append(word)
    return {first: tuple(words) for first, words in by_first.items()}


def token_run(tok: Tokenizer, rng: np.random.Generator, n: int, taken_first: set[int], lead: str = "") -> list[int]:
    """Exactly `n` token ids of random words whose first id is not in `taken_first`.

    The first word is drawn among the words whose first token is still free (a small
    vocabulary, like the tiny Llama's, has few distinct word-initial tokens and skews
    them, so drawing any word and retrying could take long). n words give at least n
    tokens (each word is its own pre-token), so cutting the encoding at n never comes
    up short, and the first word's first token stays the run's first token.
    """
    by_first = _words_by_first_token(tok, lead)
    free = sorted(set(by_first) - taken_first)
    if not free:
        raise ValueError(f"this tokenizer has only {len(by_first)} distinct word-initial tokens: too few for "
                         f"that many groups (or prompts per group) to differ at their first token")
    first = free[int(rng.integers(len(free)))]
    first_words = by_first[first]
    pool = word_pool()
    words = [first_words[int(rng.integers(len(first_words)))]]
    words += [pool[i] for i in rng.integers(len(pool), size=n - 1).tolist()]
    ids = tok.encode(lead + " ".join(words))[:n]
    if len(ids) != n or ids[0] != first:
        raise ValueError(f"internal: the tokenizer split {words[0]!r} differently inside a text")
    taken_first.add(first)
    return ids


def generate(cfg: PrefixGroupsConfig) -> tuple[TraceHeader, list[TraceRequest]]:
    cfg.check()
    tok = load_tokenizer(cfg.tokenizer)
    rng = streams(cfg.seed, ("arrivals", "order", "prefixes", "questions"))
    times = first_arrivals(cfg.arrivals(), cfg.requests, rng["arrivals"])
    prefix_firsts: set[int] = set()
    prefixes = [token_run(tok, rng["prefixes"], cfg.prefix_tokens, prefix_firsts) for _ in range(cfg.groups)]
    questions = []
    for _ in range(cfg.groups):
        firsts: set[int] = set()   # distinct within a group: the shared prefix ends at prefix_tokens
        # The leading space makes the question a new word after the prefix's last one.
        questions.append([token_run(tok, rng["questions"], cfg.question_tokens, firsts, lead=" ")
                          for _ in range(cfg.prompts_per_group)])
    order = rng["order"].permutation(cfg.requests).tolist()
    requests = []
    for i, (t, item) in enumerate(zip(times.tolist(), order)):
        g, p = divmod(item, cfg.prompts_per_group)
        ids = prefixes[g] + questions[g][p]
        requests.append(TraceRequest(
            id=f"pg-{i:06d}", arrival_s=float(t), max_new_tokens=cfg.max_new_tokens, output_tokens=cfg.output_tokens,
            prompt=tok.decode(ids), input_ids=ids, prompt_tokens=len(ids), prefix_group=f"group-{g}",
            session=f"group-{g}-prompt-{p}", episode=item, turn=0,
        ))
    return TraceHeader(generator="prefix-groups", seed=cfg.seed, config=as_dict(cfg), tokenizer=tok.name), requests
