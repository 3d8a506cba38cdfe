"""`prefix_length_aware`'s compiled choice (`sglang_ext/_policy_costs.c`) against its numpy
form: the same costs bit for bit and the same worker, on random views with ties, dead
workers, overflowing KV and online-fitted coefficients."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

# Built with the token helpers (setup.py); like `test_the_compiled_helpers_are_built`, a
# missing build fails here rather than skipping: the controller would run the slower form.
from sglang_ext import _policy_costs as compiled
from sglang_ext.core.cost_model import load_cost_model
from sglang_ext.core.policies import LengthSource, PolicyConfig, Request
from sglang_ext.core.policies import prefix_length_aware as pla
from sglang_ext.core.policies.base import ClusterView, LoadColumns, WorkerLoad


def random_view(rng: random.Random, n: int, prompt: int) -> ClusterView:
    # Few distinct values, so equal costs (ties) are common.
    loads = [WorkerLoad(requests=rng.choice((0, 1, 2, 7)), queued_requests=0,
                        queued_prefill_tokens=rng.choice((0, 0, 64, 3000)),
                        pending_decode_tokens=rng.choice((0, 10, 300, 5000)),
                        kv_tokens_used=0,
                        kv_tokens_committed=rng.choice((0, 1000, 60_000, 70_000)),
                        kv_capacity_tokens=rng.choice((65_536, 65_536, 4096)),
                        alive=rng.random() > 0.15) for _ in range(n)]
    if not any(ld.alive for ld in loads):
        loads[rng.randrange(n)].alive = True
    cached = [rng.choice((0, 0, prompt // 2, prompt, rng.randrange(prompt + 1))) for _ in range(n)]
    return ClusterView(0.0, cached, loads, columns=LoadColumns.from_loads(loads))


def test_compiled_choice_and_costs_equal_the_numpy_form_on_random_views():
    rng = random.Random(3)
    models = [load_cost_model(name) for name in ("preble-a6000-mistral-7b", "h100-llama3.1-8b")]
    checked_ties = 0
    for trial in range(3000):
        n = rng.choice((1, 2, 3, 8, 128))
        prompt = rng.choice((1, 100, 8192))
        view = random_view(rng, n, prompt)
        model = rng.choice(models)
        if trial % 3 == 0:  # an online fit's odd coefficients
            model = dataclasses.replace(model, prefill_us_per_token=rng.uniform(0.01, 3.0),
                                        decode_us_per_request=rng.uniform(0.0, 50.0))
        policy = pla.PrefixLengthAware(PolicyConfig(n, LengthSource.MAX_NEW_TOKENS), cost_model=model)
        request = Request(f"r{trial}", [1] * prompt, rng.choice((1, 16, 300, 4000)))
        reference = policy.cost_array(request, view)
        costs = np.empty(n)
        cols = view.load_columns()
        chosen = compiled.choose(view.cached_tokens, prompt, request.max_new_tokens,
                                 model.prefill_us_per_token, model.decode_us_per_request, cols.requests,
                                 cols.queued_prefill_tokens, cols.pending_decode_tokens,
                                 cols.kv_tokens_committed, cols.kv_capacity_tokens, cols.alive, costs)
        assert costs.tobytes() == reference.tobytes()  # bit for bit, inf for the dead included
        assert chosen == policy.choose_numpy(request, view) == policy.choose(request, view)
        assert view.loads[chosen].alive
        live = reference[np.isfinite(reference)]
        checked_ties += int((live == live.min()).sum() > 1)
    assert checked_ties > 100  # the tie-break (fewer requests, then lowest index) was exercised


def test_policy_uses_the_compiled_choice():
    assert pla._choose_compiled is compiled.choose


def test_compiled_choice_refuses_mismatched_columns():
    cols = LoadColumns(4)
    args = (cols.requests, cols.queued_prefill_tokens, cols.pending_decode_tokens,
            cols.kv_tokens_committed, cols.kv_capacity_tokens, cols.alive)
    assert compiled.choose([0, 0, 5, 0], 10, 1, 1.0, 1.0, *args) == 2
    with pytest.raises(ValueError, match="requests has 4 workers, cached has 3"):
        compiled.choose([0, 0, 0], 10, 1, 1.0, 1.0, *args)
    with pytest.raises(TypeError, match="queued_prefill must be"):
        compiled.choose([0] * 4, 10, 1, 1.0, 1.0, cols.requests, cols.queued_prefill_tokens.astype(np.int32),
                        *args[2:])
    with pytest.raises(TypeError, match="alive must be"):
        compiled.choose([0] * 4, 10, 1, 1.0, 1.0, *args[:5], cols.requests)
    with pytest.raises(ValueError, match="no workers"):
        empty = LoadColumns(0)
        compiled.choose([], 10, 1, 1.0, 1.0, empty.requests, empty.queued_prefill_tokens,
                        empty.pending_decode_tokens, empty.kv_tokens_committed, empty.kv_capacity_tokens,
                        empty.alive)


def test_load_columns_copies_stay_views_of_their_own_stores():
    import copy
    import pickle

    cols = LoadColumns.from_loads([WorkerLoad(requests=2), WorkerLoad(requests=5, alive=False)])
    for clone in (copy.deepcopy(cols), pickle.loads(pickle.dumps(cols))):
        assert clone.requests.tolist() == [2, 5] and clone.alive.tolist() == [True, False]
        clone.sync(0, WorkerLoad(requests=9, queued_prefill_tokens=4, alive=False))
        assert clone.requests.tolist() == [9, 5] and clone.queued_prefill_tokens.tolist() == [4, 0]
        assert clone.alive.tolist() == [False, False]
        assert cols.requests.tolist() == [2, 5]  # the original is untouched
