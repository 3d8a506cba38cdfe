"""The live comparison: our policies and the SGLang Model Gateway on the same traces.

    python -m sglang_ext.bench live [--model tiny|smollm2] [--seeds 1 2 3]
        [--workloads react sharegpt toolbench shared-prefix]
        [--policies round_robin kv_cost prefix_length_aware | all]
        [--gateway-policies cache_aware round_robin] [--no-simulate]
        [--duration-s 30] [--out runs/live] [--resume]

Targets:
- `POLICY`: real SGLang dp=2 on CPU through our controller (`--load-balance-method POLICY`).
- `gateway:POLICY`: `sglang-router` (the SGLang Model Gateway) with its own POLICY in front
  of two plain dp=1 SGLang servers, one core each (`sglang_ext/gateway.py`).

Workloads (each a `python -m traces generate` trace, one per seed, counted in the
model's tokens): ReAct agents with 1- or 300-token answers, ShareGPT multi-turn chats
(real prompts and reply lengths), toolbench hot prefixes (Zipf), and a few long shared
prefixes with short questions. Without `--model`, the first three run on the tiny model
and shared-prefix on SmolLM2 (where a real model's prefill makes cache hits matter);
`--model M` runs every workload on M.

Order: for each seed, each target gets one fresh deployment per model, and that
deployment replays the seed's workloads one after the other, its radix caches flushed
(and our mirror seen empty) between them. A seed's targets run back to back, so they
share the host's conditions of the moment; ratios are taken within a seed.

Then, unless `--no-simulate`, every live run of our controller is replayed in the
cluster simulator (`traces replay --simulate`) with the calibrated CPU cost model of its
model; a gateway run is simulated with our re-implementation of its policy.

Output (`--out`): `runs/<seed>_<target>_<model>/<workload>/` per live run (requests.csv,
summary.json, config.json) with the deployment's logs beside it, `sim/...` likewise,
`traces/`, `results.json` (config, one row per run; rewritten after every run, so an
interrupted benchmark keeps what finished and `--resume` skips it), `report.md` and
PNG plots (see `live_report`).

Exit codes: 0 every run served every request, 1 some run failed, 2 bad options.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from sglang_ext.bench import live_report as report
from sglang_ext.bench.live_common import Progress, generate_trace, get, write_json_atomic
from sglang_ext.models import smollm2_path, tiny_path

GATEWAY_PREFIX = "gateway:"


@dataclass(frozen=True)
class Model:
    path: pathlib.Path
    max_total_tokens: int                 # KV pool per rank (per server for the gateway)
    server_args: tuple[str, ...]
    sim_cost_model: str                   # sglang_ext/core/cost_models/<name>.json, fitted on this host


# SmolLM2's checkpoint is bf16, which CPUs without bf16 instructions emulate several times
# slower than fp32 (sglang_ext/cpu_host.py): served in fp32.
MODELS = {
    "tiny": Model(tiny_path(), 65536, (), "cpu-tiny-llama"),
    "smollm2": Model(smollm2_path(), 65536, ("--dtype", "float32"), "cpu-smollm2-135m"),
}


@dataclass(frozen=True)
class Workload:
    kind: str                      # `python -m traces generate KIND`
    model: str                     # default model
    options: tuple[str, ...]       # generator options besides --seed, --tokenizer, --out
    timed: bool = True             # takes --duration-s (prefix-groups ends by its request count)
    about: str = ""


# Sized for two ranks sharing two cores with the client: a few requests in flight per rank.
WORKLOADS = {
    "react": Workload("react", "tiny", ("--rate-rps", "2", "--output-lengths", "1:0.5,300:0.5",
                                         "--max-new-tokens", "512", "--workloads", "4", "--examples", "4"),
                      about="ReAct agents, 4 workloads x 4 examples, answers of 1 or 300 tokens, 2 req/s"),
    "sharegpt": Workload("sharegpt", "tiny", ("--rate-rps", "2", "--max-turns", "3", "--max-new-tokens", "256",
                                               "--max-prompt-tokens", "2048"),
                         about="ShareGPT chats, up to 3 turns, real replies up to 256 tokens, 2 req/s"),
    "toolbench": Workload("toolbench", "tiny", ("--rate-rps", "3", "--tools", "40", "--output-lengths",
                                                 "16:0.5,128:0.5", "--max-new-tokens", "256"),
                          about="40 tool prefixes, Zipf 1.1 popularity, 16- or 128-token replies, 3 req/s"),
    "shared-prefix": Workload("prefix-groups", "smollm2", ("--groups", "4", "--prompts-per-group", "6",
                                                            "--prefix-tokens", "512", "--question-tokens", "32",
                                                            "--output-tokens", "16", "--max-new-tokens", "16",
                                                            "--rate-rps", "0.5"),
                              timed=False, about="4 groups x 6 prompts, 512-token prefix + 32, 16 out, 0.5 req/s"),
}
DEFAULT_POLICIES = ["round_robin", "kv_cost", "prefix_length_aware"]   # ours; cache_aware is the gateway's own below
DEFAULT_GATEWAY_POLICIES = ["cache_aware", "round_robin"]


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = _Formatter
    parser.add_argument("--model", choices=list(MODELS), default=None,
                        help="the model of every workload; unset: each workload's own (tiny, shared-prefix on smollm2)")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--policies", nargs="*", default=DEFAULT_POLICIES,
                        help="our controller's policies ('all' = every registered one; none = gateway only)")
    parser.add_argument("--gateway-policies", nargs="*", default=DEFAULT_GATEWAY_POLICIES,
                        help="sglang-router policies in front of two dp=1 servers (none = skip the gateway)")
    parser.add_argument("--duration-s", type=float, default=30.0, help="seconds of arrivals per timed workload")
    parser.add_argument("--max-requests", type=int, default=None, help="replay only the first N requests of each trace")
    parser.add_argument("--max-total-tokens", type=int, default=None, help="KV pool per rank; unset: the model's")
    parser.add_argument("--no-simulate", action="store_true", help="skip the simulator rows")
    parser.add_argument("--max-concurrency", type=int, default=128, help="replay: requests in flight at most")
    parser.add_argument("--out", default="runs/live")
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.json")


def targets_of(args: argparse.Namespace) -> list[str]:
    from sglang_ext.core.policies import policy_names

    ours = policy_names() if args.policies == ["all"] else list(args.policies)
    unknown = [p for p in ours if p not in policy_names()]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; valid: {', '.join(policy_names())} or all")
    targets = ours + [GATEWAY_PREFIX + p for p in args.gateway_policies]
    if not targets:
        raise ValueError("nothing to run: give --policies or --gateway-policies")
    if len(set(targets)) != len(targets) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError("--policies, --gateway-policies and --seeds must not repeat")
    return targets


def resolve(args: argparse.Namespace) -> dict:
    """The config every run follows, checked before any server starts (ValueError)."""
    targets = targets_of(args)
    from sglang_ext.gateway import POLICIES as GATEWAY_POLICIES

    bad = [p for p in args.gateway_policies if p not in GATEWAY_POLICIES]
    if bad:
        raise ValueError(f"unknown gateway policy {bad[0]!r}; valid: {', '.join(GATEWAY_POLICIES)}")
    if args.gateway_policies and importlib.util.find_spec("sglang_router") is None:
        raise ValueError("--gateway-policies needs sglang-router (scripts/setup_cpu.sh installs it); "
                         "pass --gateway-policies with no value to skip the gateway")
    if not args.duration_s > 0:
        raise ValueError("--duration-s must be > 0")
    workloads = {}
    for name in args.workloads:
        w = WORKLOADS[name]
        model = args.model or w.model
        options = list(w.options) + (["--duration-s", str(args.duration_s)] if w.timed else [])
        workloads[name] = {"kind": w.kind, "model": model, "options": options, "about": w.about}
    models = {}
    for name in dict.fromkeys(w["model"] for w in workloads.values()):
        m = MODELS[name]
        if not (m.path / "config.json").exists():
            raise ValueError(f"model {name} is not built at {m.path} (run scripts/setup_cpu.sh)")
        models[name] = {"path": str(m.path), "max_total_tokens": args.max_total_tokens or m.max_total_tokens,
                        "server_args": list(m.server_args), "sim_cost_model": m.sim_cost_model}
    return {"targets": targets, "seeds": list(args.seeds), "workloads": workloads, "models": models,
            "max_requests": args.max_requests, "max_concurrency": args.max_concurrency,
            "simulate": not args.no_simulate, "dp_size": 2}


# ------------------------------------------------------------------ deployments

class Deployment:
    """What a live run needs from either kind of deployment."""

    url: str
    describe: dict

    def flush(self) -> None:
        """Empty every radix cache (and for ours, see the mirror empty); RuntimeError if not."""
        raise NotImplementedError

    def counters(self) -> dict:
        """Cumulative per-deployment counters, subtracted around each workload."""
        raise NotImplementedError


def _post(url: str) -> None:
    req = urllib.request.Request(url, method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=60) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} answered HTTP {r.status}")


def _server_info(url: str) -> dict:
    """The settings the simulator copies (`cluster.calibrate.SERVER_KEYS`)."""
    from cluster.calibrate import server_info

    return server_info(url)


class OurDeployment(Deployment):
    def __init__(self, server):
        self.server = server
        self.url = server.url
        self.describe = {"command": server.command(), "server_info": _server_info(server.url)}

    def flush(self) -> None:
        _post(self.url + "/flush_cache")
        # SGLang's reset publishes AllBlocksCleared per rank; the mirror must follow it,
        # or the next workload would start with a stale view.
        status = self.server.wait_status(
            lambda s: s["in_flight"] == 0 and not any(s["tree"]["tokens_held"]), timeout_s=30)
        if not status or status["in_flight"] or any(status["tree"]["tokens_held"]):
            raise RuntimeError("after /flush_cache the controller's mirror still holds tokens "
                               f"({None if not status else status['tree']['tokens_held']})")

    def counters(self) -> dict:
        status = self.server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=30) or {}
        return {"dispatched_by_worker": status.get("dispatched_by_worker"),
                "decision_time": status.get("decision_time"), "in_flight": status.get("in_flight")}


class GatewayDeployment(Deployment):
    def __init__(self, gateway):
        self.gateway = gateway
        self.url = gateway.url
        self.describe = {"commands": gateway.command_lines, "worker_urls": gateway.worker_urls,
                         "server_info": _server_info(gateway.worker_urls[0])}

    def flush(self) -> None:
        for url in self.gateway.worker_urls:
            _post(url + "/flush_cache")

    def counters(self) -> dict:
        return {"worker_stats": self.gateway.worker_stats()}


@contextlib.contextmanager
def deploy(target: str, model: dict, log_dir: pathlib.Path) -> Iterator[Deployment]:
    log_dir.mkdir(parents=True, exist_ok=True)
    if target.startswith(GATEWAY_PREFIX):
        from sglang_ext.gateway import GatewaySpec, start_gateway

        spec = GatewaySpec(model["path"], policy=target[len(GATEWAY_PREFIX):], workers=2,
                           max_total_tokens=model["max_total_tokens"], server_args=list(model["server_args"]))
        with start_gateway(spec, log_dir) as gateway:
            yield GatewayDeployment(gateway)
    else:
        from sglang_ext.server import ServerSpec, start_server

        spec = ServerSpec(model["path"], dp_size=2, load_balance_method=target,
                          max_total_tokens=model["max_total_tokens"], extra_args=list(model["server_args"]))
        with start_server(spec, str(log_dir / "server.log")) as server:
            yield OurDeployment(server)


# ------------------------------------------------------------------ one run

def make_trace(out: pathlib.Path, workload: str, seed: int, config: dict) -> pathlib.Path:
    w = config["workloads"][workload]
    path = out / "traces" / f"{workload}_{w['model']}_seed{seed}.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    options = ["--seed", str(seed), "--tokenizer", config["models"][w["model"]]["path"], *w["options"]]
    return generate_trace(path, w["kind"], options)


def _per_worker_delta(before: dict, after: dict) -> dict[str, int] | None:
    """Requests per worker during one workload, from the deployment's own counters."""
    if "dispatched_by_worker" in after and after["dispatched_by_worker"] is not None:
        b = before.get("dispatched_by_worker") or [0] * len(after["dispatched_by_worker"])
        return {str(i): a - x for i, (a, x) in enumerate(zip(after["dispatched_by_worker"], b))}
    if after.get("worker_stats"):
        b = before.get("worker_stats") or {}
        return {str(i): s["requests"] - (b.get(i) or {}).get("requests", 0) for i, s in after["worker_stats"].items()}
    return None


