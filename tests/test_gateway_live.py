"""The SGLang Model Gateway deployment end to end: two stock dp=1 SGLang servers (tiny
model, CPU), each pinned to its own core, behind sglang-router 0.3.2 with `cache_aware`,
and a shared-prefix trace replayed through it with our replay client."""

from __future__ import annotations

import collections
import json

import psutil
import pytest

from sglang_ext.gateway import GatewaySpec, start_gateway
from tests.conftest import tiny_model
from traces.cli import main as traces_main
from traces.format import read_trace
from traces.replay import ReplayConfig, run

pytestmark = pytest.mark.sglang

PREFIX_TOKENS = 256


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    spec = GatewaySpec(model_path=tiny_model(), policy="cache_aware", max_total_tokens=4096)
    with start_gateway(spec, tmp_path_factory.mktemp("gateway")) as gw:
        yield gw


@pytest.fixture(scope="module")
def replayed(gateway, tmp_path_factory):
    """A prefix-groups trace (2 groups x 4 prompts) replayed through the gateway once."""
    d = tmp_path_factory.mktemp("replay")
    trace_path = d / "trace.jsonl"
    assert traces_main(["generate", "prefix-groups", "--groups", "2", "--prompts-per-group", "4",
                        "--prefix-tokens", str(PREFIX_TOKENS), "--question-tokens", "16", "--output-tokens", "8",
                        "--max-new-tokens", "8", "--rate-rps", "4", "--tokenizer", tiny_model(), "--seed", "1",
                        "--out", str(trace_path)]) == 0
    trace = read_trace(trace_path)
    before = gateway.worker_stats()
    summary = run(trace, ReplayConfig(trace=str(trace_path), url=gateway.url, out_dir=str(d / "out"), progress=False))
    after = gateway.worker_stats()
    rows = {r["id"]: r for r in _read_rows(d / "out" / "requests.csv")}
    delta = {i: {k: after[i][k] - before[i][k] for k in after[i]} for i in after}
    return trace, summary, rows, delta


def _read_rows(path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_every_request_is_answered_and_both_workers_stay_up(gateway, replayed):
    trace, summary, rows, _ = replayed
    assert summary["failed"] == 0 and summary["succeeded"] == len(trace.requests) == len(rows) == 8
    assert all(r["ok"] == "True" and int(r["output_tokens"]) == 8 for r in rows.values())
    assert gateway.workers_alive() == [True, True]


def test_replies_name_their_worker_and_the_workers_counters_agree(replayed):
    trace, summary, rows, delta = replayed
    # Every reply says which worker served it (the weight_version label), and each
    # worker's own Prometheus counters match what the client saw from it, request for
    # request and token for token: the figures are the workers', not the router's.
    assert all(r["worker"] in ("0", "1") for r in rows.values())
    served = collections.Counter(int(r["worker"]) for r in rows.values())
    assert {i: d["requests"] for i, d in delta.items()} == {i: served.get(i, 0) for i in (0, 1)}
    assert sum(d["requests"] for d in delta.values()) == len(trace.requests)
    for i in (0, 1):
        mine = [r for r in rows.values() if r["worker"] == str(i)]
        assert delta[i]["prompt_tokens"] == sum(int(r["prompt_tokens"]) for r in mine)
        assert delta[i]["cached_tokens"] == sum(int(r["cached_tokens"]) for r in mine)
    # The replay counts both workers even if one served nothing (from /get_server_info).
    assert set(summary["per_worker"]) == {"0", "1"}


def test_cache_aware_keeps_each_group_on_one_worker_and_hits_its_prefix(replayed):
    trace, _, rows, _ = replayed
    by_group = collections.defaultdict(list)
    for req in trace.requests:                        # trace order = arrival order
        by_group[req.prefix_group].append(rows[req.id])
    assert len(by_group) == 2
    for group in by_group.values():
        assert len({r["worker"] for r in group}) == 1   # the router's prefix affinity
        first, *rest = group
        assert int(first["cached_tokens"]) < PREFIX_TOKENS
        assert all(int(r["cached_tokens"]) >= PREFIX_TOKENS for r in rest)


def test_each_worker_is_pinned_to_its_own_core(gateway):
    cores = []
    for w in gateway.workers:
        procs = [psutil.Process(w.proc.pid), *psutil.Process(w.proc.pid).children(recursive=True)]
        affinities = {tuple(p.cpu_affinity()) for p in procs}
        assert len(affinities) == 1 and len(next(iter(affinities))) == 1
        cores.append(next(iter(affinities))[0])
    assert len(set(cores)) == 2
    workers, router = gateway.command_lines[:2], gateway.command_lines[2]
    assert all(c[:2] == ["taskset", "--cpu-list"] and "sglang.launch_server" in c for c in workers)
    assert "sglang_router.launch_router" in router and router[router.index("--policy") + 1] == "cache_aware"
    assert json.dumps(gateway.command_lines)            # plain strings, for a report
