"""Configs shared by the generators: frozen dataclasses, units in field names."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from traces.arrivals import ArrivalConfig


@dataclass(frozen=True)
class CommonConfig:
    seed: int = 0
    arrivals: ArrivalConfig = field(default_factory=ArrivalConfig)
    output_lengths: str = "1:0.5,300:0.5"     # VALUE:WEIGHT list of true output lengths (tokens)
    length_sampler: str = "stratified"        # stratified | iid (see distributions.py)
    max_new_tokens: int = 512                 # the cap sent with each request, set independently
    concurrent_episodes: int = 16             # open sessions that arrivals are spread over
    tokenizer: str | None = None              # HF folder for token counts; None = the tiny Llama
    token_ids: bool = False                   # also store prompt token ids in the trace


def streams(seed: int, names: tuple[str, ...]) -> dict[str, np.random.Generator]:
    """Independent generators per concern, so changing one option (say the length
    distribution) does not reshuffle another (the arrival times)."""
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {name: np.random.default_rng(s) for name, s in zip(names, children)}


def as_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)
