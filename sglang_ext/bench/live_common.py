"""Pieces the live benchmarks share: make a trace, serve it on a fresh real SGLang
server, replay it, read the figures back.

Every run gets its own server (no cache or ledger state carried over between
configurations) through `sglang_ext.server.start_server`, which queues on the
machine-wide lock, so two benchmarks never run servers side by side.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys
import time

from sglang_ext.server import ServerSpec, start_server

# Keys copied from the controller's status file into each run's summary.
CONTROLLER_KEYS = ("dispatched_by_worker", "length_predictions", "expired", "decision_time")


def generate_trace(path: pathlib.Path, kind: str, options: list[str]) -> pathlib.Path:
    """`python -m traces generate KIND --out PATH OPTIONS...` in a child process (the
    generator's own CLI checks the options); raises CalledProcessError on failure."""
    cmd = [sys.executable, "-m", "traces", "generate", kind, "--out", str(path), *options]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return path


def serve_and_replay(trace_path: pathlib.Path, spec: ServerSpec, out: pathlib.Path,
                     max_concurrency: int = 128) -> dict:
    """Start a server for `spec`, replay the trace into `out` (requests.csv,
    summary.json, config.json, server.log) and return the replay summary, with the
    controller's status (`CONTROLLER_KEYS`) once nothing is in flight under "controller"."""
    from traces.format import read_trace
    from traces.replay import ReplayConfig, run

    out.mkdir(parents=True, exist_ok=True)
    with start_server(spec, str(out / "server.log")) as server:
        cfg = ReplayConfig(trace=str(trace_path), url=server.url, out_dir=str(out), max_concurrency=max_concurrency,
                           progress=False)
        summary = run(read_trace(str(trace_path)), cfg)
        status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=30) or {}
    summary["controller"] = {k: status.get(k) for k in CONTROLLER_KEYS}
    return summary


def get(summary: dict, *path, default=float("nan")):
    """summary[path[0]][path[1]]..., or `default` where a key is missing."""
    node = summary
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def token_totals(requests_csv: pathlib.Path) -> tuple[int, int]:
    """(prompt tokens, cached prompt tokens) over the successful requests of a replay."""
    prompt = cached = 0
    with open(requests_csv, newline="") as f:
        for r in csv.DictReader(f):
            if r["ok"] == "True":
                prompt += int(r["prompt_tokens"] or 0)
                cached += int(r["cached_tokens"] or 0)
    return prompt, cached


def write_json_atomic(path: pathlib.Path, payload: dict) -> None:
    """Write then rename, so an interrupted benchmark never leaves half a results file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


class Progress:
    """One line per run start and end, printed above tqdm's bar of runs."""

    def __init__(self, label: str, total: int):
        from tqdm import tqdm

        self.label = label
        self.t0 = time.perf_counter()
        # No bar in a log file (its redraws would bury the lines); the lines stay.
        self.bar = tqdm(total=total, unit="run", desc=label, file=sys.stderr, dynamic_ncols=True,
                        disable=not sys.stderr.isatty())

    def line(self, text: str) -> None:
        self.bar.write(f"{self.label} [{time.perf_counter() - self.t0:6.0f} s] {text}", file=sys.stdout)
        sys.stdout.flush()

    def advance(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
