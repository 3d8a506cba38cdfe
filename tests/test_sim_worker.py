"""`cluster/worker.py`: SGLang 0.5.23's batch rules on a simulated clock, hand-checked.

The linear test cost model makes durations readable: 1 ms per step + 1 us per prefill
token + 1 us per decode request.
"""

from __future__ import annotations

from array import array

import msgspec
import numpy as np
import pytest

from cluster.worker import (
    INIT_NEW_TOKEN_RATIO,
    MIN_NEW_TOKEN_RATIO,
    NEW_TOKEN_RATIO_DECAY,
    SimRequest,
    SimWorker,
    StepResult,
    WorkerConfig,
    output_token_ids,
)
from sglang_ext.core.cost_model import CostModel, load_cost_model
from sglang_ext.core.events import EventApplier
from sglang_ext.core.global_tree import GlobalTree

COST = CostModel(name="test", step_base_us=1000.0, prefill_us_per_token=1.0, decode_us_per_request=1.0)


def make_worker(capacity: int = 100_000, cost: CostModel = COST, seed: int = 0, **config) -> SimWorker:
    return SimWorker(0, WorkerConfig(kv_capacity_tokens=capacity, **config), cost, seed)


def make_req(rid: str, prompt: int | array, max_new: int = 10, out: int | None = None, base: int = 0,
             ignore_eos: bool = False, seed: int = 0) -> SimRequest:
    ids = prompt if isinstance(prompt, array) else array("q", range(base, base + prompt))
    return SimRequest(rid, ids, max_new, max_new if out is None else out, ignore_eos=ignore_eos, output_seed=seed)


class Run:
    """Steps a worker back to back, submitting requests at chosen step numbers."""

    def __init__(self, worker: SimWorker, at_step: dict[int, list[SimRequest]] | None = None):
        self.worker, self.at_step, self.now, self.steps = worker, at_step or {}, 0.0, []

    def step(self) -> StepResult:
        for req in self.at_step.pop(len(self.steps), []):
            self.worker.submit(req, self.now)
        result = self.worker.step(self.now)
        self.now += result.duration_s
        self.steps.append(result)
        return result

    def until_idle(self, limit: int = 100_000) -> list[StepResult]:
        while self.worker.has_work() or self.at_step:
            assert len(self.steps) < limit
            self.step()
        return self.steps


def test_prefill_runs_first_whenever_one_can_be_formed():
    run = Run(make_worker(), {0: [make_req("a", 32, max_new=5)], 2: [make_req("b", 32, max_new=5, base=100)]})
    kinds = [run.step().kind for _ in range(4)]
    assert kinds == ["prefill", "decode", "prefill", "decode"]   # b is prefilled while a decodes
    assert run.steps[2].prefill_done == [("b", 0)] and run.steps[3].batch_requests == 2
    assert run.steps[0].duration_s == pytest.approx(1e-3 + 32e-6)
    assert run.steps[1].duration_s == pytest.approx(1e-3 + 1e-6)


def test_a_long_prompt_is_chunked_one_chunked_request_at_a_time():
    worker = make_worker(page_size=16, chunked_prefill_size=64)
    run = Run(worker, {0: [make_req("a", 200, max_new=3), make_req("d", 100, max_new=3, base=1000)]})
    steps = [run.step() for _ in range(6)]
    # a: 64 + 64 + 64 + 8; d starts with the 48 tokens the last chunk of a leaves (56 - 8,
    # its budget charged page-ceiled: 64 - 16), and finishes with 52 on the next step.
    assert [s.prefill_tokens for s in steps[:5]] == [64, 64, 64, 56, 52]
    assert [s.batch_requests for s in steps[:5]] == [1, 1, 1, 2, 1]
    assert [s.prefill_done for s in steps[:5]] == [[], [], [], [("a", 0)], [("d", 0)]]
    assert steps[5].kind == "decode" and steps[5].batch_requests == 2
    # Between chunks the computed pages enter the tree, locked (`checkpoint_kv_cache`).
    assert worker.radix.match(array("q", range(200))).cached_tokens == 192
    # Both prompts, page-aligned, are in the tree and locked: checkpointed when prefilled.
    assert worker.radix.protected_size() == 192 + 96


@pytest.mark.parametrize("capacity, admitted", [(844, 1), (845, 2)])
def test_admission_stops_at_the_token_budget(capacity, admitted):
    # Each: 100 uncached + 300 output + one page (16) must be < what is left; admitting
    # one reserves 112 (page-ceiled) + 16 + 300 = 428. The second fits iff 416 < C - 428.
    run = Run(make_worker(capacity, page_size=16), {0: [make_req(f"r{i}", 100, max_new=300, base=1000 * i)
                                                        for i in range(3)]})
    first = run.step()
    assert first.kind == "prefill" and first.batch_requests == admitted
    assert run.worker.load_report(0, 0.0).waiting_requests == 3 - admitted
    assert run.step().kind == "decode"  # a refused pass marks the batch full: no retry