def _imbalance(per_worker: dict[str, int] | None) -> float | None:
    if not per_worker or not sum(per_worker.values()):
        return None
    counts = list(per_worker.values())
    return max(counts) / (sum(counts) / len(counts))


def summary_row(s: dict) -> dict:
    """The figures of one replay summary (live or simulated) that the report shows."""
    return {
        "requests": s["requests"], "succeeded": s["succeeded"], "failed": s["failed"],
        **{f"e2e_{q}_s": get(s, "e2e_s", q, default=None) for q in ("mean", "p50", "p90", "p99")},
        **{f"ttft_{q}_s": get(s, "ttft_s", q, default=None) for q in ("mean", "p90", "p99")},
        **{f"norm_latency_{q}": get(s, "norm_latency_s_per_token", q, default=None) for q in ("mean", "p99")},
        "prefix_hit_rate": s.get("prefix_hit_rate"),
    }


def live_run(deployment: Deployment, trace: pathlib.Path, run_dir: pathlib.Path, config: dict) -> dict:
    from traces.format import read_trace
    from traces.replay import ReplayConfig, run

    from sglang_ext.core.decision_times import delta

    before = deployment.counters()
    cfg = ReplayConfig(trace=str(trace), url=deployment.url, out_dir=str(run_dir),
                       max_concurrency=config["max_concurrency"], max_requests=config["max_requests"], progress=False)
    summary = run(read_trace(str(trace)), cfg)
    after = deployment.counters()
    per_worker = _per_worker_delta(before, after)
    row = {**summary_row(summary), "requests_per_rank": per_worker, "rank_imbalance": _imbalance(per_worker)}
    if after.get("decision_time"):
        d = delta(before.get("decision_time"), after["decision_time"])
        row.update({"decisions": d.get("count"), "decision_mean_us": d["mean_us"], "decision_p99_us": d["p99_us"]})
    (run_dir / "deployment_counters.json").write_text(json.dumps({"before": before, "after": after}, indent=1))
    return row


