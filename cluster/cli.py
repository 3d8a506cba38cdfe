"""`python -m cluster simulate | ...`: the cluster simulator's command line.

Each subcommand is one function decorated with `@subcommand(name, help)`: it receives its
own argparse parser, adds its options, and returns the function that runs it (which
returns the exit code). Adding a subcommand (`sweep`, `report`, `calibrate`, `bench`) is
writing one such function here.

Exit codes: 0 ok, 2 bad input (options, trace, cost model, policy), 1 runtime failure.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable

from cluster.config import SimConfig
from traces.argparsing import HelpFormatter, OneLineErrorParser

EXAMPLES = """examples:
  python -m traces generate react --out react.jsonl --rate-rps 32 --duration-s 60 --token-ids --seed 1
  python -m cluster simulate react.jsonl --gpus 16 --policy prefix_length_aware --length-source oracle \\
      --cost-model h100-llama3.1-8b --kv-capacity-tokens 400000 --decision-time fixed:200 --seed 1 --out sim1
  python -m cluster simulate react.jsonl --gpus 8 --policy round_robin --event-delay-ms 20 --debug-checks --out sim2
  python -m cluster sweep cluster/sweeps/poster.toml --out runs/poster --processes 2
  python -m cluster report runs/poster
  python -m cluster bench --out runs/bench --gpus 16 --rates-rps 128 --duration-s 600
  python -m cluster calibrate --model tiny --out docs/results/calibration/tiny --install   # real SGLang
