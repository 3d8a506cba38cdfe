"""Sweep cells as Ray tasks (`python -m cluster sweep SPEC --ray ADDRESS`).

Nothing relies on a file system shared with the Ray nodes: each trace's bytes go into
Ray's object store once (shared by every cell that reads it), a task writes the trace
and its outputs in a temporary folder on its node, and returns the output files' bytes,
which the driver writes into the cell's folder. The nodes need the same install as the
driver (this package, SGLang for its radix tree, `requirements/ray.txt`: one Ray version
for the server's Ray path and for sweeps).

ADDRESS is what `ray.init` takes: `local` starts a private Ray instance on this machine
(stopped at the end), `auto` joins the cluster this machine belongs to, `HOST:PORT` a
head node's GCS.
"""

from __future__ import annotations

import pathlib
import tempfile
from concurrent.futures import Future


def _simulate_remote(cell, trace_bytes: bytes, trace_label: str, sim: dict) -> dict[str, bytes]:
    from cluster.sweep import run_cell

    with tempfile.TemporaryDirectory(prefix="sweep_cell_") as tmp:
        trace = pathlib.Path(tmp) / "trace.jsonl"
        trace.write_bytes(trace_bytes)
        out = pathlib.Path(tmp) / "out"
        run_cell(cell, str(trace), sim, str(out), trace_label=trace_label)
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


class RayCells:
    """`submit(cell, trace_path, sim, cell_dir)` -> a `concurrent.futures.Future` that is
    done once the cell's files are written in `cell_dir`; a context manager."""

    def __init__(self, address: str):
        import ray

        self._ray = ray
        self._started_here = not ray.is_initialized()
        if self._started_here:
            # `local`: a fresh instance for this sweep; anything else joins a running one.
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        self._task = ray.remote(num_cpus=1)(_simulate_remote)
        self._traces: dict[str, object] = {}

    def submit(self, cell, trace_path: pathlib.Path, sim: dict, cell_dir: pathlib.Path) -> Future:
        key = str(trace_path)
        if key not in self._traces:
            self._traces[key] = self._ray.put(trace_path.read_bytes())
        ref = self._task.remote(cell, self._traces[key], key, sim)
        done: Future = Future()

        def write(remote: Future) -> None:
            try:
                files = remote.result()
                for name, data in files.items():
                    target = cell_dir / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
                done.set_result(None)
            except BaseException as exc:   # the sweep records it as the cell's error
                done.set_exception(exc)

        ref.future().add_done_callback(write)
        return done

    def __enter__(self) -> RayCells:
        return self

    def __exit__(self, *exc) -> None:
        self._traces.clear()
        if self._started_here:
            self._ray.shutdown()
