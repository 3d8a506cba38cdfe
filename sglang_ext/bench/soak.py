"""Soak: a long Locust ReAct run against real SGLang dp=2 on CPU with our controller.

    python -m sglang_ext.bench soak [--duration-s 600] [--rate-rps 4] [--user-rps 1]
        [--model tiny] [--policy prefix_length_aware] [--max-total-tokens 16384]
        [--sample-interval-s 5] [--out runs/soak] [--extra-server-args="--length-source predicted"]

One fresh server (our launcher, `sglang_ext.server.start_server`, which waits for the
machine-wide server lock), then the project's Locust ReAct agents (`locustfile.py`, real
Locust, headless: ceil(rate / user-rps) closed-loop users, each paced at user-rps turns
per second) for `--duration-s`. Every `--sample-interval-s` it samples the controller
process (RSS, CPU time; the controller is the server's child titled
`sglang::data_parallel_controller`) and the controller's status file (the mirror's tokens
per worker, the ledger's in-flight count and capacities). Locust's own stats history
(`--csv-full-history`: a row a second per request name, with percentiles over the last
10 s) gives the latency and rate of the `/generate` turns.

Output (`--out`): `soak.json` (resolved config, both series, the checks), `table.txt`
(one row a minute, then PASS/FAIL per check), `soak.png` (RSS, mirror tokens against the
workers' KV capacity, in-flight, p50/p95 latency and request rate over time), Locust's
CSVs and the server log. The checks and their bounds: `soak_analysis.py`.

Exit codes: 0 every check passed, 1 some check failed (or Locust failed), 2 bad options.
"""

from __future__ import annotations

import argparse
import csv
import math
import pathlib
import shlex
import subprocess
import sys
import time

from sglang_ext.bench import soak_analysis as analysis
from sglang_ext.bench.live_common import write_json_atomic
from sglang_ext.models import smollm2_path, tiny_path
from sglang_ext.server import ServerSpec, start_server

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = {"tiny": (tiny_path, ()), "smollm2": (smollm2_path, ("--dtype", "float32"))}
REQUEST_ROW = ("POST", "/generate")  # Locust's row for whole turns (TTFT/TPOT rows are custom metrics)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = _Formatter
    b = analysis.SoakBounds()
    parser.add_argument("--duration-s", type=float, default=600.0, help="length of the Locust run")
    parser.add_argument("--rate-rps", type=float, default=4.0, help="target turns per second (all users)")
    parser.add_argument("--user-rps", type=float, default=1.0, help="turns per second per Locust user")
    parser.add_argument("--model", choices=list(MODELS), default="tiny")
    parser.add_argument("--policy", default="prefix_length_aware", help="--load-balance-method of the server")
    parser.add_argument("--max-total-tokens", type=int, default=16384, help="KV pool per rank")
    parser.add_argument("--output-lengths", default="4:0.5,64:0.5", help="Locust --react-output-lengths")
    parser.add_argument("--workloads", type=int, default=4, help="Locust --react-workloads")
    parser.add_argument("--examples", type=int, default=2, help="Locust --react-examples")
    parser.add_argument("--seed", type=int, default=1, help="Locust --react-seed")
    parser.add_argument("--sample-interval-s", type=float, default=5.0, help="controller sampling period")
    parser.add_argument("--drain-timeout-s", type=float, default=60.0,
                        help="after the load, how long the ledger may take to empty")
    parser.add_argument("--extra-server-args", default="", help="more server flags, one shell-quoted string")
    parser.add_argument("--rss-growth-mib", type=float, default=b.rss_growth_mib)
    parser.add_argument("--latency-factor", type=float, default=b.latency_factor)
    parser.add_argument("--min-rate-fraction", type=float, default=b.min_rate_fraction)
    parser.add_argument("--warmup-s", type=float, default=b.warmup_s)
    parser.add_argument("--out", default="runs/soak")


