"""Locust load test: ReAct agents against SGLang's `/generate`, streaming.

Each simulated user runs ReAct episodes: it picks a workload (shared instruction plus
k in-context ReAct examples, as in `python -m traces generate react`) and a FanOutQA
multi-hop question, then loops over turns. Each turn's prompt is the previous prompt plus
the text the server generated plus a tool observation, so the prompt grows and every turn
re-uses the cached prefix of the last one. Output lengths follow `--react-output-lengths`
(forced with `ignore_eos`, so random-weight test models behave like real ones).

Metrics: the `/generate` row (request type POST) is the end-to-end time of one turn;
rows of type TTFT and TPOT hold time to first token and time per output token (ms), sent
as custom Locust requests.

Canonical headless run (SGLang on loopback port 30000, the default host):

    python -m locust -f locustfile.py --headless -u 8 -r 2 -t 60s \\
        --host http://127.0.0.1:30000 --csv results/locust \\
        --react-workloads 4 --react-examples 2 --react-output-lengths 4:0.5,64:0.5

Rate steps instead of -u: `--react-rate-steps 2:30,4:30` (RATE_RPS:DURATION_S, ...).
Users are closed-loop agents, each paced at `--react-user-rps` turns per second
(`constant_throughput`); a step of R requests/s runs ceil(R / user_rps) users. The target
rate holds while a turn finishes within 1 / user_rps; beyond that the system is
overloaded and the rate falls (for strict open-loop arrivals use `python -m traces replay`).
"""

from __future__ import annotations

import math
import random
import time

from locust import FastHttpUser, LoadTestShape, constant_throughput, events, task

from traces import sources
from traces.arrivals import parse_steps
from traces.config import CommonConfig
from traces.distributions import DiscreteDistribution
from traces.react import ReactConfig, workload_prefixes
from traces.sse import decode_all


@events.init_command_line_parser.add_listener
def _options(parser):
    g = parser.add_argument_group("ReAct workload")
    g.add_argument("--react-workloads", type=int, default=4, help="W shared prefixes")
    g.add_argument("--react-examples", type=int, default=1, help="k in-context ReAct examples per workload")
    g.add_argument("--react-output-lengths", default="4:0.5,16:0.5", help="output lengths VALUE:WEIGHT,...")
    g.add_argument("--react-max-turns", type=int, default=4, help="turns per episode at most")
    g.add_argument("--react-user-rps", type=float, default=1.0, help="turns per second per user (pacing)")
    g.add_argument("--react-rate-steps", default="", help="RATE_RPS:DURATION_S,... (replaces -u/-r)")
    g.add_argument("--react-seed", type=int, default=0, help="seed of the workload and of the users' choices")


class _Workload:
    """Built once per process from the parsed options (prefixes depend on the seed only)."""

    def __init__(self, options):
        import numpy as np

        cfg = ReactConfig(CommonConfig(seed=options.react_seed), workloads=options.react_workloads,
                          examples_per_workload=options.react_examples, max_turns=options.react_max_turns)
        cfg.check()
        self.max_turns = cfg.max_turns
        self.prefixes = workload_prefixes(cfg, np.random.default_rng(options.react_seed))
        self.questions = sources.fanoutqa_questions("dev")
        self.lengths = DiscreteDistribution.parse(options.react_output_lengths)


_workload: _Workload | None = None
_user_count = 0


def _get_workload(options) -> _Workload:
    global _workload
    if _workload is None:
        _workload = _Workload(options)
    return _workload


@events.init.add_listener
def _check_options(environment, **_):
    if environment.parsed_options is not None:
        _get_workload(environment.parsed_options)   # bad options fail at start, not per user
        if environment.parsed_options.react_rate_steps:
            parse_steps(environment.parsed_options.react_rate_steps)


class ReactAgent(FastHttpUser):
    host = "http://127.0.0.1:30000"     # loopback by default

    def wait_time(self):
        rps = self.environment.parsed_options.react_user_rps
        return constant_throughput(rps)(self) if rps > 0 else 0

    def on_start(self):
        global _user_count
        _user_count += 1
        self.workload = _get_workload(self.environment.parsed_options)
        self.rng = random.Random(self.environment.parsed_options.react_seed * 100_003 + _user_count)
        self.episode = 0
        self._new_episode()

    def _new_episode(self):
        w = self.rng.randrange(len(self.workload.prefixes))
        self.question = self.workload.questions[self.rng.randrange(len(self.workload.questions))]
        self.prompt = f"{self.workload.prefixes[w]}\nQuestion: {self.question.text}\nThought:"
        self.turn = 0
        self.episode += 1

    @task
    def react_turn(self):
        lengths = self.workload.lengths
        max_new = self.rng.choices(lengths.values, weights=lengths.probs)[0]
        body = {"text": self.prompt, "stream": True,
                "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True}}
        start = time.perf_counter()
        first = None
        text, meta, error = "", {}, None
        with self.client.post("/generate", json=body, stream=True, catch_response=True, name="/generate") as resp:
            try:
                if resp.status_code != 200:
                    raise RuntimeError(f"HTTP {resp.status_code}")
                raw = (d if isinstance(d, bytes) else d.encode() for d in resp.iter_content(chunk_size=4096))
                for chunk in decode_all(raw):    # the replay client's decoder (traces/sse.py)
                    meta = chunk.get("meta_info") or meta
                    text = chunk.get("text", text)    # SGLang streams the text so far by default
                    if first is None and (meta.get("completion_tokens") or 0) >= 1:
                        first = time.perf_counter()
                if not meta:
                    raise RuntimeError("empty stream")
            except Exception as err:  # noqa: BLE001 - any failure marks this turn failed in Locust
                error = err
            end = time.perf_counter()
            resp.request_meta["response_time"] = (end - start) * 1000   # whole stream, not headers only
            if error is not None:
                resp.failure(str(error))
            else:
                resp.success()
        if error is not None or first is None:
            self._new_episode()
            return
        n = int(meta.get("completion_tokens") or 0)
        self._metric("TTFT", (first - start) * 1000)
        if n >= 2:
            self._metric("TPOT", (end - first) * 1000 / (n - 1))
        self._advance(text)

    def _metric(self, kind: str, value_ms: float):
        self.environment.events.request.fire(request_type=kind, name="/generate", response_time=value_ms,
                                             response_length=0, exception=None, context={})

    def _advance(self, generated: str):
        steps = self.question.steps
        step = steps[min(self.turn, len(steps) - 1)]
        self.turn += 1
        if self.turn >= min(self.workload.max_turns, len(steps)):
            self._new_episode()
            return
        observation = step.observation or "(no result)"
        self.prompt = f"{self.prompt}{generated}\nObservation: {observation}\nThought:"


class RateSteps(LoadTestShape):
    """Request-rate steps from `--react-rate-steps`; without it, honours -u, -r and -t."""

    use_common_options = True

    def tick(self):
        options = self.runner.environment.parsed_options
        run_time = self.get_run_time()
        if not options.react_rate_steps:
            if options.run_time and run_time > options.run_time:
                return None
            return options.num_users or 1, options.spawn_rate or 1
        per_user = options.react_user_rps if options.react_user_rps > 0 else 1.0
        elapsed = 0.0
        for rate, duration in parse_steps(options.react_rate_steps):
            elapsed += duration
            if run_time < elapsed:
                users = max(1, math.ceil(rate / per_user)) if rate > 0 else 0
                return users, max(users, 1)
        return None
