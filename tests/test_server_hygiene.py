"""The server harness and the controller's files: a server removes only what it made,
and files at fixed or predictable paths are never opened through a planted symlink.
No SGLang server is started: a small stand-in process holds a load-snapshot file open
the way SGLang's schedulers do (`load_snapshot.py: ShmLoadSnapshotWriter` keeps its fd)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from sglang_ext.server import SHM_PREFIX, SGLangServer, ServerSpec, server_lock
from sglang_ext.status import StatusWriter

HOLDER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def shm_dir():
    if not os.path.isdir(os.path.dirname(SHM_PREFIX)):
        pytest.skip("no /dev/shm on this host")


def test_a_stopped_server_removes_its_own_shm_file_and_runtime_folder_and_no_one_elses(tmp_path, shm_dir):
    tag = uuid.uuid4().hex[:8]
    mine, theirs = f"{SHM_PREFIX}mine_{tag}.shm", f"{SHM_PREFIX}other_server_{tag}.shm"
    open(theirs, "w").close()  # another server's snapshot file on the same machine
    server = SGLangServer(ServerSpec(model_path="unused"), str(tmp_path / "server.log"))
    server._log = open(server.log_path, "ab")
    server.runtime_dir = str(tmp_path / "run")
    os.mkdir(server.runtime_dir)
    open(os.path.join(server.runtime_dir, "sglang_ext_reports_x"), "w").close()
    server.proc = subprocess.Popen([sys.executable, "-c", HOLDER, mine], stdout=subprocess.PIPE,
                                   start_new_session=True, text=True)
    try:
        assert server.proc.stdout.readline().strip() == "ready"
        assert server.shm_files() == {mine}
        server.stop()
        assert server.proc.poll() is not None
        assert not os.path.exists(mine) and not os.path.exists(server.runtime_dir)
        assert os.path.exists(theirs)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        for path in (mine, theirs):
            if os.path.exists(path):
                os.remove(path)


def test_the_lock_file_is_not_opened_through_a_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "server.lock"
    link.symlink_to(target)
    with pytest.raises(OSError) as err:
        with server_lock(str(link)):
            pass
    assert err.value.errno == errno.ELOOP
    assert target.read_text() == "precious"


def test_the_lock_serialises_holders_and_keeps_the_file(tmp_path):
    path = str(tmp_path / "server.lock")
    with server_lock(path):
        probe = subprocess.run(
            [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY);"
             "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", path], capture_output=True)
        assert probe.returncode != 0  # held: a second holder would have to wait
    with server_lock(path):
        pass
    assert os.path.exists(path)


def _wait_for_line(stream, text: str, timeout_s: float) -> str:
    """The first line of `stream` holding `text` (other lines, e.g. warnings, skipped)."""
    import select

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        line = stream.readline()
        if not line:
            break
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} within {timeout_s} s")


def test_a_waiter_for_the_lock_says_why_it_waits(tmp_path):
    """The demo must not sit silent while a test or benchmark holds the server slot."""
    path = str(tmp_path / "server.lock")
    waiter_code = ("import sys; from sglang_ext.server import server_lock\n"
                   "with server_lock(sys.argv[1]):\n    print('got it', flush=True)")
    with server_lock(path):
        waiter = subprocess.Popen([sys.executable, "-c", waiter_code, path], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        said = _wait_for_line(waiter.stderr, "waiting for it to stop", timeout_s=60)
        assert path in said
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and out.strip() == "got it"


def test_the_status_file_is_written_without_following_a_planted_temp_symlink(tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious")
    status = tmp_path / "status.json"
    (tmp_path / "status.json.tmp").symlink_to(target)  # the old fixed temp name
    writer = StatusWriter(str(status), min_interval_s=0.0)
    writer.maybe_write(time.monotonic(), lambda: {"ok": True})
    assert target.read_text() == "precious"
    assert json.loads(status.read_text()) == {"ok": True, "recent_decisions": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json", "status.json.tmp", "victim"]


def test_a_failed_status_write_leaves_no_temp_file(tmp_path):
    writer = StatusWriter(str(tmp_path / "status.json"), min_interval_s=0.0)
    with pytest.raises(TypeError):
        writer.maybe_write(0.0, lambda: {"bad": object.__new__(type("Opaque", (), {"__str__": None}))})
    assert list(tmp_path.iterdir()) == []


def test_the_status_file_encodes_structs_dataclasses_and_odd_values_as_readers_expect(tmp_path):
    import dataclasses
    from collections import deque

    import numpy as np

    from sglang_ext.core.events import FeedStats

    @dataclasses.dataclass
    class Fit:
        name: str = "online"

    status = tmp_path / "status.json"
    writer = StatusWriter(str(status), min_interval_s=0.0)
    writer.record_decision("r1", 1, [0, 16], 2.5)
    writer.maybe_write(0.0, lambda: {"kv_events": FeedStats(gaps=2), "cost_model": Fit(), "n": np.int64(3),
                                     "recent": deque([1]), "bad": float("nan"), "by_worker": {0: 5}})
    body = json.loads(status.read_text())
    assert body["kv_events"]["gaps"] == 2 and body["kv_events"]["replays"] == 0
    assert body["cost_model"] == {"name": "online"} and body["n"] == "3" and body["recent"] == "deque([1])"
    assert body["bad"] is None and body["by_worker"] == {"0": 5}
    assert body["recent_decisions"] == [{"rid": "r1", "worker": 1, "cached_tokens": [0, 16], "t": 2.5}]