@pytest.mark.parametrize("capacity, ignore_eos, second_step", [
    (737, False, "decode"), (738, False, "prefill"),   # running reservation 299 x 0.7 = 209.3
    (827, True, "decode"), (828, True, "prefill"),     # ignore_eos: 299 x 1.0
])
def test_running_requests_reserve_their_output_times_new_token_ratio(capacity, ignore_eos, second_step):
    # Step 2: a (112 slots, 1 token generated) runs; b needs 100 + 300 + 16 = 416 < C - 112 - reservation.
    run = Run(make_worker(capacity, page_size=16),
              {0: [make_req("a", 100, max_new=300, ignore_eos=ignore_eos)],
               1: [make_req("b", 100, max_new=300, base=1000, ignore_eos=ignore_eos)]})
    run.step()
    assert run.step().kind == second_step


def test_new_token_ratio_decays_per_decode_step_and_resets_when_idle():
    run = Run(make_worker(), {0: [make_req("a", 16, max_new=30)]})
    run.step()
    for _ in range(10):
        run.step()
    assert run.worker.new_token_ratio == pytest.approx(INIT_NEW_TOKEN_RATIO - 10 * NEW_TOKEN_RATIO_DECAY)
    assert (INIT_NEW_TOKEN_RATIO, MIN_NEW_TOKEN_RATIO) == (0.7, pytest.approx(0.098))
    run.until_idle()
    assert run.worker.new_token_ratio == INIT_NEW_TOKEN_RATIO


def _retraction_run() -> Run:
    """C = 1000, page 1. long (861 reserved) and s0 (131) fill the first pass; each time
    a short one leaves, the decayed ratio lets more in; a and b (same step, prompts 20
    and 40) outgrow the pool at step 553: long 558 + a 211 + b 231 KV = 1000, 3 needed."""
    shorts = [make_req(f"s{i}", 10, max_new=120, base=1000 * (i + 1)) for i in range(6)]
    queue = [make_req("long", 10, max_new=850), *shorts,
             make_req("a", 20, max_new=200, base=50_000), make_req("b", 40, max_new=200, base=60_000)]
    return Run(make_worker(1000, page_size=1), {0: queue})


def test_retraction_when_kv_runs_out_takes_fewest_generated_then_longest_prompt():
    run = _retraction_run()
    steps = run.until_idle()
    prefills = [(i + 1, [rid for rid, _ in s.prefill_done]) for i, s in enumerate(steps) if s.kind == "prefill"]
    # Step 121: s0 left; ratio 0.7 - 119 x decay, long's reservation 730 x 0.581 = 423.8,
    # free + evictable 871: 447 left, three shorts of 131 fit.
    assert prefills[:4] == [(1, ["long", "s0"]), (121, ["s1", "s2", "s3"]), (241, ["s4", "s5"]), (361, ["a", "b"])]
    retractions = [(i + 1, s.retracted) for i, s in enumerate(steps) if s.retracted]
    # a and b generated 192 each (long 549): b, the longer prompt, goes; that is enough.
    assert retractions == [(553, ["b"])]
    assert steps[552].batch_requests == 2
    # b's prompt stayed in the tree (checkpointed at its prefill, unlocked when retracted):
    # its second prefill computes only its 192 output tokens, and is no new first token.
    again = [(i + 1, s.prefill_tokens, s.prefill_done) for i, s in enumerate(steps) if s.kind == "prefill"][4:]
    assert again == [(854, 192, [])]
    finished = dict(rid_n for s in steps for rid_n in s.finished)
    assert finished["b"] == 200 and finished["long"] == 850


def test_ratio_after_retraction_is_sglangs_estimate():
    run = _retraction_run()
    while not run.step().retracted:
        pass
    # min(1, (generated 549 + 192 + 20 x 2) / (max_new 850 + 200 + 1))
    assert run.worker.new_token_ratio == pytest.approx(781 / 1051)


