"""Replay end to end against a real SGLang server (dp=2, tiny model, CPU)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import sglang_server
from traces.cli import main

pytestmark = pytest.mark.sglang


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sglang_server(tmp_path_factory, load_balance_method="round_robin") as s:
        yield s


def _rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_replay_react_trace_records_every_metric(server, tmp_path):
    trace, out = tmp_path / "react.jsonl", tmp_path / "run"
    assert main(["generate", "react", "--out", str(trace), "--seed", "2", "--rate-rps", "4", "--duration-s", "4",
                 "--examples", "1", "--workloads", "2", "--output-lengths", "2:0.5,12:0.5", "--max-new-tokens", "16",
                 "--concurrent-episodes", "3"]) == 0
    assert main(["replay", str(trace), "--url", server.url, "--out", str(out), "--no-progress"]) == 0
    rows = _rows(out / "requests.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads((out / "config.json").read_text())["replay"]["url"] == server.url
    assert rows and summary["failed"] == 0 and summary["succeeded"] == len(rows)
    assert all(r["ok"] == "True" and r["output_tokens"] == r["expected_output_tokens"] for r in rows)
    assert {r["output_tokens"] for r in rows} == {"2", "12"}
    assert {r["worker"] for r in rows} == {"0", "1"}                    # round robin uses both ranks
    assert all(0 < float(r["ttft_s"]) <= float(r["e2e_s"]) for r in rows)
    assert all(r["tpot_s"] for r in rows)                              # every request has >= 2 tokens
    assert sum(int(r["cached_tokens"]) for r in rows) > 0               # shared prefixes hit the cache
    for name in ("ttft_s", "e2e_s", "tpot_s", "norm_latency_s_per_token", "cached_tokens"):
        assert set(summary[name]) >= {"mean", "p50", "p90", "p99"}
    assert summary["throughput_rps"] > 0 and 0 < summary["prefix_hit_rate"] < 1
    assert set(summary["per_worker"]) == {"0", "1"} and summary["worker_imbalance_busy_max_over_mean"] >= 1


def test_replay_sends_token_ids_and_bounds_concurrency(server, tmp_path):
    trace, out = tmp_path / "tools.jsonl", tmp_path / "run"
    assert main(["generate", "toolbench", "--out", str(trace), "--seed", "1", "--rate-rps", "8", "--duration-s", "2",
                 "--tools", "4", "--min-endpoints", "1", "--max-endpoints", "2", "--output-lengths", "4",
                 "--max-new-tokens", "8", "--token-ids"]) == 0
    assert main(["replay", str(trace), "--url", server.url, "--out", str(out), "--no-progress",
                 "--max-concurrency", "2", "--rate-scale", "2"]) == 0
    rows = _rows(out / "requests.csv")
    lines = trace.read_text().splitlines()[1:]
    assert len(rows) == len(lines)
    expected = {json.loads(line)["id"]: len(json.loads(line)["input_ids"]) for line in lines}
    assert all(int(r["prompt_tokens"]) == expected[r["id"]] for r in rows)   # the server got our ids
    # Rate scale 2: scheduled arrivals are half the trace's timestamps.
    first = json.loads(lines[-1])["arrival_s"]
    assert float(rows[-1]["arrival_s"]) == pytest.approx(first / 2, abs=1e-6)