def sim_policy(target: str) -> str:
    return target[len(GATEWAY_PREFIX):] if target.startswith(GATEWAY_PREFIX) else target


def request_path_ms(cost_file: dict, trace) -> float:
    """The time a request spends outside the engine (HTTP, tokenizer, IPC), as the
    calibration measured it: the cost file's `request_path`, overhead plus a per prompt
    token term at the trace's mean prompt length (`cluster/calibrate.py` charges the
    same as `--dispatch-delay-ms`). 1 ms, the simulator's default, without one."""
    path = cost_file.get("request_path")
    if not path or not trace.requests:
        return 1.0
    mean_prompt = sum(r.prompt_tokens for r in trace.requests) / len(trace.requests)
    return float(path["overhead_ms"]) + float(path["per_prompt_token_us"]) * mean_prompt / 1000.0


def sim_run(trace: pathlib.Path, target: str, seed: int, model: dict, run_dir: pathlib.Path, config: dict,
            server_info: dict) -> dict:
    """What `python -m traces replay TRACE --simulate` does, in this process (one import
    of SGLang's tree for all runs): two workers with the live server's KV pool, batch
    limits and page size, their step times from the CPU cost model fitted on this host
    (`python -m cluster calibrate`), and the router planning as the live one does."""
    from cluster.calibrate import server_sim_settings
    from cluster.config import SimConfig
    from traces.format import read_trace
    from traces.replay import ReplayConfig, simulate

    from sglang_ext.core.cost_model import load_cost_model
    from sglang_ext.cpu_host import CPU_COST_MODEL

    requests = read_trace(str(trace))
    sim = SimConfig(gpus=2, policy=sim_policy(target), cost_model=model["sim_cost_model"],
                    router_cost_model=CPU_COST_MODEL, seed=seed, force_lengths=True,
                    dispatch_delay_ms=request_path_ms(load_cost_model(model["sim_cost_model"]).extra, requests),
                    **server_sim_settings(server_info))
    cfg = ReplayConfig(trace=str(trace), out_dir=str(run_dir), max_requests=config["max_requests"], progress=False)
    summary = simulate(requests, cfg, sim)
    per_worker = {k: v["requests"] for k, v in (summary.get("per_worker") or {}).items()}
    return {**summary_row(summary), "requests_per_rank": per_worker, "rank_imbalance": _imbalance(per_worker)}


