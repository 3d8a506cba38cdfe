"""The baseline users actually run: the SGLang Model Gateway in front of plain SGLang servers.

    with start_gateway(GatewaySpec(model_path), log_dir) as gw:
        replay against gw.url; gw.worker_stats() says what each worker served

The deployment is `workers` stock SGLang servers (`python -m sglang.launch_server`,
dp=1, our plugin not loaded), each pinned to its own core with one compute thread,
and the gateway (`sglang-router==0.3.2`, Rust) routing plain HTTP to them with its
`cache_aware` or `round_robin` policy. Every worker gets the same model, KV size
(`--max-total-tokens` is per scheduler in SGLang, so the same per-worker size as one rank
of our dp=2 server) and CPU settings as our dp=2 deployment (`server.py`): the CPU
engine, torch_native attention, `--sleep-on-idle`.

The gateway's reply does not say which worker served a request (no header names it;
a dp=1 server reports `dp_rank: null`), so each worker is started with
`--weight-version worker-N`: SGLang copies that label into every reply's
`meta_info.weight_version`, which the gateway passes through untouched, and
`worker_index` reads N back (the replay client does). Per-worker totals come from the
workers themselves: SGLang's Prometheus counters (`--enable-metrics`), read by
`Gateway.worker_stats()`. See docs/gateway.md.

The machine-wide server lock (`server.server_lock`) is held once for the whole
deployment; everything started is stopped by process group, also on errors and SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from sglang_ext.server import ServerSpec, SGLangServer, _stop_on_sigterm, free_port, server_lock

# The gateway's policies that route plain HTTP workers (`manual` needs a routing-key header).
POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")

# Counters of SGLang's tokenizer manager, bumped once per finished request
# (`sglang/srt/observability/metrics_collector.py`, `TokenizerMetricsCollector.
# observe_one_finished_request`). Health checks are sent with `log_metrics=False`
# (`sglang/srt/entrypoints/http_server.py`, `health_generate`), so they are not counted.
WORKER_COUNTERS = {
    "requests": "sglang:num_requests_total",
    "prompt_tokens": "sglang:prompt_tokens_total",
    "cached_tokens": "sglang:cached_tokens_total",
}

# A plugin name that matches none, so that SGLang's `load_plugins` skips ours
# (`sglang/srt/plugins/__init__.py`: `SGLANG_PLUGINS` is a whitelist).
NO_PLUGINS = "none"

# Each worker's `--weight-version`: a free-form label of the weights (`sglang/srt/arg_groups/
# fields/serving.py`, default "default") that SGLang copies into every reply's meta_info;
# nothing routes or schedules on it.
WORKER_LABEL_PREFIX = "worker-"


def worker_index(weight_version) -> int | None:
    """The gateway worker that served a reply, from its `meta_info.weight_version`."""
    if isinstance(weight_version, str) and weight_version.startswith(WORKER_LABEL_PREFIX):
        tail = weight_version[len(WORKER_LABEL_PREFIX):]
        if tail.isdigit():
            return int(tail)
    return None


@dataclass(frozen=True)
class GatewaySpec:
    model_path: str
    policy: str = "cache_aware"
    workers: int = 2
    max_total_tokens: int = 16384        # KV tokens per worker
    server_args: list[str] = field(default_factory=list)   # extra flags for every worker, e.g. --dtype float32
    router_args: list[str] = field(default_factory=list)   # extra gateway flags, e.g. --cache-threshold 0.5
    startup_timeout_s: float = 300.0

    def check(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"gateway policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.workers < 1:
            raise ValueError(f"a gateway needs at least 1 worker, got {self.workers}")
        if self.max_total_tokens < 1:
            raise ValueError(f"max_total_tokens must be >= 1, got {self.max_total_tokens}")


class Gateway:
    """A running deployment; use `start_gateway`."""

    def __init__(self, spec: GatewaySpec, log_dir: pathlib.Path):
        self.spec = spec
        self.log_dir = log_dir
        cores = sorted(os.sched_getaffinity(0))
        self.workers = [
            SGLangServer(_worker_spec(spec, i, cores[i % len(cores)]), str(log_dir / f"worker-{i}.log"))
            for i in range(spec.workers)
        ]
        self.worker_urls = [w.url for w in self.workers]
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.router_log_path = log_dir / "router.log"
        self.router: subprocess.Popen | None = None
        self._baseline: dict[int, dict[str, int]] = {}
        self.startup_s: dict[str, float] = {}   # seconds: "workers" ready, then "router" ready

    @property
    def command_lines(self) -> list[list[str]]:
        """What was run: one command per worker, then the gateway's."""
        return [w.command() for w in self.workers] + [self.router_command()]

    def router_command(self) -> list[str]:
        return [
            sys.executable, "-m", "sglang_router.launch_router",
            "--worker-urls", *self.worker_urls, "--policy", self.spec.policy,
            "--host", "127.0.0.1", "--port", str(self.port),
            # Its metrics listener defaults to 0.0.0.0:29000: keep it on loopback, on a free port.
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(self.metrics_port),
            *self.spec.router_args,
        ]

    def start(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + self.spec.startup_timeout_s
        for w in self.workers:      # boot together: each is pinned to its own core
            w.launch()
        for w in self.workers:
            w.wait_ready()
        t1 = time.monotonic()
        self.startup_s["workers"] = round(t1 - t0, 1)
        with open(self.router_log_path, "ab") as log:
            self.router = subprocess.Popen(
                self.router_command(), stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
            )
        self._wait_router(deadline)
        self.startup_s["router"] = round(time.monotonic() - t1, 1)
        # The readiness probe was served by a worker; figures count from here on.
        self._baseline = self._read_stats()

    def _wait_router(self, deadline: float) -> None:
        """Until the gateway answers a real generate request (it registers workers in
        the background and answers 503 until one is in)."""
        body = json.dumps({"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1}}).encode()
        while time.monotonic() < deadline:
            if self.router.poll() is not None:
                raise RuntimeError(f"the gateway exited with code {self.router.returncode} during start-up; "
                                   f"see {self.router_log_path}")
            req = urllib.request.Request(self.url + "/generate", data=body,
                                         headers={"Content-Type": "application/json"})
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                with urllib.request.urlopen(req, timeout=30) as r:
                    if r.status == 200:
                        return
            time.sleep(0.5)
        raise TimeoutError(f"the gateway did not answer a generate request within "
                           f"{self.spec.startup_timeout_s:.0f} s; see {self.router_log_path}")

    def workers_alive(self) -> list[bool]:
        """Per worker: its process runs and it answers /health."""
        alive = []
        for w in self.workers:
            ok = w.proc is not None and w.proc.poll() is None
            if ok:
                try:
                    with urllib.request.urlopen(w.url + "/health", timeout=30) as r:
                        ok = r.status == 200
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    ok = False
            alive.append(ok)
        return alive

    def worker_stats(self) -> dict[int, dict[str, int]]:
        """Per worker index: requests finished, their prompt tokens and cached prompt
        tokens, counted by the worker since the deployment became ready."""
        now = self._read_stats()
        return {i: {k: v - self._baseline.get(i, {}).get(k, 0) for k, v in stats.items()}
                for i, stats in now.items()}

    def _read_stats(self) -> dict[int, dict[str, int]]:
        stats = {}
        for i, w in enumerate(self.workers):
            with urllib.request.urlopen(w.url + "/metrics", timeout=30) as r:
                stats[i] = parse_counters(r.read().decode())
        return stats

    def stop(self) -> None:
        if self.router is not None:
            _stop_group(self.router, grace_s=10)
        # SIGTERM to every worker first: each spends seconds shutting down (SGLang waits
        # 5 s before its crash diagnostics when a child dies), so they overlap. Their shm
        # files are learnt while the processes still hold them.
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.owned_files |= w.shm_files()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.proc.pid, signal.SIGTERM)
        for w in self.workers:
            w.stop()


def _worker_spec(spec: GatewaySpec, index: int, core: int) -> ServerSpec:
    return ServerSpec(
        model_path=spec.model_path, dp_size=1, max_total_tokens=spec.max_total_tokens,
        extra_args=["--sleep-on-idle", "--enable-metrics", "--weight-version", f"{WORKER_LABEL_PREFIX}{index}",
                    *spec.server_args],
        startup_timeout_s=spec.startup_timeout_s, stock=True, cpus=(core,),
        # One compute thread on its one core (cpu_env would give a dp=1 server every core).
        env={"OMP_NUM_THREADS": "1", "SGLANG_PLUGINS": NO_PLUGINS},
    )


def parse_counters(text: str) -> dict[str, int]:
    """The `WORKER_COUNTERS` from a Prometheus text page, summed over their labels
    (`is_streaming`, `cache_source`); 0 for a counter not yet created."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {name: key for key, name in WORKER_COUNTERS.items()}
    totals = dict.fromkeys(WORKER_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[wanted[sample.name]] += sample.value
    return {k: int(round(v)) for k, v in totals.items()}


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # The group may outlive its leader; the gateway waits for in-flight requests on
    # SIGTERM (up to its --shutdown-grace-period-secs, 180 s), which a stop should not.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@contextlib.contextmanager
def start_gateway(spec: GatewaySpec, log_dir: pathlib.Path) -> Iterator[Gateway]:
    """Start the workers and the gateway (waiting for the machine-wide lock), yield the
    deployment, always stop all of it. Logs go to `log_dir` (worker-N.log, router.log)."""
    spec.check()
    log_dir = pathlib.Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    with server_lock(), _stop_on_sigterm():
        gateway = Gateway(spec, log_dir)
        try:
            gateway.start()
            yield gateway
        finally:
            gateway.stop()
