"""Start and stop a real SGLang server (with our controller) as a child process.

Used by the demo, the tests and the live benchmarks. On this project's CPU hosts: the
environment of `cpu_host.py` (CPU engine, one compute thread per core and rank), the
torch_native attention backend and `--sleep-on-idle`. The server runs in its own process
group and is stopped by group. Afterwards only what this server made is removed: its
private runtime folder (our controller's report socket; `SGLANG_EXT_RUNTIME_DIR`) and
the SGLang load-snapshot files in /dev/shm that its own processes held open (the name
derives from a random instance id, `sglang/srt/managers/load_snapshot.py:
shm_path_for`, so it can only be learnt from the processes). Other servers' files on the
machine are left alone.

A machine-wide lock (`/tmp/sglang_ext_server.lock`) makes concurrent callers (two
pytest sessions, a demo) queue instead of running two servers on two cores; it is
opened with `O_NOFOLLOW`, so a symlink planted at that fixed path is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from sglang_ext.cpu_host import apply_cpu_defaults
from sglang_ext.settings import ENV_RUNTIME_DIR
from sglang_ext.status import ENV_STATUS_FILE

LOCK_PATH = "/tmp/sglang_ext_server.lock"
SHM_PREFIX = "/dev/shm/sglang_loads_"  # SGLang's load-snapshot files


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
    # For external baselines (`gateway.py`); the defaults leave the command as above.
    stock: bool = False             # plain `python -m sglang.launch_server`: no --load-balance-method
    cpus: tuple[int, ...] = ()      # pin the whole server to these cores (`taskset`, inherited by its children)


class SGLangServer:
    """A running server; use `start_server` as a context manager."""

    def __init__(self, spec: ServerSpec, log_path: str):
        self.spec = spec
        self.port = spec.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.status_path = log_path + ".status.json"
        self.proc: subprocess.Popen | None = None
        self.runtime_dir: str | None = None
        self.owned_files: set[str] = set()  # SGLang's shm files this server's processes held

    def command(self) -> list[str]:
        s = self.spec
        cmd = [
            sys.executable, "-m", "sglang.launch_server" if s.stock else "sglang_ext.launch_server",
            "--model-path", s.model_path, "--device", "cpu", "--attention-backend", "torch_native",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-total-tokens", str(s.max_total_tokens), "--dp-size", str(s.dp_size),
        ]
        if not s.stock:
            cmd += ["--load-balance-method", s.load_balance_method]
        if s.dp_size > 1:
            cmd.append("--sleep-on-idle")
        if s.cpus:
            cmd = ["taskset", "--cpu-list", ",".join(map(str, s.cpus)), *cmd]
        return cmd + list(s.extra_args)

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting (`wait_ready` waits), so that several servers
        can boot at once."""
        self._log = open(self.log_path, "ab")
        env = cpu_env(self.spec.dp_size)
        env[ENV_STATUS_FILE] = self.status_path
        self.runtime_dir = tempfile.mkdtemp(prefix="sglang_ext_run_")  # mode 0700, ours alone
        env[ENV_RUNTIME_DIR] = self.runtime_dir
        env.update(self.spec.env)
        self.proc = subprocess.Popen(
            self.command(), stdout=self._log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
        self._launched_at = time.monotonic()

    def wait_ready(self) -> None:
        deadline = self._launched_at + self.spec.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SGLang exited with code {self.proc.returncode} during start-up; see {self.log_path}")
            if self._healthy():
                self.owned_files |= self.shm_files()
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

    def shm_files(self) -> set[str]:
        """SGLang's load-snapshot files the server's processes hold open now."""
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            return set()
        found = set()
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    found |= {f.path for f in proc.open_files() if f.path.startswith(SHM_PREFIX)}
        return found

    def stop(self) -> None:
        self.owned_files |= self.shm_files()
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
        self.remove_own_files()

    def remove_own_files(self) -> None:
        for path in self.owned_files:
            with contextlib.suppress(OSError):
                os.remove(path)
        if self.runtime_dir is not None:
            shutil.rmtree(self.runtime_dir, ignore_errors=True)

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


@contextlib.contextmanager
def server_lock(path: str = LOCK_PATH) -> Iterator[None]:
    fd = open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # Say why nothing happens: a newcomer's demo would otherwise sit silent while a
            # test or benchmark holds the machine's one server slot.
            print(f"server: another SGLang server started by this project is running ({path} is held); "
                  "waiting for it to stop", file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def open_lock_file(path: str) -> int:
    """Open (creating) a lock file at a fixed, shared path without following a symlink
    there, and without truncating it. Another user's lock file is opened read-only
    (flock needs no write access)."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags | os.O_RDWR, 0o644)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)


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