def test_output_is_inserted_at_finish_so_a_follow_up_hits_prompt_and_output():
    worker = make_worker(page_size=16)
    run = Run(worker, {0: [make_req("a", 64, max_new=40, seed=7)]})
    run.until_idle()
    assert run.steps[-1].finished == [("a", 40)]
    # KV of 64 + 39 tokens (the last output token is never fed back): 96 page-aligned.
    follow = array("q", range(64)) + output_token_ids(7, 40) + array("q", [1, 2, 3])
    assert worker.radix.total_size() == 96 and worker.radix.protected_size() == 0
    run.at_step[len(run.steps)] = [make_req("f", follow, max_new=2)]
    run.step()
    assert run.steps[-1].prefill_done == [("f", 96)] and run.steps[-1].prefill_tokens == len(follow) - 96


@pytest.mark.parametrize("policy, first", [("fcfs", "x"), ("lpm", "y")])
def test_lpm_admits_the_longest_cached_prefix_first(policy, first):
    # One running request at a time: when a leaves, its pages are cached; y extends a's prompt.
    y_prompt = array("q", range(64)) + array("q", range(5000, 5010))
    run = Run(make_worker(page_size=16, max_running_requests=1, schedule_policy=policy),
              {0: [make_req("a", 64, max_new=3)], 1: [make_req("x", 64, base=9000), make_req("y", y_prompt)]})
    prefills = [s.prefill_done for s in run.until_idle() if s.kind == "prefill"]
    assert prefills[1] == [(first, 0 if first == "x" else 64)]


def test_a_one_token_request_finishes_in_its_prefill_step():
    run = Run(make_worker(), {0: [make_req("a", 20, max_new=8, out=1)]})
    step = run.step()
    assert (step.kind, step.prefill_done, step.finished) == ("prefill", [("a", 0)], [("a", 1)])
    assert not run.worker.has_work()


def test_max_prefill_tokens_ends_a_pass_once_spent():
    # Budget 64: the first 40-token request leaves 16 (page-ceiled 48 charged), so a second
    # is still tried and admitted (with chunking on, only a spent budget stops a pass).
    run = Run(make_worker(page_size=16, max_prefill_tokens=64),
              {0: [make_req(f"r{i}", 40, base=100 * i) for i in range(3)]})
    assert [run.step().batch_requests, run.step().batch_requests] == [2, 1]


def test_events_go_out_after_a_prefill_every_40_decode_steps_and_on_idle():
    # z (1 token) leaves 192 cached tokens; a's decode needs its fifth page at KV length 96
    # (decode step 65, run step 66) with 12 slots free: z's leaf is evicted then, but the
    # removal is published only with decode step 80 (run step 81).
    run = Run(make_worker(300, page_size=16), {0: [make_req("z", 200, max_new=8, out=1)],
                                                1: [make_req("a", 32, max_new=100, base=1000)]})
    steps = run.until_idle()
    published = [i for i, s in enumerate(steps) if s.event_payloads]
    assert published == [0, 1, 81, 100]              # z's prefill (idle), a's prefill, decode 80, idle
    kinds = [e["type"] for _, payload in steps[81].event_payloads for e in msgspec.msgpack.decode(payload)[1]]
    assert kinds == ["BlockRemoved"]
    seqs = [seq for s in steps for seq, _ in s.event_payloads]
    assert seqs == list(range(len(seqs)))


