"""The Locust ReAct load test runs end to end against a real SGLang server (dp=2, CPU)."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from tests.conftest import ROOT, sglang_server

pytestmark = pytest.mark.sglang


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sglang_server(tmp_path_factory, load_balance_method="prefix_length_aware") as s:
        yield s


def _locust(server, tmp_path, *extra: str) -> dict[tuple[str, str], dict]:
    prefix = tmp_path / "locust"
    cmd = [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", "--host", server.url,
           "--csv", str(prefix), "--only-summary", "--stop-timeout", "10",
           "--react-examples", "1", "--react-output-lengths", "4:0.5,12:0.5", "--react-user-rps", "2", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(f"{prefix}_stats.csv") as f:
        return {(row["Type"], row["Name"]): row for row in csv.DictReader(f)}


def test_react_agents_stream_and_report_ttft_and_tpot(server, tmp_path):
    rows = _locust(server, tmp_path, "-u", "2", "-r", "2", "-t", "8s")
    generate = rows[("POST", "/generate")]
    # How many turns fit in 8 s depends on the machine's load; both agents finishing a
    # turn is what this test needs.
    assert int(generate["Request Count"]) >= 2 and int(generate["Failure Count"]) == 0
    ttft, tpot = rows[("TTFT", "/generate")], rows[("TPOT", "/generate")]
    assert int(ttft["Request Count"]) == int(generate["Request Count"])
    assert 0 < float(ttft["Average Response Time"]) <= float(generate["Average Response Time"])
    assert int(tpot["Request Count"]) > 0 and float(tpot["Average Response Time"]) > 0


def test_rate_steps_shape_drives_the_run(server, tmp_path):
    rows = _locust(server, tmp_path, "--react-rate-steps", "2:2,4:2")   # 1 then 2 users, 4 s in all
    generate = rows[("POST", "/generate")]
    assert int(generate["Request Count"]) >= 2 and int(generate["Failure Count"]) == 0
