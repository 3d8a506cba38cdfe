"""`python -m cluster simulate` and `python -m traces replay --simulate`, end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys

import pytest

from cluster.cli import main
from traces.metrics import RequestResult

ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
SIM_ARGS = ["--gpus", "2", "--cost-model", "h100-llama3.1-8b", "--kv-capacity-tokens", "50000", "--seed", "3"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cli") / "react.jsonl"
    done = _run("traces", "generate", "react", "--out", str(path), "--rate-rps", "6", "--duration-s", "4",
                "--output-lengths", "1:0.5,40:0.5", "--max-new-tokens", "64", "--workloads", "2",
                "--examples", "1", "--token-ids", "--seed", "5")
    assert done.returncode == 0, done.stderr
    return str(path)


def _trace_ids(path: str) -> list[str]:
    lines = open(path).read().splitlines()[1:]
    return [json.loads(line)["id"] for line in lines]


def test_replay_simulate_writes_what_a_live_replay_writes(trace_file, tmp_path):
    out = tmp_path / "replay"
    done = _run("traces", "replay", trace_file, "--simulate", "--out", str(out), *SIM_ARGS)
    assert done.returncode == 0, done.stderr
    with open(out / "requests.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [f.name for f in dataclasses.fields(RequestResult)]
    assert [r["id"] for r in rows] == _trace_ids(trace_file)
    assert all(r["ok"] == "True" and r["error"] == "" and r["worker"] in ("0", "1") for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["succeeded"] == summary["requests"] == len(rows)
    assert summary["length_mismatches"] == 0       # --force-lengths is the replay's default
    config = json.loads((out / "config.json").read_text())
    assert config["replay"]["force_lengths"] is True
    assert config["simulate"]["sim"]["force_lengths"] is True
    assert config["simulate"]["host_dependent"] is False
    assert config["simulate"]["sim"]["gpus"] == 2


def test_cluster_simulate_prints_a_table_and_writes_its_folder(trace_file, tmp_path):
    out = tmp_path / "sim"
    done = _run("cluster", "simulate", trace_file, "--out", str(out), "--policy", "cache_aware", *SIM_ARGS)
    assert done.returncode == 0, done.stderr
    assert "prefix hit rate" in done.stdout and "decision time" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulator"]["policy"] == "cache_aware"
    assert summary["succeeded"] == len(_trace_ids(trace_file))
    assert json.loads((out / "config.json").read_text())["simulate"]["cost_model"]["name"] == "h100-llama3.1-8b"


def _exit_code(argv: list[str]) -> int:
    """`main`'s exit code, whether argparse exits (bad choice) or main returns it."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("extra, message", [
    (["--policy", "nope"], "invalid choice: 'nope'"),
    (["--gpus", "0"], "--gpus must be"),
    (["--cost-model", "no-such-model"], "no cost model 'no-such-model'"),
    (["--decision-time", "fixed:-3"], "--decision-time"),
])
def test_bad_options_are_one_line_errors_with_exit_code_2(trace_file, tmp_path, capsys, extra, message):
    code = _exit_code(["simulate", trace_file, "--out", str(tmp_path / "x"), *SIM_ARGS, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_a_malformed_trace_line_is_a_one_line_error(trace_file, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    lines = open(trace_file).read().splitlines()
    bad.write_text("\n".join([lines[0], lines[1], '{"kind": "request", "id": 7}', *lines[2:]]) + "\n")
    code = main(["simulate", str(bad), "--out", str(tmp_path / "x"), *SIM_ARGS])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{bad}:3: malformed record" in err and err.count("\n") == 1


def test_replay_simulate_bad_input_is_exit_code_2(trace_file, tmp_path):
    done = _run("traces", "replay", trace_file, "--simulate", "--out", str(tmp_path / "x"), "--gpus", "0")
    assert done.returncode == 2
    assert "--gpus must be" in done.stderr and done.stderr.count("\n") == 1
