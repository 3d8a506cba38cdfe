"""ReAct agent workloads in the PREBLE / poster style.

W workloads, each a shared instruction (a common head, then the workload's own agent
profile) plus k in-context ReAct trajectories (HotpotQA examples from langchain-classic).
An episode answers one FanOutQA multi-hop question: turn t's prompt is the workload
prefix, the question, and t Thought/Action/Observation steps; the model is expected to
write step t's Thought and Action. Prefix structure: all requests share the head, a
workload's requests share its few-shot prefix, an episode's turns extend each other.
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

HEAD = (
    "Solve a question answering task by interleaving Thought, Action and Observation steps. "
    "A Thought reasons about the current situation. An Action is one of three kinds: "
    "Search[entity] looks the entity up in an encyclopedia and returns its first paragraph, "
    "or suggests similar entities when it does not exist; Lookup[keyword] returns the next "
    "sentence containing the keyword in the current page; Finish[answer] returns the answer "
    "and ends the task."
)
_STYLES = ("concise", "careful", "thorough", "skeptical", "methodical", "curious", "pragmatic", "precise")
_DOMAINS = ("sports", "history", "science", "film", "music", "geography", "politics", "literature",
            "business", "art", "technology", "medicine")


@dataclass(frozen=True)
class ReactConfig:
    common: CommonConfig = field(default_factory=CommonConfig)
    workloads: int = 10               # W: distinct shared prefixes
    examples_per_workload: int = 4    # k in-context trajectories (at most 6 exist)
    questions: str = "dev"            # FanOutQA split: dev | test | all
    max_turns: int = 8                # turns per episode at most (the last one finishes)

    def check(self) -> None:
        n = len(sources.react_examples())
        if self.workloads < 1:
            raise ValueError("--workloads must be >= 1")
        if not 0 <= self.examples_per_workload <= n:
            raise ValueError(f"--examples must be between 0 and {n} (the ReAct examples available)")
        if self.max_turns < 1:
            raise ValueError("--max-turns must be >= 1")


def workload_prefixes(cfg: ReactConfig, rng: np.random.Generator) -> list[str]:
    examples = sources.react_examples()
    out = []
    for w in range(cfg.workloads):
        style = _STYLES[w % len(_STYLES)]
        domain = _DOMAINS[(w // len(_STYLES) + w) % len(_DOMAINS)]
        profile = f"You are agent {w}, a {style} researcher specialised in {domain} questions."
        chosen = rng.permutation(len(examples))[: cfg.examples_per_workload]
        shots = "\n\n".join(examples[i] for i in chosen)
        out.append(f"{HEAD}\n{profile}\nHere are some examples.\n\n{shots}\n" if shots else f"{HEAD}\n{profile}\n")
    return out


def _step_text(step: sources.Step, last: bool) -> str:
    text = f"Thought: {step.thought}\nAction: {step.action}\n"
    return text if last or not step.observation else text + f"Observation: {step.observation}\n"


def episodes(cfg: ReactConfig, prefixes: list[str], rng: np.random.Generator) -> Iterator[Episode]:
    questions = sources.fanoutqa_questions(cfg.questions)
    number = 0
    while True:
        w = int(rng.integers(len(prefixes)))
        q = questions[int(rng.integers(len(questions)))]
        # Long questions keep their first steps and the Finish.
        steps = q.steps if len(q.steps) <= cfg.max_turns else q.steps[: cfg.max_turns - 1] + q.steps[-1:]
        prompt = f"{prefixes[w]}\nQuestion: {q.text}\n"
        turns = []
        for step in steps:
            turns.append(Turn(prompt))
            prompt += _step_text(step, last=False)
        yield Episode(session=f"react-{number}-{q.id}", prefix_group=f"react-w{w}", turns=tuple(turns))
        number += 1


def generate(cfg: ReactConfig) -> tuple[TraceHeader, list[TraceRequest]]:
    cfg.check()
    c = cfg.common
    d = draw_common(c)
    prefixes = workload_prefixes(cfg, d.rng["prefixes"])
    requests = assemble(d.times, episodes(cfg, prefixes, d.rng["episodes"]), c.concurrent_episodes, d.rng["slots"],
                        d.lengths, c.max_new_tokens, d.tokenizer, c.token_ids, "react")
    return TraceHeader(generator="react", seed=c.seed, config=as_dict(cfg), tokenizer=d.tokenizer.name), requests