# ------------------------------------------------------------------ the plan

def _key(row: dict) -> tuple:
    return (row["side"], row["seed"], row["target"], row["workload"])


def _previous_rows(path: pathlib.Path, config: dict) -> list[dict]:
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    keys = ("workloads", "models", "max_requests", "dp_size")
    if any(old.get("config", {}).get(k) != config[k] for k in keys):
        raise ValueError(f"{path} was made with other workloads or models: use another --out, or drop --resume")
    # Runs that failed, or lost requests, are run again.
    return [r for r in old.get("rows", []) if r.get("error") is None and not r.get("failed")]


def _end_line(r: dict) -> str:
    if r.get("error"):
        return f"FAILED: {r['error'][:200]}"
    fmt = lambda v, f: "-" if v is None else format(v, f)   # noqa: E731
    return (f"{r['succeeded']}/{r['requests']} ok, e2e mean {fmt(r['e2e_mean_s'], '.2f')} s, p99 "
            f"{fmt(r['e2e_p99_s'], '.2f')} s, hit rate {fmt(r['prefix_hit_rate'], '.2f')}, "
            f"per rank {r.get('requests_per_rank')}")


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve(args)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = out / "results.json"
        rows = _previous_rows(results, config) if args.resume else []
    except (ValueError, ImportError) as err:
        print(f"live: error: {err}", file=sys.stderr)
        return 2
    done = {_key(r) for r in rows}
    workloads_of = {m: [w for w, c in config["workloads"].items() if c["model"] == m] for m in config["models"]}
    # One deployment per (seed, model, target), replaying that model's workloads in turn.
    plan = [(seed, model, target) for seed in config["seeds"] for model in config["models"]
            for target in config["targets"]]
    todo = [(s, m, t) for s, m, t in plan if any(("live", s, t, w) not in done for w in workloads_of[m])]
    progress = Progress("live", len(todo))
    if len(todo) < len(plan):
        progress.line(f"resuming: {len(plan) - len(todo)} of {len(plan)} deployments already in {results}")

    def save() -> None:
        write_json_atomic(results, {"config": config, "rows": rows})

    try:
        for i, (seed, model, target) in enumerate(todo, start=1):
            names = [w for w in workloads_of[model] if ("live", seed, target, w) not in done]
            traces = {w: make_trace(out, w, seed, config) for w in names}
            tag = f"seed{seed}_{target.replace(':', '-')}_{model}"
            progress.line(f"({i}/{len(todo)}) seed {seed} {target} on {model}: starting for {', '.join(names)}")
            started = time.perf_counter()
            base = {"side": "live", "seed": seed, "target": target, "model": model}
            try:
                with deploy(target, config["models"][model], out / "runs" / tag) as deployment:
                    progress.line(f"  up in {time.perf_counter() - started:.0f} s")
                    for j, w in enumerate(names):
                        if j:
                            deployment.flush()
                        run_dir = out / "runs" / tag / w
                        t0 = time.perf_counter()
                        row = {**base, "workload": w, "run_dir": str(run_dir), **live_run(deployment, traces[w],
                                                                                          run_dir, config)}
                        row.update({"elapsed_s": time.perf_counter() - t0, "error": None,
                                    "deployment": deployment.describe})
                        rows.append(row)
                        save()
                        progress.line(f"  {w}: {_end_line(row)}")
            except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as err:
                text = " ".join(str(err).split())
                for w in names:
                    if ("live", seed, target, w) not in {_key(r) for r in rows}:
                        rows.append({**base, "workload": w, "error": text, "run_dir": str(out / "runs" / tag / w)})
                save()
                progress.line(f"  FAILED: {text[:300]}")
            if config["simulate"]:
                for w in names:
                    live = next((r for r in rows if _key(r) == ("live", seed, target, w)), None)
                    if live is None or live.get("error"):
                        continue
                    sim_dir = out / "sim" / tag / w
                    srow = {"side": "sim", "seed": seed, "target": target, "model": model, "workload": w,
                            "run_dir": str(sim_dir)}
                    try:
                        srow.update({**sim_run(traces[w], target, seed, config["models"][model], sim_dir, config,
                                               live["deployment"]["server_info"]), "error": None})
                    except (RuntimeError, OSError, ValueError) as err:
                        srow["error"] = " ".join(str(err).split())
                    rows.append(srow)
                    save()
            progress.advance()
    except KeyboardInterrupt:
        progress.close()
        print(f"live: interrupted; finished runs are in {results} (rerun with --resume)", file=sys.stderr)
        return 1
    progress.close()
    save()
    paths = report.write_all(rows, config, out)
    print(f"live: wrote {results}, " + ", ".join(str(p) for p in paths))
    bad = [r for r in rows if r["side"] == "live" and (r.get("error") or r.get("failed"))]
    for r in bad:
        print(f"live: seed {r['seed']} {r['target']} {r['workload']} failed "
              f"({r.get('error') or str(r['failed']) + ' requests'}); see {r['run_dir']}", file=sys.stderr)
    return 1 if bad else 0
