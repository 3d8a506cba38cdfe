"""`python -m sglang_ext.bench policies` on a tiny configuration (seconds, not minutes)."""

from __future__ import annotations

import json

from sglang_ext.bench.__main__ import SUBCOMMANDS, main
from sglang_ext.bench.policies import BenchConfig, make_stream, run_all
from sglang_ext.core.policies import POLICIES

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
    assert [r["policy"] for r in payload["results"]] == ["round_robin", "preble"]
    assert "preble" in capsys.readouterr().out


def test_cli_rejects_unknown_policy(tmp_path):
    assert main(["policies", "--policies", "nope", "--out", str(tmp_path / "x.json")]) == 2


def test_dispatcher_is_a_table():
    assert "policies" in SUBCOMMANDS
