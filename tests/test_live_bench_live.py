"""`python -m sglang_ext.bench live` end to end on real SGLang (tiny model, CPU): our
controller (round robin) and the SGLang Model Gateway (cache_aware over two dp=1
servers), two workloads each (so the flush between workloads runs), the simulator rows,
the report. Every figure in the report must come from requests that were answered."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from sglang_ext.bench.__main__ import main
from tests.conftest import tiny_model

pytestmark = pytest.mark.sglang

TARGETS = ["round_robin", "gateway:cache_aware"]
WORKLOADS = ["toolbench", "shared-prefix"]


def _answered(requests_csv) -> list[dict]:
    with open(requests_csv, newline="") as f:
        return list(csv.DictReader(f))


def test_live_bench_reports_only_answered_requests(tmp_path):
    pytest.importorskip("sglang_router")
    tiny_model()
    out = tmp_path / "live"
    argv = ["live", "--model", "tiny", "--seeds", "1", "--policies", "round_robin", "--gateway-policies",
            "cache_aware", "--workloads", *WORKLOADS, "--duration-s", "3", "--max-requests", "8", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    live = {(r["target"], r["workload"]): r for r in results["rows"] if r["side"] == "live"}
    sim = {(r["target"], r["workload"]): r for r in results["rows"] if r["side"] == "sim"}
    assert sorted(live) == sorted(sim) == sorted((t, w) for t in TARGETS for w in WORKLOADS)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["left_out"] == []
    entries = {(e["target"], e["workload"]): e for e in summary["entries"]}
    assert sorted(entries) == sorted(live)
    for key, entry in entries.items():
        row = live[key]
        requests = _answered(f"{row['run_dir']}/requests.csv")
        # The report's figures are those of answered requests, all of them.
        assert len(requests) == row["requests"] == row["succeeded"] == 8
        assert all(r["ok"] == "True" and r["e2e_s"] for r in requests)
        e2e = statistics.fmean(float(r["e2e_s"]) for r in requests)
        assert entry["live"]["e2e_mean_s"]["median"] == pytest.approx(e2e)
        # Every request is attributed to one of the two workers, ours or the gateway's.
        assert sum(row["requests_per_rank"].values()) == 8
        assert {int(r["worker"]) for r in requests} <= {0, 1}
        assert sim[key]["error"] is None and sim[key]["succeeded"] == 8
        assert entry["sim"]["e2e_mean_s"]["median"] == pytest.approx(sim[key]["e2e_mean_s"])
    # Our controller timed its decisions; the gateway's are not visible from outside.
    assert live["round_robin", "toolbench"]["decisions"] >= 8
    assert live["round_robin", "toolbench"]["decision_p99_us"] > 0
    assert "decisions" not in live["gateway:cache_aware", "toolbench"]
    report = (out / "report.md").read_text()
    for target in TARGETS:
        assert report.count(f"| {target} |") >= 2 * len(WORKLOADS)
    assert (out / "live.png").stat().st_size > 10_000
    commands = live["gateway:cache_aware", "toolbench"]["deployment"]["commands"]
    assert any("sglang_router.launch_router" in " ".join(c) for c in commands)
