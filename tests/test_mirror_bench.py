"""`python -m sglang_ext.bench mirror` end to end on a tiny configuration (a smoke test:
the figures themselves come from the benchmark, not from tests)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_mirror_bench_runs_and_saves_every_section(tmp_path):
    out = tmp_path / "mirror.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sglang_ext.bench", "mirror", "--workers", "2,4", "--prompt-tokens", "64,256",
         "--tree-tokens", "40000", "--system-prompts", "4", "--page1-tree-tokens", "", "--probes", "30", "--repeats", "1",
         "--memory-tree-tokens", "20000", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert {(d["workers"], d["prompt_tokens"]) for d in data["decisions"]} == {(2, 64), (2, 256), (4, 64), (4, 256)}
    kinds = {(e["kind"], e["shape"]) for e in data["events"]}
    assert ("feed:Stored", "per node") in kinds and ("feed:Removed", "1 page/event") in kinds
    assert all(e["pages"] > 0 and e["pages_per_cpu_s"] > 0 for e in data["events"])
    assert data["memory"][0]["bytes_per_distinct_token"] > 0
    assert "decision path" in proc.stdout and "saved" in proc.stdout
    assert (tmp_path / "mirror.png").stat().st_size > 10_000