def _random_requests(rng: np.random.Generator, n: int) -> list[tuple[int, SimRequest]]:
    prefixes = [rng.integers(0, 32000, int(rng.integers(100, 1500))) for _ in range(5)]
    out = []
    for i in range(n):
        prompt = np.concatenate([prefixes[int(rng.integers(5))], rng.integers(0, 32000, int(rng.integers(1, 400)))])
        max_new = int(rng.integers(1, 400))
        # Most outputs run close to max_new: the ratio-discounted reservations then overcommit.
        out.append((int(rng.integers(0, 3 * n)), SimRequest(f"r{i}", array("q", prompt.tolist()), max_new,
                                                             max(1, int(rng.integers(max_new * 9 // 10, max_new + 1))),
                                                             ignore_eos=bool(rng.random() < 0.1),
                                                             output_seed=int(rng.integers(2**62)))))
    return out


def _random_run(seed: int, page_size: int = 16, policy: str = "fcfs", capacity: int = 8_000) -> Run:
    rng = np.random.default_rng(seed)
    at: dict[int, list[SimRequest]] = {}
    for step, req in _random_requests(rng, 120):
        at.setdefault(step, []).append(req)
    worker = SimWorker(0, WorkerConfig(kv_capacity_tokens=capacity, page_size=page_size, chunked_prefill_size=1024,
                                       schedule_policy=policy), load_cost_model("preble-a6000-mistral-7b"), seed)
    return Run(worker, at)


@pytest.mark.parametrize("policy", ["fcfs", "lpm"])
def test_every_request_finishes_exactly_once_with_its_output_and_kv_is_conserved(policy):
    run = _random_run(2, policy=policy)
    wanted = {r.rid: r.output_tokens for reqs in run.at_step.values() for r in reqs}
    worker = run.worker
    while worker.has_work() or run.at_step:
        run.step()
        # The pool's books: free + cached (evictable) + locked + owned by requests = capacity,
        # the owned slots counted request by request.
        radix = worker.radix
        assert radix.pool.free + radix.evictable_size() + radix.protected_size() + worker.owned_slots() \
            == worker.config.kv_capacity_tokens
    finished = [rid_n for s in run.steps for rid_n in s.finished]
    assert sorted(finished) == sorted(wanted.items())
    if policy == "fcfs":
        assert sum(len(s.retracted) for s in run.steps) > 0   # seeded: this run retracts
    prefilled = [rid for s in run.steps for rid, _ in s.prefill_done]
    assert sorted(prefilled) == sorted(wanted)
    # Idle: nothing owned, nothing locked, the rest is the cache.
    assert worker.kv_tokens_in_use() == 0 == worker.radix.protected_size() == worker.owned_slots()
    assert worker.radix.pool.free + worker.radix.evictable_size() == worker.config.kv_capacity_tokens


def test_same_seed_gives_the_same_step_results_byte_for_byte():
    first, second = _random_run(2), _random_run(2)
    a, b = first.until_idle(), second.until_idle()
    assert repr(a) == repr(b) and len(a) > 100
    assert sum(len(s.event_payloads) for s in a) > 10


@pytest.mark.parametrize("page_size", [1, 16])
def test_published_events_replayed_into_the_mirror_equal_the_workers_cache(page_size):
    run = _random_run(3, page_size=page_size)
    tree = GlobalTree(num_workers=1, page_size=page_size)
    applier = EventApplier(tree, replay_available=False)
    prompts = [r.input_ids for reqs in run.at_step.values() for r in reqs]
    worker = run.worker
    decode_since = 0
    while worker.has_work() or run.at_step:
        step = run.step()
        decode_since = decode_since + 1 if step.kind == "decode" else 0
        if step.kind == "decode" and worker.has_work():
            # Decode steps publish only every decode_log_interval (40) steps.
            assert bool(step.event_payloads) <= (worker.forward_ct_decode % 40 == 0)
        for seq, payload in step.event_payloads:
            applier.on_live(0, seq, payload, run.now)
        if step.event_payloads:
            assert tree.tokens_held(0) == worker.radix.total_size()
    assert applier.stats.gaps == 0 and applier.stats.removed_pages > 0
    assert tree.tokens_held(0) == worker.radix.total_size()
    assert all(tree.match(p)[0] == worker.radix.match(p).cached_tokens for p in prompts)


def test_load_report_and_default_max_running_requests():
    worker = make_worker(198_516, context_length=32768)
    # min(clamp(198516 / 32768 x 512, 2048, 4096), 198516 / 2) = 3101
    assert worker.max_running == 3101
    assert make_worker(3000).max_running == 1500     # KV tokens / 2 caps it
    worker.submit(make_req("a", 40, max_new=5), 0.0)
    report = worker.load_report(0, 1.5)
    assert (report.running_requests, report.waiting_requests, report.kv_tokens_used) == (0, 1, 0)
    worker.step(0.0)
    report = worker.load_report(0, 2.0)
    assert (report.running_requests, report.waiting_requests, report.kv_tokens_used) == (1, 0, 48)


def test_max_running_requests_caps_a_pass():
    run = Run(make_worker(max_running_requests=2), {0: [make_req(f"r{i}", 16, base=100 * i) for i in range(3)]})
    assert run.step().batch_requests == 2
    assert run.step().kind == "decode"


def test_bad_input_is_a_one_line_error():
    worker = make_worker(1000)
    with pytest.raises(ValueError, match="output_tokens 0 must be in 1..max_new_tokens"):
        worker.submit(make_req("a", 10, max_new=5, out=0), 0.0)
    with pytest.raises(ValueError, match="cannot fit in 1000 KV tokens"):
        worker.submit(make_req("b", 900, max_new=200), 0.0)
    worker.submit(make_req("c", 10), 0.0)
    with pytest.raises(ValueError, match="already on worker 0"):
        worker.submit(make_req("c", 10), 0.0)
    with pytest.raises(ValueError, match="schedule_policy must be 'fcfs' or 'lpm'"):
        WorkerConfig(kv_capacity_tokens=10, schedule_policy="dfs")
    with pytest.raises(ValueError, match="page_size must be a positive integer"):
        WorkerConfig(kv_capacity_tokens=10, page_size=0)
