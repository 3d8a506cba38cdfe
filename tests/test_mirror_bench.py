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
    # Every point is timed on lists and on SGLang's array('q') side by side.
    assert sorted((d["workers"], d["prompt_tokens"], d["input"]) for d in data["decisions"]) == sorted(
        (w, L, kind) for w in (2, 4) for L in (64, 256) for kind in ("list", "array"))
    kinds = {(e["kind"], e["shape"]) for e in data["events"]}
    assert ("feed:Stored", "per node") in kinds and ("feed:Removed", "1 page/event") in kinds
    assert all(e["pages"] > 0 and e["pages_per_cpu_s"] > 0 for e in data["events"])
    assert data["memory"][0]["bytes_per_distinct_token"] > 0
    assert "decision path" in proc.stdout and "saved" in proc.stdout
    assert "array input" in proc.stdout and "list input" in proc.stdout
    assert (tmp_path / "mirror.png").stat().st_size > 10_000


def test_array_q_and_list_probes_give_the_same_view():
    from array import array

    from sglang_ext.bench.mirror import as_input, decision_view, make_corpus, make_events, make_probes
    from sglang_ext.core.global_tree import GlobalTree
    from sglang_ext.core.ledger import LoadLedger

    corpus = make_corpus(20_000, 16, 3, seed=0)
    tree = GlobalTree(4, 16)
    for ev in make_events(corpus, 4, seed=0)[0]:
        tree.apply_stored(ev[1], ev[2], ev[3], ev[4])
    probes = make_probes(corpus, 512, 40, seed=0)
    arrays = as_input(probes, "array")
    assert all(isinstance(a, array) and a.typecode == "q" for a in arrays)
    ledger = LoadLedger(4, 1 << 20)
    views = [decision_view(tree, ledger, p, 0.0, 16).cached_tokens for p in probes]
    assert views == [decision_view(tree, ledger, a, 0.0, 16).cached_tokens for a in arrays]
    assert views == [tree.match(p) for p in probes] and any(max(v) > 0 for v in views)
