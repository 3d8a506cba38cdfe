"""`python -m sglang_ext.bench shared-prefix` end to end on real SGLang (tiny model, CPU):
two servers, one per policy, on a 2 groups x 3 prompts trace."""

from __future__ import annotations

import json

import pytest

from sglang_ext.bench.__main__ import main
from tests.conftest import tiny_model

pytestmark = pytest.mark.sglang

POLICIES = ["round_robin", "prefix_length_aware"]


def test_shared_prefix_bench_writes_rows_ratios_table_and_plot(tmp_path, capsys):
    tiny_model()   # skips when the model is not built
    out = tmp_path / "bench"
    argv = ["shared-prefix", "--models", "tiny", "--seeds", "1", "--policies", *POLICIES, "--groups", "2",
            "--prompts-per-group", "3", "--rate-rps", "1.5", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["policy"]: r for r in results["rows"]}
    assert sorted(rows) == sorted(POLICIES) and len(results["rows"]) == 2
    for r in rows.values():
        assert r["error"] is None and r["failed"] == 0 and r["succeeded"] == r["requests"] == 6
        assert sum(r["requests_per_rank"].values()) == 6 and r["cached_tokens"] <= r["prompt_tokens"] == 6 * 544
        # The controller also counted the start-up health probes (/health_generate).
        assert all(r["dispatched_by_worker"][int(rank)] >= n for rank, n in r["requests_per_rank"].items())
    assert results["config"]["workload"]["groups"] == 2 and results["config"]["models"]["tiny"]["max_total_tokens"]
    summary = {e["policy"]: e for e in results["summary"]}
    rr, pla = rows["round_robin"], rows["prefix_length_aware"]
    assert summary["prefix_length_aware"]["e2e_mean_vs_rr"]["median"] == pytest.approx(pla["e2e_mean_s"] / rr["e2e_mean_s"])
    assert summary["prefix_length_aware"]["e2e_p99_vs_rr"]["median"] == pytest.approx(pla["e2e_p99_s"] / rr["e2e_p99_s"])
    assert summary["round_robin"]["e2e_mean_vs_rr"]["median"] == 1.0
    assert (out / "table.txt").read_text().count("tiny") == 2
    assert (out / "shared_prefix.png").stat().st_size > 10_000
    assert (out / "runs" / "tiny_seed1_round_robin" / "requests.csv").exists()
    # Resuming finds every run done: no server is started, the rows stay as they were.
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 0
    assert "resuming: 2 of 2 runs" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
