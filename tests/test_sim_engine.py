"""The cluster simulator's engine: determinism, conservation, mirror vs worker caches,
debug checks, and one behaviour a cache-affine policy must show."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from cluster.config import SimConfig, resolve
from cluster.engine import Simulation, run_simulation
from cluster.results import write_outputs
from traces.arrivals import ArrivalConfig
from traces.config import CommonConfig
from traces.format import Trace, read_trace, write_trace
from traces.react import ReactConfig, generate

# Small enough for 2 CPU cores, busy enough that requests queue and share prefixes.
BASE = SimConfig(gpus=4, policy="prefix_length_aware", cost_model="h100-llama3.1-8b",
                 kv_capacity_tokens=60_000, seed=1)


def react_trace(tmp_path_factory, rate_rps: float, duration_s: float, seed: int = 1, workloads: int = 4,
                token_ids: bool = True, output_lengths: str = "1:0.5,120:0.5", max_new_tokens: int = 200,
                examples: int = 2) -> Trace:
    common = CommonConfig(seed=seed, arrivals=ArrivalConfig(rate_rps=rate_rps, duration_s=duration_s),
                          output_lengths=output_lengths, max_new_tokens=max_new_tokens, token_ids=token_ids)
    header, requests = generate(ReactConfig(common, workloads=workloads, examples_per_workload=examples))
    path = tmp_path_factory.mktemp("trace") / "react.jsonl"
    write_trace(path, header, requests)
    return read_trace(path)


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Trace:
    return react_trace(tmp_path_factory, rate_rps=24, duration_s=6)


@pytest.fixture(scope="module")
def outcome(trace):
    return run_simulation(trace, BASE)


def _files(outcome, path) -> dict[str, bytes]:
    write_outputs(outcome, path)
    return {name: (path / name).read_bytes() for name in ("requests.csv", "summary.json", "config.json")}


def test_same_seed_gives_byte_identical_outputs(trace, outcome, tmp_path):
    config = dataclasses.replace(BASE, policy="kv_cost")   # seeded random tie-breaks
    first = _files(run_simulation(trace, config), tmp_path / "a")
    second = _files(run_simulation(trace, config), tmp_path / "b")
    assert first == second


def test_different_seed_gives_different_outputs(trace, tmp_path):
    config = dataclasses.replace(BASE, policy="kv_cost")
    one = _files(run_simulation(trace, config), tmp_path / "a")
    two = _files(run_simulation(trace, dataclasses.replace(config, seed=2)), tmp_path / "b")
    assert one["requests.csv"] != two["requests.csv"]


def test_every_request_finishes_once_with_its_trace_length(trace, outcome):
    by_id = {r.id: r for r in outcome.results}
    assert len(by_id) == len(outcome.results) == len(trace.requests)
    for req in trace.requests:
        r = by_id[req.id]
        assert r.ok and r.output_tokens == req.output_tokens
        assert r.prompt_tokens == len(req.input_ids)
        assert 0 < r.ttft_s <= r.e2e_s
        assert 0 <= r.cached_tokens < r.prompt_tokens
    assert outcome.summary["succeeded"] == len(trace.requests)
    assert outcome.summary["length_mismatches"] == 0
    assert sum(outcome.summary["simulator"]["requests_per_worker"]) == len(trace.requests)


def test_requests_queue_and_hit_the_cache(outcome):
    """The fixture is a real load, not a trivial one: prefixes are reused and steps batch."""
    sim = outcome.summary["simulator"]
    assert outcome.summary["prefix_hit_rate"] > 0.3
    assert sum(sim["steps"]) > sum(sim["prefill_steps"]) > 0
    assert sim["kv_events"]["batches_applied"] == sim["kv_events"]["batches_published"] > 0
    assert sim["kv_events"]["gaps"] == 0
    assert sim["held_decisions"] > 0   # prefix holds ran: held requests were released and finished


def test_mirror_equals_each_worker_cache_after_a_run(trace):
    sim = Simulation(trace, resolve(BASE))
    sim.run()
    probes = 0
    for job in sim.jobs:
        ids = job.request.input_ids
        mirror = sim.router.tree.match(list(ids))
        for w, worker in enumerate(sim.workers):
            assert mirror[w] == worker.radix.match(ids).cached_tokens
            probes += mirror[w] > 0
    assert probes > len(sim.jobs)   # the caches are not empty: prompts match on several workers
    for w, worker in enumerate(sim.workers):
        assert sim.router.tree.tokens_held(w) == worker.radix.total_size() > 0


def test_debug_checks_pass_on_a_normal_run(trace):
    sim = Simulation(trace, resolve(dataclasses.replace(BASE, debug_checks=True)))
    outcome = sim.run()
    assert sim.checks.checked_steps == sum(outcome.summary["simulator"]["steps"])
    assert sim.checks.checked_snapshots > 0
    # The checks observe; they do not change the run.
    plain = run_simulation(trace, BASE)
    assert [dataclasses.astuple(r) for r in plain.results] == [dataclasses.astuple(r) for r in outcome.results]


def test_debug_checks_catch_a_ledger_that_misses_finish_reports(trace):
    from cluster.checks import DivergenceError

    sim = Simulation(trace, resolve(dataclasses.replace(BASE, debug_checks=True)))
    sim.router.finished = lambda rid, output_tokens, now_s: None   # reports lost on the way
    with pytest.raises(DivergenceError, match="the ledger holds"):
        sim.run()


def test_kv_pressure_retracts_and_still_conserves_requests(tmp_path_factory):
    """Long outputs on a small KV pool: SGLang's retraction path runs; every request still
    finishes once with its length, and the debug checks hold throughout."""
    trace = react_trace(tmp_path_factory, rate_rps=8, duration_s=6, workloads=2, examples=1,
                        output_lengths="1500:1", max_new_tokens=4000)
    sim = Simulation(trace, resolve(dataclasses.replace(BASE, gpus=1, kv_capacity_tokens=24_000, debug_checks=True)))
    outcome = sim.run()
    assert outcome.summary["simulator"]["retracted"] > 0
    assert [r.output_tokens for r in outcome.results] == [r.output_tokens for r in trace.requests]
    assert all(r.ok for r in outcome.results)


def test_measured_decision_time_is_host_dependent(trace):
    outcome = run_simulation(trace, dataclasses.replace(BASE, decision_time="measured"))
    assert outcome.summary["host_dependent"] is True
    assert outcome.config["simulate"]["host_dependent"] is True
    assert outcome.summary["decision_time_us"]["mean"] > 0   # a route call costs real CPU time


def test_delays_are_simulated_time(trace):
    """A request reaches its worker only after the dispatch delay, and the workers' reports
    reach the router only after the report delay (the router then sees stale loads)."""
    base = run_simulation(trace, BASE)
    slow = run_simulation(trace, dataclasses.replace(BASE, dispatch_delay_ms=50.0, report_delay_ms=200.0))
    assert min(r.ttft_s for r in slow.results) >= 0.05 > min(r.ttft_s for r in base.results)
    assert slow.summary["simulator"]["requests_per_worker"] != base.summary["simulator"]["requests_per_worker"]


def test_decision_time_keeps_the_controller_busy(trace):
    fast = run_simulation(trace, BASE)
    slow = run_simulation(trace, dataclasses.replace(BASE, decision_time="fixed:20000"))  # 20 ms each
    assert fast.summary["decision_time_us"]["mean"] == 0
    assert slow.summary["decision_time_us"]["mean"] == pytest.approx(20000)
    # At 24 requests/s, 20 ms decisions keep the controller about half busy: requests wait.
    assert slow.summary["ttft_s"]["mean"] > fast.summary["ttft_s"]["mean"] + 0.01
    assert slow.summary["host_dependent"] is False


def test_cache_affine_policy_beats_round_robin_on_prefix_hits(tmp_path_factory):
    trace = react_trace(tmp_path_factory, rate_rps=16, duration_s=8, workloads=6)
    config = dataclasses.replace(BASE, gpus=8)
    rr = run_simulation(trace, dataclasses.replace(config, policy="round_robin")).summary["prefix_hit_rate"]
    affine = run_simulation(trace, dataclasses.replace(config, policy="cache_aware")).summary["prefix_hit_rate"]
    assert affine > rr + 0.1


def test_text_prompts_are_tokenized_with_the_trace_tokenizer(tmp_path_factory):
    with_ids = react_trace(tmp_path_factory, rate_rps=8, duration_s=3)
    text_only = react_trace(tmp_path_factory, rate_rps=8, duration_s=3, token_ids=False)
    assert text_only.requests[0].input_ids is None
    a = run_simulation(with_ids, BASE).results
    b = run_simulation(text_only, BASE).results
    assert [r.prompt_tokens for r in a] == [r.prompt_tokens for r in b]
    assert [(r.ttft_s, r.e2e_s, r.worker) for r in a] == [(r.ttft_s, r.e2e_s, r.worker) for r in b]


def test_length_sources(trace):
    oracle = run_simulation(trace, dataclasses.replace(BASE, length_source="oracle"))
    assert oracle.summary["succeeded"] == len(trace.requests)
    with pytest.raises(ValueError, match="predicted_output_tokens"):
        run_simulation(trace, dataclasses.replace(BASE, length_source="predicted"))
    predicted = Trace(trace.header, [msgspec.structs.replace(r, predicted_output_tokens=r.output_tokens)
                                     for r in trace.requests])
    # A perfect prediction is the oracle.
    same = run_simulation(predicted, dataclasses.replace(BASE, length_source="predicted"))
    assert [dataclasses.astuple(r) for r in same.results] == [dataclasses.astuple(r) for r in oracle.results]


@pytest.mark.parametrize("field, value, message", [
    ("gpus", 0, "--gpus must be"),
    ("policy", "nope", "unknown policy"),
    ("cost_model", "no-such-model", "no cost model"),
    ("length_source", "psychic", "unknown length source"),
    ("decision_time", "sometimes", "--decision-time"),
    ("event_delay_ms", -1.0, "--event-delay-ms"),
])
def test_bad_config_is_a_one_line_value_error(field, value, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve(dataclasses.replace(BASE, **{field: value}))
    assert "\n" not in str(info.value)


def test_a_cost_model_without_kv_capacity_needs_the_flag():
    with pytest.raises(ValueError, match="--kv-capacity-tokens"):
        resolve(dataclasses.replace(BASE, kv_capacity_tokens=None))
    assert resolve(dataclasses.replace(BASE, cost_model="preble-a6000-mistral-7b",
                                       kv_capacity_tokens=None)).kv_capacity_tokens == 198516