exit codes: 0 ok, 2 bad input, 1 runtime failure
"""


Runner = Callable[[argparse.Namespace], int]
_SUBCOMMANDS: list[tuple[str, str, Callable[[argparse.ArgumentParser], Runner]]] = []


def subcommand(name: str, help_text: str):
    """Register `fn(parser) -> runner` as `python -m cluster NAME`."""
    def register(fn: Callable[[argparse.ArgumentParser], Runner]):
        _SUBCOMMANDS.append((name, help_text, fn))
        return fn
    return register


# ------------------------------------------------------------------ SimConfig options

_TYPES = {"int": int, "float": float, "str": str}


def add_sim_options(p: argparse.ArgumentParser, exclude: tuple[str, ...] = (), title: str = "simulator") -> None:
    """One option per `SimConfig` field (help, default and type from the field)."""
    group = p.add_argument_group(title)
    for f in dataclasses.fields(SimConfig):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "default": f.default, "help": f.metadata.get("help")}
        if f.type == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = _TYPES[str(f.type).split(" | ")[0]]
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        group.add_argument(flag, **kw)


def sim_config_from(args: argparse.Namespace, **overrides) -> SimConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SimConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return SimConfig(**values)


def print_table(summary: dict, wall_s: float | None, title: str) -> None:
    """A short human-readable table of a run (name / value rows)."""
    sim = summary.get("simulator", {})
    dec = summary.get("decision_time_us", {})

    def f(value, fmt="{:.3f}"):
        return "-" if value is None else fmt.format(value)

    rows = [
        ("requests ok / total", f"{summary['succeeded']} / {summary['requests']}"),
        ("TTFT mean / p99 (s)", f"{f(summary['ttft_s']['mean'])} / {f(summary['ttft_s']['p99'])}"),
        ("e2e mean / p99 (s)", f"{f(summary['e2e_s']['mean'])} / {f(summary['e2e_s']['p99'])}"),
        ("norm latency mean (s/token)", f(summary['norm_latency_s_per_token']['mean'], "{:.4f}")),
        ("prefix hit rate", f(summary.get("prefix_hit_rate"))),
        ("throughput (req/s, out tok/s)", f"{f(summary.get('throughput_rps'), '{:.1f}')}, "
                                          f"{f(summary.get('throughput_output_tokens_per_s'), '{:.0f}')}"),
        ("decision time mean / p99 (us)", f"{f(dec.get('mean'), '{:.1f}')} / {f(dec.get('p99'), '{:.1f}')}"),
        ("busy imbalance (max/mean)", f(sim.get("worker_busy_imbalance_max_over_mean"))),
        ("simulated duration (s)", f(sim.get("simulated_duration_s"), "{:.1f}")),
        ("host-dependent", str(summary.get("host_dependent"))),
    ]
    if wall_s is not None:
        rows.append(("wall time (s)", f"{wall_s:.1f}"))
    from traces.console import print_table as print_rich_table

    print_rich_table(rows, title=title)


# ---------------------------------------------------------------------- subcommands


@subcommand("simulate", "simulate a trace on N simulated SGLang workers behind the router")
def _simulate_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("trace", help="trace file (python -m traces generate ...)")
    p.add_argument("--out", required=True, help="folder for requests.csv, summary.json, config.json")
    p.add_argument("--skip-bad-lines", action="store_true", help="drop malformed request lines instead of stopping")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    add_sim_options(p)

    def run(a: argparse.Namespace) -> int:
        from cluster.config import resolve
        from traces.format import read_trace

        config = sim_config_from(a)
        resolve(config)  # option, cost-model and decision-time errors before the trace is read
        trace = read_trace(a.trace, strict=not a.skip_bad_lines)
        for message in trace.skipped_lines:
            print(f"cluster: skipped {message}", file=sys.stderr)
        from cluster.engine import run_simulation   # imports SGLang's radix tree: seconds
        from cluster.results import write_outputs

        started = time.perf_counter()   # for the table only; never in the outputs
        outcome = run_simulation(trace, config)
        wall_s = time.perf_counter() - started
        write_outputs(outcome, a.out, trace_path=a.trace)
        if not a.quiet:
            print_table(outcome.summary, wall_s, f"{config.policy} on {config.gpus} GPUs ({a.trace})")
        print(f"cluster: wrote {a.out}/requests.csv, summary.json, config.json", file=sys.stderr)
        return 0

    return run


@subcommand("sweep", "simulate every cell of a sweep spec (TOML), in parallel processes, resumable")
def _sweep_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("spec", help="sweep spec (TOML; examples in cluster/sweeps/)")
    p.add_argument("--out", required=True, help="sweep folder; cells already finished there are skipped")
    p.add_argument("--processes", type=int, default=None, help="parallel simulations (default: CPU cores)")
    p.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the cells as Ray tasks: local (a private instance), auto, or HOST:PORT of a head node")
    p.add_argument("--no-report", action="store_true", help="do not write the report when the sweep ends")

    def run(a: argparse.Namespace) -> int:
        import pathlib

        from cluster import sweep

        if a.processes is not None and a.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {a.processes}")
        spec = sweep.load_spec(a.spec)
        out = pathlib.Path(a.out)
        if a.ray is not None and a.processes is not None:
            raise ValueError("--ray and --processes do not go together (Ray places one cell per CPU it has)")
        counts = sweep.run_sweep(spec, out, processes=a.processes, ray_address=a.ray)
        print(f"cluster: sweep {spec.name}: {counts['done']} run, {counts['skipped']} already done, "
              f"{counts['failed']} failed, of {counts['cells']} cells", file=sys.stderr)
        if not a.no_report and counts["failed"] < counts["cells"]:
            from cluster.report import write_report

            print(f"cluster: report {write_report(out)}", file=sys.stderr)
        return 1 if counts["failed"] else 0

    return run


@subcommand("report", "a sweep folder's results as a Markdown table and PNG plots")
def _report_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("sweep_dir", help="a folder written by `python -m cluster sweep`")
    p.add_argument("--out", default=None, help="report folder (default: SWEEP_DIR/report)")

    def run(a: argparse.Namespace) -> int:
        import pathlib

        from cluster.report import write_report

        path = write_report(pathlib.Path(a.sweep_dir), pathlib.Path(a.out) if a.out else None)
        print(f"cluster: wrote {path}", file=sys.stderr)
        return 0

    return run


@subcommand("bench", "what the simulator itself costs on this host, against GPUs and rate")
def _bench_parser(p: argparse.ArgumentParser) -> Runner:
    p.add_argument("--out", required=True, help="folder for traces/, bench.json and bench.png")
    p.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="simulated GPU counts")
    p.add_argument("--rates-rps", type=float, nargs="+", default=[32.0, 128.0], help="request rates")
    p.add_argument("--duration-s", type=float, default=60.0,
                   help="trace length (the target is stated for 600 s at 16 GPUs and 128 rps)")
    p.add_argument("--policy", default="prefix_length_aware", help="routing policy")
    p.add_argument("--cost-model", default="preble-a6000-mistral-7b", help="the workers' cost model")
    p.add_argument("--seed", type=int, default=1, help="trace and simulation seed")

    def run(a: argparse.Namespace) -> int:
        import pathlib

        from cluster.bench import run_bench
        from cluster.config import resolve

        if min(a.gpus) < 1 or min(a.rates_rps) <= 0 or a.duration_s <= 0:
            raise ValueError("--gpus must be >= 1, --rates-rps and --duration-s > 0")
        resolve(SimConfig(policy=a.policy, cost_model=a.cost_model))   # bad names: one line, before any work
        run_bench(pathlib.Path(a.out), a.gpus, a.rates_rps, a.duration_s, a.policy, a.cost_model, a.seed)
        return 0

    return run


@subcommand("calibrate", "fit the CPU cost model from real SGLang probes (dp=1, dp=2), then compare a held-out "
                         "trace live against the simulator")
def _calibrate_parser(p: argparse.ArgumentParser) -> Runner:
    from cluster.calibrate import CalibrateConfig

    p.add_argument("--out", required=True, help="folder for calibration.json, table.txt, PNGs, live and sim runs")
    p.add_argument("--install", action="store_true", help="also copy the fitted cost model into "
                   "sglang_ext/core/cost_models/ (cpu-tiny-llama.json or cpu-smollm2-135m.json)")
    group = p.add_argument_group("calibration")
    for f in dataclasses.fields(CalibrateConfig):
        flag = "--" + f.name.replace("_", "-")
        kw: dict = {"dest": f.name, "help": f.metadata.get("help")}
        if isinstance(f.default, bool):
            kw.update(action=argparse.BooleanOptionalAction, default=f.default)
        elif isinstance(f.default, tuple):
            kw.update(default=",".join(str(v) for v in f.default), metavar="A,B,...")
        else:
            kw.update(default=f.default, type=type(f.default))
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        group.add_argument(flag, **kw)

    def run(a: argparse.Namespace) -> int:
        import pathlib

        from cluster.calibrate import config_from_args, run_calibration

        config = config_from_args(a)
        config.check()
        run_calibration(config, pathlib.Path(a.out), install=a.install)
        print(f"cluster: wrote {a.out}/calibration.json, table.txt, fit.png, live_vs_sim.png", file=sys.stderr)
        return 0

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m cluster", description="The cluster simulator.", epilog=EXAMPLES,
                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for name, help_text, add in _SUBCOMMANDS:
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES, formatter_class=HelpFormatter)
        p.set_defaults(run=add(p))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    where = f"cluster {args.command}"
    try:
        return args.run(args)
    except ValueError as err:   # TraceError, CostModelError, UnknownPolicyError are ValueErrors
        print(f"{where}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as err:   # cluster.engine.SimulationError is a RuntimeError
        print(f"{where}: failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 1
