"""`python -m cluster sweep SPEC --out DIR`: every policy x rate x GPU count x workload x
seed of a sweep spec, one simulation per cell, in parallel processes (or as Ray tasks
with `--ray ADDRESS`, `cluster/ray_cells.py`), resumable.

A spec is a TOML file (examples in `cluster/sweeps/`):

    name = "poster"
    seeds = [1, 2, 3]
    gpus = [8, 16]
    rates_rps = [32, 64, 128, 256]
    policies = ["round_robin", "preble", "prefix_length_aware@oracle"]   # POLICY[@LENGTH_SOURCE]
    [sim]                          # SimConfig fields shared by every cell
    cost_model = "preble-a6000-mistral-7b"
    decision_time = "model"        # per policy: cluster/decision_models/<policy>.json
    [workloads.react]              # a `python -m traces generate` command line, less
    generator = "react"            # --out / --rate-rps / --seed, which the sweep sets
    args = ["--output-lengths", "1:0.5,300:0.5", "--duration-s", "60"]
    predict = true                 # optional: `traces predict` on each trace (needed by
    # predict_model = "DIR"        # any @predicted policy); a model folder implies predict

Layout of DIR: `sweep.json` (the resolved spec), `traces/<workload>-r<rate>-s<seed>.jsonl`
(generated once, shared by the cells that use them; a predicting workload's cells read
`traces/<workload>-r<rate>-s<seed>.predicted.jsonl` instead, with the predictions'
cache beside it), and per cell
`cells/<workload>/g<gpus>/r<rate>/<policy>/s<seed>/` holding what `cluster simulate`
writes. A cell whose `summary.json` exists is skipped, so an interrupted sweep resumes
where it stopped; a failed cell leaves `error.txt` and is retried on the next run.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import multiprocessing
import os
import pathlib
import subprocess
import sys
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from sglang_ext.core.policies import POLICIES, LengthSource

DECISION_MODEL_DIR = pathlib.Path(__file__).resolve().parent / "decision_models"
# PREBLE's decision time comes from its published scheduler's figures, not from our
# re-implementation, which is about 11x cheaper (see `decision_models/preble-published.json`).
DECISION_MODEL_FILE = {"preble": "preble-published"}


class SweepError(ValueError):
    """A bad sweep spec; the message is one line."""


@dataclass(frozen=True)
class Workload:
    name: str
    generator: str
    args: tuple[str, ...] = ()
    predict: bool = False            # run `traces predict` on each generated trace
    predict_model: str | None = None  # predictor folder; None = length_model/artifacts


def _workload(name: str, w: dict) -> Workload:
    predict, model = w.get("predict", False), w.get("predict_model")
    if not isinstance(predict, bool) or not (model is None or isinstance(model, str)):
        raise TypeError(f"workload {name}: predict must be true/false and predict_model a folder name")
    return Workload(name, w["generator"], tuple(w.get("args", ())), predict or model is not None, model)


@dataclass(frozen=True)
class SweepSpec:
    name: str
    seeds: tuple[int, ...]
    gpus: tuple[int, ...]
    rates_rps: tuple[float, ...]
    policies: tuple[str, ...]
    workloads: tuple[Workload, ...]
    sim: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    workload: str
    gpus: int
    rate_rps: float
    policy: str  # POLICY[@LENGTH_SOURCE]
    seed: int

    def path(self, out: pathlib.Path) -> pathlib.Path:
        return out / "cells" / self.workload / f"g{self.gpus}" / f"r{self.rate_rps:g}" / self.policy / f"s{self.seed}"


def split_policy(entry: str) -> tuple[str, str]:
    policy, _, source = entry.partition("@")
    return policy, source or LengthSource.MAX_NEW_TOKENS.value


def load_spec(path: str | pathlib.Path) -> SweepSpec:
    try:
        raw = tomllib.loads(pathlib.Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SweepError(f"sweep spec {path}: {exc}") from None
    try:
        spec = SweepSpec(
            name=str(raw.get("name", pathlib.Path(path).stem)),
            seeds=tuple(int(s) for s in raw["seeds"]), gpus=tuple(int(g) for g in raw["gpus"]),
            rates_rps=tuple(float(r) for r in raw["rates_rps"]), policies=tuple(raw["policies"]),
            workloads=tuple(_workload(name, w) for name, w in raw["workloads"].items()),
            sim=dict(raw.get("sim", {})),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise SweepError(f"sweep spec {path}: missing or bad field ({exc!r})") from None
    for entry in spec.policies:
        policy, source = split_policy(entry)
        if policy not in POLICIES:
            raise SweepError(f"sweep spec {path}: unknown policy {policy!r}; valid: {', '.join(POLICIES)}")
        if source not in {s.value for s in LengthSource}:
            raise SweepError(f"sweep spec {path}: unknown length source {source!r} in {entry!r}")
    if not all((spec.seeds, spec.gpus, spec.rates_rps, spec.policies, spec.workloads)):
        raise SweepError(f"sweep spec {path}: seeds, gpus, rates_rps, policies and workloads must be non-empty")
    predicted = [e for e in spec.policies if split_policy(e)[1] == LengthSource.PREDICTED.value]
    blind = [w.name for w in spec.workloads if not w.predict]
    if predicted and blind:
        raise SweepError(f"sweep spec {path}: {predicted[0]} needs predicted lengths but workload {blind[0]} "
                         "does not predict (add predict = true to it)")
    return spec


def cells(spec: SweepSpec) -> list[Cell]:
    return [Cell(w.name, g, r, p, s) for w, g, r, p, s in
            itertools.product(spec.workloads, spec.gpus, spec.rates_rps, spec.policies, spec.seeds)]


def trace_path(out: pathlib.Path, workload: str, rate_rps: float, seed: int) -> pathlib.Path:
    return out / "traces" / f"{workload}-r{rate_rps:g}-s{seed}.jsonl"


def cell_trace_path(out: pathlib.Path, workload: Workload, rate_rps: float, seed: int) -> pathlib.Path:
    """The trace a cell simulates: the generated one, or its predicted copy."""
    path = trace_path(out, workload.name, rate_rps, seed)
    return path.with_suffix(".predicted.jsonl") if workload.predict else path


def predict_traces(spec: SweepSpec, out: pathlib.Path, progress: bool = True) -> None:
    """`traces predict` on every trace of a predicting workload that lacks its copy. It runs
    in one child process: the model is loaded once, and torch (with its thread pools) is
    never imported by the process that later forks the cell workers."""
    from traces.predict import PredictConfig

    configs = []
    for w, rate, seed in itertools.product(spec.workloads, spec.rates_rps, spec.seeds):
        target = cell_trace_path(out, w, rate, seed)
        if w.predict and not target.exists():
            configs.append(PredictConfig(str(trace_path(out, w.name, rate, seed)), str(target), w.predict_model,
                                         progress=progress))
    if not configs:
        return
    from traces.predict import run_many

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            pool.submit(run_many, configs).result()
        except (ValueError, RuntimeError, OSError) as exc:
            raise SweepError(f"traces predict failed: {' '.join(str(exc).split())}") from None


def generate_traces(spec: SweepSpec, out: pathlib.Path) -> None:
    """One trace per workload x rate x seed (every policy and GPU count sees the same
    requests), written by the traces CLI so that a sweep's traces are what a user gets."""
    for w, rate, seed in itertools.product(spec.workloads, spec.rates_rps, spec.seeds):
        path = trace_path(out, w.name, rate, seed)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        cmd = [sys.executable, "-m", "traces", "generate", w.generator, "--out", str(tmp),
               "--rate-rps", f"{rate:g}", "--seed", str(seed), *w.args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SweepError(f"workload {w.name}: trace generation failed: {done.stderr.strip().splitlines()[-1:]}")
        tmp.rename(path)


def decision_time_for(spec_value: str, policy: str) -> str:
    """`model` alone means each policy's own model file."""
    if spec_value != "model":
        return spec_value
    return f"model:{DECISION_MODEL_DIR / (DECISION_MODEL_FILE.get(policy, policy) + '.json')}"


def cell_config(cell: Cell, sim: dict):
    """The cell's `SimConfig`: the spec's shared fields plus the cell's own."""
    from cluster.config import SimConfig

    policy, source = split_policy(cell.policy)
    fields = dict(sim)
    if "decision_time" in fields:
        fields["decision_time"] = decision_time_for(fields["decision_time"], policy)
    try:
        return SimConfig(gpus=cell.gpus, policy=policy, length_source=source, seed=cell.seed, **fields)
    except TypeError as exc:  # an unknown field in [sim]
        raise SweepError(f"sweep spec [sim]: {exc}") from None


def check_configs(spec: SweepSpec) -> None:
    """Resolve every distinct cell config once (cost model, decision-time model, fields),
    so that a bad spec fails at once with one line rather than in every cell."""
    from cluster.config import resolve

    seen = set()
    for cell in cells(spec):
        key = (cell.gpus, cell.policy)
        if key not in seen:
            seen.add(key)
            resolve(cell_config(cell, spec.sim))


def run_cell(cell: Cell, trace_file: str, sim: dict, out_dir: str, trace_label: str | None = None) -> dict:
    """Simulate one cell (in a worker process or a Ray task); returns its summary. The
    outputs name `trace_label` as their trace (a Ray task reads a copy of the file)."""
    from cluster.engine import run_simulation
    from cluster.results import write_outputs
    from traces.format import read_trace

    outcome = run_simulation(read_trace(trace_file), cell_config(cell, sim))
    write_outputs(outcome, out_dir, trace_path=trace_label or trace_file)
    return outcome.summary


class _ProcessCells:
    """Cells in local worker processes: the same `submit` as `cluster.ray_cells.RayCells`."""

    def __init__(self, processes: int):
        # spawn, not fork: a caller that has started threads (torch, ONNX Runtime, Ray in
        # a test session) can leave a lock held in a forked child, which then hangs.
        self._pool = ProcessPoolExecutor(max_workers=processes, mp_context=multiprocessing.get_context("spawn"))

    def submit(self, cell: Cell, trace_path: pathlib.Path, sim: dict, cell_dir: pathlib.Path):
        return self._pool.submit(run_cell, cell, str(trace_path), sim, str(cell_dir))

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown()


def run_sweep(spec: SweepSpec, out: pathlib.Path, processes: int | None = None, progress: bool = True,
              ray_address: str | None = None) -> dict:
    """Run every cell not yet done, in local processes or, with `ray_address`, as Ray
    tasks (`cluster/ray_cells.py`); returns counts (done, skipped, failed)."""
    check_configs(spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    generate_traces(spec, out)
    predict_traces(spec, out, progress)
    workloads = {w.name: w for w in spec.workloads}
    todo = [c for c in cells(spec) if not (c.path(out) / "summary.json").exists()]
    counts = {"cells": len(cells(spec)), "skipped": len(cells(spec)) - len(todo), "done": 0, "failed": 0}
    processes = processes or max(1, (os.cpu_count() or 1))
    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"sweep {spec.name}", unit="cell", disable=not progress)
    if ray_address is not None:
        from cluster.ray_cells import RayCells

        runner = RayCells(ray_address)
    else:
        runner = _ProcessCells(processes)
    with runner:
        futures = {}
        for cell in todo:
            cell_dir = cell.path(out)
            cell_dir.mkdir(parents=True, exist_ok=True)
            (cell_dir / "error.txt").unlink(missing_ok=True)
            trace = cell_trace_path(out, workloads[cell.workload], cell.rate_rps, cell.seed)
            futures[runner.submit(cell, trace, spec.sim, cell_dir)] = cell
        for future in as_completed(futures):
            cell = futures[future]
            try:
                future.result()
                counts["done"] += 1
            except Exception as exc:  # one bad cell must not lose the others' results
                counts["failed"] += 1
                (cell.path(out) / "error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
                bar.write(f"sweep: cell {cell.path(out).relative_to(out)} failed: {type(exc).__name__}: {exc}")
            bar.update(1)
    bar.close()
    return counts
