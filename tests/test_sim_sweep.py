"""`python -m cluster sweep` and `report` end to end on a small spec: every cell runs once,
a second run skips them all, a failed cell is retried, and the report covers every cell."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from cluster import sweep
from cluster.report import aggregate, load_cells, write_report

SMOKE = pathlib.Path(sweep.__file__).parent / "sweeps" / "smoke.toml"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("sweep")
    done = _cli("sweep", str(SMOKE), "--out", str(out), "--processes", "2")
    assert done.returncode == 0, done.stderr
    return out


def test_every_cell_runs_once_and_a_rerun_skips_them(swept):
    spec = sweep.load_spec(SMOKE)
    expected = {c.path(swept) for c in sweep.cells(spec)}
    finished = {p.parent for p in (swept / "cells").glob("*/*/*/*/*/summary.json")}
    assert finished == expected and len(expected) == 4
    for cell_dir in finished:
        summary = json.loads((cell_dir / "summary.json").read_text())
        assert summary["failed"] == 0 and summary["succeeded"] == summary["requests"] > 0
    before = {p: p.stat().st_mtime_ns for p in (swept / "cells").glob("*/*/*/*/*/summary.json")}
    counts = sweep.run_sweep(spec, swept, processes=1, progress=False)
    assert counts == {"cells": 4, "skipped": 4, "done": 0, "failed": 0}
    assert before == {p: p.stat().st_mtime_ns for p in before}


def test_a_missing_cell_is_run_again(swept):
    spec = sweep.load_spec(SMOKE)
    victim = sweep.cells(spec)[0].path(swept) / "summary.json"
    victim.unlink()
    counts = sweep.run_sweep(spec, swept, processes=1, progress=False)
    assert counts["done"] == 1 and counts["skipped"] == 3 and victim.exists()


def test_the_report_covers_every_cell_with_its_seed_spread(swept):
    path = write_report(swept)
    table = aggregate(load_cells(swept))
    assert len(table) == 2  # two policies at one rate and GPU count
    for row in table.values():
        assert row["e2e mean s"][3] == 2  # both seeds
        assert row["e2e mean s"][1] <= row["e2e mean s"][0] <= row["e2e mean s"][2]
    text = path.read_text()
    assert "round_robin" in text and "prefix_length_aware@oracle" in text
    for png in ("latency_react-1v300_g4.png", "load_over_time.png"):
        assert (path.parent / png).stat().st_size > 10_000


def test_a_bad_spec_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(SMOKE.read_text().replace('"round_robin"', '"no_such_policy"'))
    done = _cli("sweep", str(bad), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "no_such_policy" in done.stderr


def test_the_sweep_on_a_local_ray_instance_writes_what_processes_write(swept, tmp_path):
    """`--ray local`: the cells run as Ray tasks that read the trace from Ray's object
    store, and the driver writes their files: byte for byte those of the process run,
    naming the driver's trace file, not the task's copy."""
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    done = _cli("sweep", str(SMOKE), "--out", str(out), "--ray", "local", "--no-report")
    assert done.returncode == 0, done.stderr
    files = sorted(p.relative_to(swept) for p in (swept / "cells").rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(out) for p in (out / "cells").rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (swept / rel).read_bytes().replace(str(swept).encode(), str(out).encode())
        if rel.name == "summary.json":
            assert json.loads((out / rel).read_text())["trace"].startswith(str(out / "traces"))


def test_ray_and_processes_are_exclusive(tmp_path):
    done = _cli("sweep", str(SMOKE), "--out", str(tmp_path / "o"), "--ray", "local", "--processes", "2")
    assert done.returncode == 2 and "--ray and --processes" in done.stderr
