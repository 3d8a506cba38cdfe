"""`SimConfig`: everything one simulation run depends on, besides the trace.

Frozen, with units in field names and help text in each field's metadata (the command
line is built from it, `cluster/cli.py`). `resolve` checks it and loads what it names
(cost model, decision-time source, KV capacity), so that bad input fails before any
simulated time passes, with a one-line `ValueError`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sglang_ext.core.cost_model import CostModel, load_cost_model
from sglang_ext.core.policies import POLICIES, LengthSource

# SGLang 0.5.23 `srt/arg_groups/fields/schedule.py`: the waiting-queue policies.
SCHEDULE_POLICIES = ("fcfs", "lpm", "dfs-weight")
LENGTH_SOURCES = tuple(s.value for s in LengthSource)


def _f(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class SimConfig:
    gpus: int = _f(8, "simulated workers (data-parallel ranks, one GPU each)")
    policy: str = _f("prefix_length_aware", "routing policy (sglang_ext/core/policies)",
                     choices=tuple(POLICIES))
    cost_model: str = _f("preble-a6000-mistral-7b", "the workers' true step-time model, a file name in "
                         "sglang_ext/core/cost_models/ or a JSON path (default: PREBLE's Mistral-7B / "
                         "A6000 fit, the poster's setting; its file names the source)")
    router_cost_model: str | None = _f(None, "the cost model the router plans with (a name, a path, "
                                       "or online[:NAME]); default: --cost-model")
    length_source: str = _f(LengthSource.MAX_NEW_TOKENS.value, "where the router reads a request's "
                            "expected output length: max_new_tokens, oracle (the trace's true length) "
                            "or predicted (the trace's predicted_output_tokens)", choices=LENGTH_SOURCES)
    decision_time: str = _f("off", "simulated cost of one routing decision: off | fixed:US | "
                            "model:PATH[#CURVE][@mean|@p99] | measured (host CPU time: host-dependent)")
    seed: int = _f(0, "one seed for every random stream (policy, workers, output token ids)")
    page_size: int = _f(16, "KV page size in tokens, for the workers' radix caches and the mirror")
    kv_capacity_tokens: int | None = _f(None, "KV tokens per worker; default: the cost model's "
                                        "kv_capacity_tokens")
    chunked_prefill_tokens: int = _f(8192, "SGLang --chunked-prefill-size (8192 on 60-160 GiB GPUs, "
                                     "srt/arg_groups/memory_hook.py)")
    max_prefill_tokens: int = _f(16384, "SGLang --max-prefill-tokens")
    max_running_requests: int | None = _f(None, "SGLang --max-running-requests; default: SGLang's rule")
    schedule_policy: str = _f("fcfs", "SGLang --schedule-policy of each worker", choices=SCHEDULE_POLICIES)
    decode_log_interval_steps: int = _f(40, "SGLang --decode-log-interval: KV events are published "
                                        "after each prefill, on idle, and every this many decode steps")
    context_length_tokens: int = _f(32768, "the model's context length")
    dispatch_delay_ms: float = _f(1.0, "controller -> worker, per request")
    event_delay_ms: float = _f(1.0, "a worker's KV-event batch -> the controller's mirror")
    report_delay_ms: float = _f(1.0, "a worker's prefill-done / finished / load report -> the controller")
    load_report_interval_ms: float = _f(1000.0, "how often each worker's load reaches router.reconcile "
                                        "(the live controller's LOAD_CHECK_INTERVAL_S, sglang_ext/controller.py)")
    prefix_holds: bool = _f(True, "let policies that hold a request for a prefix still being prefilled "
                            "on its worker do so (the router's RouterConfig.prefix_holds)")
    force_lengths: bool = _f(False, "send max_new_tokens = the true output length with ignore_eos, as "
                             "`traces replay --force-lengths` does (default: the trace's own cap)")
    max_requests: int | None = _f(None, "simulate only the first N requests of the trace")
    debug_checks: bool = _f(False, "check ledger and mirror against every worker at every step (slow)")
    worker_joins: str = _f("", "elastic workers: W@T[,W@T...] = worker W is not routable until simulated "
                           "second T, then joins (Router.set_alive, as the live controller does on SGLang's "
                           "elastic scale-up); at least one worker must be there from the start")

    def check(self) -> None:
        """Raise a one-line ValueError for a bad field (files are checked by `resolve`)."""
        if not isinstance(self.gpus, int) or self.gpus < 1:
            raise ValueError(f"--gpus must be an integer >= 1, got {self.gpus!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; valid: {', '.join(POLICIES)}")
        if self.length_source not in LENGTH_SOURCES:
            raise ValueError(f"unknown length source {self.length_source!r}; valid: {', '.join(LENGTH_SOURCES)}")
        if self.schedule_policy not in SCHEDULE_POLICIES:
            raise ValueError(f"unknown schedule policy {self.schedule_policy!r}; valid: {', '.join(SCHEDULE_POLICIES)}")
        for name in ("page_size", "chunked_prefill_tokens", "max_prefill_tokens", "decode_log_interval_steps",
                     "context_length_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("kv_capacity_tokens", "max_running_requests", "max_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        for name in ("dispatch_delay_ms", "event_delay_ms", "report_delay_ms"):
            value = getattr(self, name)
            if not value >= 0 or value == float("inf"):
                raise ValueError(f"--{name.replace('_', '-')} must be finite and >= 0, got {value}")
        if not 0 < self.load_report_interval_ms < float("inf"):
            raise ValueError(f"--load-report-interval-ms must be finite and > 0, got {self.load_report_interval_ms}")
        self.joins()

    def joins(self) -> dict[int, float]:
        """`worker_joins` parsed: worker -> the simulated second it joins. One-line
        ValueError for a bad spec."""
        out: dict[int, float] = {}
        for item in filter(None, (part.strip() for part in self.worker_joins.split(","))):
            worker, at, time_s = item.partition("@")
            try:
                w, t = int(worker), float(time_s)
            except ValueError:
                raise ValueError(f"--worker-joins: {item!r} is not WORKER@SECONDS") from None
            if not at or not 0 <= w < self.gpus:
                raise ValueError(f"--worker-joins: {item!r}: the worker must be in 0..{self.gpus - 1}")
            if not 0 <= t < float("inf") or w in out:
                raise ValueError(f"--worker-joins: {item!r}: a finite time >= 0, once per worker")
            out[w] = t
        if len(out) == self.gpus and min(out.values()) > 0:
            raise ValueError("--worker-joins: no worker is there from the start")
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ResolvedConfig:
    """A checked `SimConfig` with what it names loaded."""

    sim: SimConfig
    cost_model: CostModel            # the workers' true step times
    kv_capacity_tokens: int
    decision_time: object            # `cluster.decision_time.DecisionTime`

    @property
    def host_dependent(self) -> bool:
        return bool(self.decision_time.host_dependent)

    def to_dict(self) -> dict:
        return {"sim": self.sim.to_dict(), "cost_model": self.cost_model.to_dict(),
                "router_cost_model": self.sim.router_cost_model or self.sim.cost_model,
                "kv_capacity_tokens": self.kv_capacity_tokens, "host_dependent": self.host_dependent}


def resolve(config: SimConfig) -> ResolvedConfig:
    from cluster.decision_time import parse_decision_time
    from sglang_ext.core.router import build_cost_model

    config.check()
    cost_model = load_cost_model(config.cost_model)   # CostModelError is a one-line ValueError
    capacity = config.kv_capacity_tokens
    if capacity is None:
        capacity = cost_model.extra.get("kv_capacity_tokens")
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"cost model {cost_model.name!r} names no kv_capacity_tokens; "
                             f"pass --kv-capacity-tokens")
    if config.router_cost_model is not None:
        build_cost_model(config.router_cost_model)   # fail now, not inside the engine
    return ResolvedConfig(config, cost_model, capacity, parse_decision_time(config.decision_time))
