"""The draws every generator starts from: random streams, arrival times, output lengths,
and the tokenizer. One place, so that every generator uses the same streams in the same
order (byte-identical traces per seed depend on it)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traces.arrivals import arrival_times
from traces.config import CommonConfig, streams
from traces.distributions import DiscreteDistribution
from traces.tokenizer import load_tokenizer


@dataclass
class CommonDraws:
    rng: dict[str, np.random.Generator]
    times: list[float]
    lengths: list[int] | None  # None: the generator keeps its own (real) lengths
    tokenizer: object


def draw_common(c: CommonConfig, lengths_required: bool = True) -> CommonDraws:
    dist = None
    if lengths_required or c.output_lengths:
        dist = DiscreteDistribution.parse(c.output_lengths)
        if dist.max_value > c.max_new_tokens:
            raise ValueError(f"output length {dist.max_value} exceeds --max-new-tokens {c.max_new_tokens}")
    rng = streams(c.seed, ("arrivals", "lengths", "prefixes", "episodes", "slots"))
    times = arrival_times(c.arrivals, rng["arrivals"])
    lengths = dist.sample(len(times), rng["lengths"], c.length_sampler) if dist is not None else None
    return CommonDraws(rng, times, lengths, load_tokenizer(c.tokenizer))