def resolve(args: argparse.Namespace) -> dict:
    """The run's config, checked before any server starts (ValueError)."""
    from sglang_ext.core.policies import policy_names

    if args.policy not in policy_names():
        raise ValueError(f"unknown policy {args.policy!r}; valid: {', '.join(policy_names())}")
    for name in ("duration_s", "rate_rps", "user_rps", "sample_interval_s"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive number, got {value!r}")
    if args.sample_interval_s * 4 > args.duration_s:
        raise ValueError("--sample-interval-s must leave at least 4 samples in --duration-s")
    path_of, model_args = MODELS[args.model]
    if not (path_of() / "config.json").exists():
        raise ValueError(f"model {args.model} is not built at {path_of()} (run scripts/setup_cpu.sh)")
    return {
        "args": vars(args), "model_path": str(path_of()), "dp_size": 2,
        "users": max(1, math.ceil(args.rate_rps / args.user_rps)),
        "server_args": list(model_args) + shlex.split(args.extra_server_args),
        "bounds": analysis.SoakBounds(args.rss_growth_mib, args.latency_factor, args.min_rate_fraction,
                                      args.warmup_s).__dict__,
    }


def locust_command(config: dict, url: str, csv_prefix: pathlib.Path) -> list[str]:
    a = config["args"]
    users = config["users"]
    return [sys.executable, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless", "--host", url,
            "-u", str(users), "-r", str(users), "-t", f"{int(round(a['duration_s']))}s",
            "--csv", str(csv_prefix), "--csv-full-history", "--only-summary", "--stop-timeout", "30",
            "--react-user-rps", str(a["user_rps"]), "--react-workloads", str(a["workloads"]),
            "--react-examples", str(a["examples"]), "--react-output-lengths", a["output_lengths"],
            "--react-seed", str(a["seed"])]


def controller_sample(process, status: dict | None, t_s: float) -> analysis.ControllerSample | None:
    """The controller's RSS and CPU time (psutil) and what its status file says."""
    if status is None or "tree" not in status:
        return None
    mem, cpu = process.memory_info(), process.cpu_times()
    loads = status.get("loads") or []
    return analysis.ControllerSample(
        t_s=t_s, rss_mib=mem.rss / 2**20, cpu_s=cpu.user + cpu.system,
        tree_tokens=[int(x) for x in status["tree"]["tokens_held"]],
        kv_capacity_tokens=[int(ld["kv_capacity_tokens"]) for ld in loads],
        in_flight=int(status["in_flight"]), pages_indexed=int(status["tree"].get("pages_indexed", 0)))


def read_history(path: pathlib.Path, t0_wall: float) -> list[analysis.LatencySample]:
    """Locust's stats history rows of the `/generate` turns (full history: 10 s-window
    percentiles per request name), times made relative to the load's start."""
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if (row["Type"], row["Name"]) != REQUEST_ROW:
                continue
            total = int(row["Total Request Count"])
            rows.append(analysis.LatencySample(
                t_s=float(row["Timestamp"]) - t0_wall, users=int(row["User Count"]),
                rate_rps=float(row["Requests/s"]),
                # Before the first turn ends Locust writes 0 as the percentiles: no figure.
                p50_ms=_number(row["50%"]) if total else None, p95_ms=_number(row["95%"]) if total else None,
                total_requests=total, total_failures=int(row["Total Failure Count"])))
    return rows


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None  # "N/A": no turn finished in the window
    return value if math.isfinite(value) else None


def run(args: argparse.Namespace) -> int:
    import psutil

    try:
        config = resolve(args)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = ServerSpec(config["model_path"], dp_size=2, load_balance_method=args.policy,
                      max_total_tokens=args.max_total_tokens, extra_args=config["server_args"])
    series = analysis.SoakSeries(duration_s=args.duration_s, target_rate_rps=args.rate_rps, users=config["users"])
    print(f"soak: starting SGLang dp=2 ({args.model}, {args.policy}); waits for the server lock", flush=True)
    with start_server(spec, str(out / "server.log")) as server:
        pid = server.controller_pid()
        if pid is None:
            print("soak: the controller process was not found among the server's children", file=sys.stderr)
            return 1
        controller = psutil.Process(pid)
        cmd = locust_command(config, server.url, out / "locust")
        config["locust_command"] = cmd
        print(f"soak: {config['users']} Locust users x {args.user_rps:g} req/s for {args.duration_s:.0f} s; "
              f"controller pid {pid}", flush=True)
        t0, t0_wall = time.monotonic(), time.time()
        with open(out / "locust.log", "w") as log:
            locust = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            next_sample = t0
            while locust.poll() is None:
                sample = controller_sample(controller, server.status(), time.monotonic() - t0)
                if sample is not None:
                    series.controller.append(sample)
                    if len(series.controller) % max(1, int(60 / args.sample_interval_s)) == 0:
                        print(f"soak: {sample.t_s:5.0f} s  RSS {sample.rss_mib:.1f} MiB  mirror {sample.tree_tokens}"
                              f"  in-flight {sample.in_flight}", flush=True)
                next_sample += args.sample_interval_s
                try:
                    locust.wait(timeout=max(0.0, next_sample - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        drained = server.wait_status(lambda s: s.get("in_flight") == 0, timeout_s=args.drain_timeout_s)
        series.in_flight_after_drain = None if drained is None else drained.get("in_flight")
        final = controller_sample(controller, drained, time.monotonic() - t0)
        config["final_status"] = drained
        config["final_controller"] = None if final is None else final.__dict__
    history = out / "locust_stats_history.csv"
    if locust.returncode not in (0, 1) or not history.exists():
        # Locust exits 1 when some request failed: the checks say so. Anything else is a crash.
        print(f"soak: Locust exited with {locust.returncode}; see {out / 'locust.log'}", file=sys.stderr)
        return 1
    series.latency = read_history(history, t0_wall)
    checks = analysis.check(series, analysis.SoakBounds(**config["bounds"]))
    write_json_atomic(out / "soak.json", {"config": config, "series": analysis.to_dict(series),
                                           "checks": [c.__dict__ for c in checks]})
    text = analysis.plain_table(series, checks)
    (out / "table.txt").write_text(text)
    analysis.plot(series, out / "soak.png",
                  f"soak: SGLang dp=2 on CPU ({args.model}), {args.policy}, {config['users']} Locust ReAct users "
                  f"x {args.user_rps:g} req/s, {args.duration_s:.0f} s, KV {args.max_total_tokens} tokens/rank")
    print(text, end="")
    print(f"soak: wrote {out / 'soak.json'}, {out / 'table.txt'}, {out / 'soak.png'}")
    return 0 if all(c.passed for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_ext.bench soak")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

