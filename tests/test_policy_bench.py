"""`python -m sglang_ext.bench policies` on a tiny configuration (seconds, not minutes)."""

from __future__ import annotations

import json
import random

import pytest

from sglang_ext.bench.__main__ import SUBCOMMANDS, main
from sglang_ext.bench.policies import BenchConfig, make_stream, run_all
from sglang_ext.core.policies import POLICIES, Request
from sglang_ext.core.router import Router, RouterConfig

TINY = BenchConfig(workers=(2, 4), rates_rps=(64.0,), requests=120, window=50, workloads=3,
                   prefix_tokens=200, inflight=16)


def test_stream_is_deterministic_and_react_like():
    a, b = make_stream(TINY), make_stream(TINY)
    assert [r.input_ids for r in a] == [r.input_ids for r in b]
    assert len(a) == 120 and len({r.rid for r in a}) == 120
    # Every prompt starts with one of the workloads' shared prefixes.
    prefixes = {tuple(r.input_ids[:200]) for r in a}
    assert len(prefixes) <= 3


def test_every_registered_policy_is_measured():
    results = run_all(TINY, log=lambda *_: None)
    assert {(r["policy"], r["workers"]) for r in results} == {
        (p, w) for p in POLICIES for w in (2, 4)}
    for r in results:
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "b.json"
    rc = main(["policies", "--workers", "2", "--requests", "60", "--window", "20",
               "--rates", "32", "--policies", "round_robin,preble", "--out", str(out)])
    assert rc == 0
    payload = json.loads(out.read_text())
    assert payload["config"]["workers"] == [2]
    # Both prompt types side by side, per policy: lists and SGLang's array('q').
    assert [(r["policy"], r["input"]) for r in payload["results"]] == [
        ("round_robin", "list"), ("round_robin", "array"), ("preble", "list"), ("preble", "array")]
    assert "preble" in capsys.readouterr().out


def test_array_input_reaches_the_router_as_array_q(monkeypatch):
    from array import array

    seen = []
    original = Router.route

    def spy(self, request, now_s):
        seen.append(type(request.input_ids))
        return original(self, request, now_s)

    monkeypatch.setattr(Router, "route", spy)
    run_all(BenchConfig(policies=("round_robin",), workers=(2,), rates_rps=(64.0,), requests=20,
                        window=10, workloads=2, prefix_tokens=50, inputs=("array", "list")),
            log=lambda *_: None)
    assert seen[:20] == [array] * 20 and seen[20:] == [list] * 20


def test_seeds_give_medians_and_write_model_files_the_simulator_reads(tmp_path):
    from cluster.decision_time import parse_decision_time

    out, models = tmp_path / "b.json", tmp_path / "models"
    rc = main(["policies", "--workers", "2,4", "--requests", "80", "--window", "20",
               "--rates", "16,32", "--policies", "round_robin,lmetric", "--seeds", "0,1",
               "--write-model", str(models), "--out", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["results"]
    row = next(r for r in results if r["policy"] == "lmetric" and r["input"] == "array"
               and r["workers"] == 4 and r["rate_rps"] == 32)
    assert row["runs"] == 2 and len(row["per_run_cpu_p99_us"]) == 2
    assert sorted({r["policy"] for r in results}) == ["lmetric", "round_robin"]
    model = json.loads((models / "lmetric.json").read_text())
    curve = model["curves"]["lmetric"]
    assert curve["workers"] == [2, 4] and curve["mean_us"][1] == round(row["cpu_mean_us"], 3)
    assert curve["history"]["factor"][-1] == 1.0 and len(curve["history"]["decisions"]) == 4
    src = parse_decision_time(f"model:{models}")
    assert src.seconds("lmetric", 4, curve["reference_decisions"], 0.0) == \
        pytest.approx(row["cpu_mean_us"] * 1e-6, rel=1e-3)
    assert src.seconds("round_robin", 2, 0, 0.0) > 0


def test_cli_rejects_unknown_input(tmp_path):
    assert main(["policies", "--inputs", "tensor", "--out", str(tmp_path / "x.json")]) == 2


def test_cli_rejects_unknown_policy(tmp_path):
    assert main(["policies", "--policies", "nope", "--out", str(tmp_path / "x.json")]) == 2


def test_dispatcher_is_a_table():
    assert "policies" in SUBCOMMANDS


def _loads_tuple(router):
    return [(ld.requests, ld.queued_requests, ld.queued_prefill_tokens, ld.pending_decode_tokens,
             ld.kv_tokens_used, ld.kv_tokens_committed, ld.kv_capacity_tokens, ld.alive)
            for ld in router.ledger.loads]


@pytest.mark.parametrize("exact", [False, True])
def test_incremental_kv_refresh_equals_a_full_refresh(exact):
    """The router re-derives KV figures and load columns only for workers whose ledger,
    mirror or in-flight union changed; a full pass over every worker must find nothing
    left to change, whatever happened in between (feedback, late predictions, expiry,
    a worker going down, KV events behind the router's back)."""
    from array import array

    from sglang_ext.core.policies.base import LoadColumns

    stream = make_stream(TINY)
    rng = random.Random(5)
    router = Router(RouterConfig(policy="prefix_length_aware", num_workers=6, page_size=1,
                                 kv_capacity_tokens=3000, exact_mirror=exact, ledger_expiry_s=0.5))
    hashes = iter(range(1, 10**9))
    for i, request in enumerate(stream):
        now = i / 64
        request = Request(request.rid, array("q", request.input_ids), request.max_new_tokens)
        router.route(request, now)
        router.refresh_kv_figures()
        before = _loads_tuple(router)
        for w in range(6):
            router._refresh_kv(w)
        assert _loads_tuple(router) == before
        full = LoadColumns.from_loads(router.ledger.loads)
        for name in LoadColumns.FIELDS:
            assert getattr(router.columns, name).tolist() == getattr(full, name).tolist(), name
        # Things that change loads or trees between decisions.
        if i >= 4:
            router.prefill_done(stream[i - 4].rid, now)
        if i >= 12 and rng.random() < 0.8:
            router.finished(stream[i - 12].rid, 10, now)
        if rng.random() < 0.2:
            router.update_expected_output(stream[max(0, i - 2)].rid, rng.randrange(500))
        if rng.random() < 0.05:
            router.expire(now)
        if rng.random() < 0.03:
            w = rng.randrange(6)
            router.set_alive(w, not router.ledger.loads[w].alive, now)
            if not any(ld.alive for ld in router.ledger.loads):
                router.set_alive(w, True, now)
        if exact and rng.random() < 0.3:
            ids = request.input_ids[: rng.randrange(1, 50)]
            router.tree.apply_stored(rng.randrange(6), [next(hashes) for _ in ids], None, list(ids))
