"""Turning episodes (agent runs, conversations, single tool calls) into a timed trace.

An episode is a sequence of turns; each turn's prompt extends the previous turn's prompt.
Arrivals come from the arrival process, one per request (so the request rate is exactly
the configured one). `concurrent_episodes` slots are open at a time; each arrival goes to
a slot drawn uniformly at random and becomes that slot's episode's next turn, and a slot
whose episode is done opens the next episode. Turns of one episode are therefore in order
with random gaps (mean `concurrent_episodes / rate`), standing in for tool and think time.
In an open-loop replay a turn may be sent before the previous one has finished: that is
what an open-loop trace means; the Locust agents (locustfile.py) are the closed-loop test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from traces.format import TraceRequest
from traces.tokenizer import Tokenizer


@dataclass(frozen=True)
class Turn:
    prompt: str
    output_tokens: int | None = None   # the true length when the source knows it (ShareGPT)


@dataclass(frozen=True)
class Episode:
    session: str
    prefix_group: str
    turns: tuple[Turn, ...]


def assemble(arrivals_s: np.ndarray, episodes: Iterator[Episode], concurrent_episodes: int,
             rng: np.random.Generator, lengths: np.ndarray | None, max_new_tokens: int,
             tokenizer: Tokenizer, token_ids: bool, id_prefix: str) -> list[TraceRequest]:
    """One request per arrival. `lengths` (one per arrival) overrides the turns' own true
    lengths; without it every turn must carry its `output_tokens`."""
    if concurrent_episodes < 1:
        raise ValueError("--concurrent-episodes must be >= 1")
    slots: list[tuple[int, Episode, int] | None] = [None] * concurrent_episodes
    picks = rng.integers(0, concurrent_episodes, size=len(arrivals_s))
    episode_count = 0
    chosen: list[tuple[int, Episode, int]] = []
    for slot in picks.tolist():
        state = slots[slot]
        if state is None or state[2] >= len(state[1].turns):
            state = (episode_count, next(episodes), 0)
            episode_count += 1
        slots[slot] = (state[0], state[1], state[2] + 1)
        chosen.append(state)
    token_lists = tokenizer.encode_many([episode.turns[turn].prompt for _, episode, turn in chosen])
    out: list[TraceRequest] = []
    for i, (t, (number, episode, turn_index), ids) in enumerate(zip(arrivals_s.tolist(), chosen, token_lists)):
        turn = episode.turns[turn_index]
        output = int(lengths[i]) if lengths is not None else turn.output_tokens
        if output is None:
            raise ValueError("internal: a turn without a true output length and no length distribution")
        out.append(TraceRequest(
            id=f"{id_prefix}-{i:06d}", arrival_s=float(t), max_new_tokens=max_new_tokens,
            output_tokens=output, prompt=turn.prompt, input_ids=ids if token_ids else None,
            prompt_tokens=len(ids), prefix_group=episode.prefix_group, session=episode.session,
            episode=number, turn=turn_index,
        ))
    return out
