"""Start and stop a real SGLang server (with our controller) as a child process.

Used by the demo, the tests and the live benchmarks. On this project's CPU hosts: the
environment of `cpu_host.py` (CPU engine, one compute thread per core and rank), the
torch_native attention backend and `--sleep-on-idle`. The server runs in its own process
group and is stopped by group; SGLang's load snapshots in /dev/shm and our report
sockets are removed afterwards.

A machine-wide lock (`/tmp/sglang_ext_server.lock`) makes concurrent callers (two
pytest sessions, a demo) queue instead of running two servers on two cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from sglang_ext.cpu_host import apply_cpu_defaults
from sglang_ext.status import ENV_STATUS_FILE

LOCK_PATH = "/tmp/sglang_ext_server.lock"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(dp_size: int) -> dict[str, str]:
    env = dict(os.environ)
    apply_cpu_defaults(env, dp_size)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


@dataclass
class ServerSpec:
    model_path: str
    dp_size: int = 2
    load_balance_method: str = "prefix_length_aware"
    max_total_tokens: int = 16384
    extra_args: list[str] = field(default_factory=list)
    port: int = 0
    startup_timeout_s: float = 240.0
    env: dict[str, str] = field(default_factory=dict)


class SGLangServer:
    """A running server; use `start_server` as a context manager."""

    def __init__(self, spec: ServerSpec, log_path: str):
        self.spec = spec
        self.port = spec.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.status_path = log_path + ".status.json"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        s = self.spec
        cmd = [
            sys.executable, "-m", "sglang_ext.launch_server",
            "--model-path", s.model_path, "--device", "cpu", "--attention-backend", "torch_native",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-total-tokens", str(s.max_total_tokens), "--dp-size", str(s.dp_size),
            "--load-balance-method", s.load_balance_method,
        ]
        if s.dp_size > 1:
            cmd.append("--sleep-on-idle")
        return cmd + list(s.extra_args)

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        env = cpu_env(self.spec.dp_size)
        env[ENV_STATUS_FILE] = self.status_path
        env.update(self.spec.env)
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SGLang exited with code {self.proc.returncode} during start-up; see {self.log_path}")
            if self._healthy():
                return
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"SGLang was not ready within {self.spec.startup_timeout_s:.0f} s; see {self.log_path}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health_generate", timeout=30) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        # Children that outlived the group kill (they share the session id).
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if getattr(self, "_log", None):
            self._log.close()
        cleanup_leftovers()

    def status(self) -> dict | None:
        """The controller's latest status file (see `sglang_ext.status`), if any."""
        try:
            with open(self.status_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def wait_status(self, predicate, timeout_s: float = 10.0) -> dict | None:
        """Poll the status file until `predicate(status)` holds; returns the last one."""
        deadline = time.monotonic() + timeout_s
        status = self.status()
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and predicate(status):
                return status
            time.sleep(0.1)
        return status

    def controller_pid(self) -> int | None:
        """The pid of the data-parallel controller process (its title is set by SGLang)."""
        import psutil

        if self.proc is None:
            return None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "data_parallel_controller" in " ".join(child.cmdline()) or child.name().startswith("sglang::data_pa"):
                    return child.pid
        return None


def cleanup_leftovers() -> None:
    """SGLang leaves its load snapshots in /dev/shm; we leave report sockets in /tmp."""
    for path in glob.glob("/dev/shm/sglang_loads_*") + glob.glob("/tmp/sglang_ext_reports_*"):
        with contextlib.suppress(OSError):
            os.remove(path)


@contextlib.contextmanager
def server_lock() -> Iterator[None]:
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def start_server(spec: ServerSpec, log_path: str | None = None) -> Iterator[SGLangServer]:
    """Start a server (waiting for the machine-wide lock), yield it, always stop it."""
    log_path = log_path or f"/tmp/sglang_ext_server_{os.getpid()}_{int(time.time())}.log"
    with server_lock(), _stop_on_sigterm():
        server = SGLangServer(spec, log_path)
        try:
            server.start()
            yield server
        finally:
            server.stop()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while a server runs, so that `finally` blocks stop it
    (a plain SIGTERM would end the process and orphan the server's process group)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
