"""Tool-use workloads: many tool-documentation prefixes with Zipf popularity.

Each request is one call: a short system line, the documentation of one tool (its
prefix group), and a user question (FanOutQA). Tool popularity is a bounded Zipf over
`tools` items, ranks shuffled so that tool 0 is not always the hottest. Documentation is
synthesised from word lists with a per-tool number of endpoints, so prefix lengths vary.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from traces import sources
from traces.common import draw_common
from traces.config import CommonConfig, as_dict
from traces.distributions import zipf_weights
from traces.episodes import Episode, Turn, assemble
from traces.format import TraceHeader, TraceRequest

SYSTEM = "You can call the tool documented below. Reply with a JSON call, then explain the result."
_NOUNS = ("weather", "flight", "hotel", "stock", "recipe", "movie", "song", "book", "map", "news",
          "currency", "calendar", "email", "invoice", "ticket", "sensor", "patent", "genome", "court", "museum")
_VERBS = ("search", "get", "list", "create", "update", "delete", "convert", "estimate", "compare", "track")
_PARAMS = ("query", "id", "date", "city", "country", "limit", "offset", "language", "currency", "units",
           "start", "end", "category", "sort", "format")


@dataclass(frozen=True)
class ToolbenchConfig:
    common: CommonConfig = field(default_factory=lambda: CommonConfig(concurrent_episodes=1))
    tools: int = 200              # distinct tool prefixes
    zipf_exponent: float = 1.1    # popularity skew; 0 = uniform
    min_endpoints: int = 2        # endpoints per tool document, drawn uniformly in [min, max]
    max_endpoints: int = 12

    def check(self) -> None:
        if self.tools < 1:
            raise ValueError("--tools must be >= 1")
        if self.zipf_exponent < 0:
            raise ValueError("--zipf-exponent must be >= 0")
        if not 1 <= self.min_endpoints <= self.max_endpoints:
            raise ValueError("need 1 <= --min-endpoints <= --max-endpoints")


def tool_document(index: int, rng: np.random.Generator, min_endpoints: int, max_endpoints: int) -> str:
    noun = _NOUNS[index % len(_NOUNS)]
    name = f"{noun}_api_{index}"
    lines = [f"Tool: {name}", f"Description: query and manage {noun} data (service #{index})."]
    for _ in range(int(rng.integers(min_endpoints, max_endpoints + 1))):
        verb = _VERBS[int(rng.integers(len(_VERBS)))]
        params = rng.choice(len(_PARAMS), size=int(rng.integers(1, 5)), replace=False)
        args = ", ".join(f"{_PARAMS[p]}: string" for p in sorted(params.tolist()))
        lines.append(f"- {verb}_{noun}({args}): {verb} {noun} records matching the arguments; "
                     f"returns a JSON list of objects with fields id, name and {_PARAMS[int(params[0])]}.")
    return "\n".join(lines)


def episodes(cfg: ToolbenchConfig, docs: list[str], rng: np.random.Generator) -> Iterator[Episode]:
    questions = sources.fanoutqa_questions("all")
    popularity = zipf_weights(cfg.tools, cfg.zipf_exponent)
    rank_to_tool = rng.permutation(cfg.tools)
    number = 0
    while True:
        tool = int(rank_to_tool[rng.choice(cfg.tools, p=popularity)])
        q = questions[int(rng.integers(len(questions)))]
        prompt = f"{SYSTEM}\n{docs[tool]}\nUser: {q.text}\nAssistant:"
        yield Episode(session=f"tool-call-{number}", prefix_group=f"tool-{tool}", turns=(Turn(prompt),))
        number += 1


def generate(cfg: ToolbenchConfig) -> tuple[TraceHeader, list[TraceRequest]]:
    cfg.check()
    c = cfg.common
    d = draw_common(c)
    docs = [tool_document(i, d.rng["prefixes"], cfg.min_endpoints, cfg.max_endpoints) for i in range(cfg.tools)]
    requests = assemble(d.times, episodes(cfg, docs, d.rng["episodes"]), c.concurrent_episodes, d.rng["slots"],
                        d.lengths, c.max_new_tokens, d.tokenizer, c.token_ids, "tool")
    return TraceHeader(generator="toolbench", seed=c.seed, config=as_dict(cfg), tokenizer=d.tokenizer.name), requests
