"""Live regression benchmark: a few long shared prefixes, several short questions each.

    python -m sglang_ext.bench shared-prefix [--models smollm2 tiny] [--seeds 1 2 3]
        [--policies round_robin prefix_length_aware kv_cost cache_aware]
        [--extra-server-args="--cost-model FILE"] [--policy-args kv_cost="--flag VALUE"]
        [--out runs/shared_prefix] [--resume]

For each model and seed it generates a `prefix-groups` trace counted in that model's
tokens (defaults: 4 groups x 6 prompts, 512-token prefix per group, 32-token question
per prompt, 16 output tokens, Poisson arrivals at 0.5 requests/s, groups in random
order), then replays it once per policy, each on a fresh real SGLang dp=2 server. A
seed's policies run back to back, so that they share the host's conditions of the moment.

Output (`--out`): one folder per run under `runs/` (requests.csv, summary.json,
config.json, server.log), the traces under `traces/`, `results.json` (resolved config,
one row per run, the per-(model, policy) summary; rewritten after every run, so an
interrupted benchmark keeps what finished, and `--resume` skips those runs),
`table.txt` and `shared_prefix.png` (see `shared_prefix_report`).

Exit codes: 0 every run served every request, 1 some run failed, 2 bad options.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shlex
import sys
import time
from dataclasses import dataclass

from sglang_ext.bench import shared_prefix_report as report
from sglang_ext.bench.live_common import Progress, generate_trace, get, serve_and_replay, token_totals, write_json_atomic
from sglang_ext.models import smollm2_path, tiny_path
from sglang_ext.server import ServerSpec
from traces.prefix_groups import PrefixGroupsConfig


@dataclass(frozen=True)
class Model:
    path: pathlib.Path
    max_total_tokens: int             # KV pool per rank; the trace needs about G * (prefix + P * question)
    server_args: tuple[str, ...] = ()  # before --extra-server-args, which can override them


# 65536 as in live_lengths; SmolLM2 dp=2 with fp32 weights starts with it too (checked on
# a 2-core, 23 GB host). Its checkpoint is bf16, which CPUs without bf16 instructions
# emulate several times slower than fp32 (sglang_ext/cpu_host.py), hence --dtype float32.
MODELS = {
    "tiny": Model(tiny_path(), 65536),
    "smollm2": Model(smollm2_path(), 65536, ("--dtype", "float32")),
}
DEFAULT_POLICIES = ["round_robin", "prefix_length_aware", "kv_cost", "cache_aware"]
# Options that shape the trace; a resumed run must have been made with the same ones.
WORKLOAD_OPTIONS = ("groups", "prompts_per_group", "prefix_tokens", "question_tokens", "output_tokens", "rate_rps")


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = _Formatter
    d = PrefixGroupsConfig()
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["smollm2", "tiny"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--policies", nargs="+", default=DEFAULT_POLICIES, help="load-balance methods to compare")
    parser.add_argument("--groups", type=int, default=d.groups, help="prefix groups")
    parser.add_argument("--prompts-per-group", type=int, default=d.prompts_per_group)
    parser.add_argument("--prefix-tokens", type=int, default=d.prefix_tokens, help="shared prefix of each group")
    parser.add_argument("--question-tokens", type=int, default=d.question_tokens, help="each prompt's own question")
    parser.add_argument("--output-tokens", type=int, default=d.output_tokens, help="= max_new_tokens of every request")
    parser.add_argument("--rate-rps", type=float, default=d.rate_rps, help="Poisson arrival rate")
    parser.add_argument("--max-total-tokens", type=int, default=None,
                        help="KV pool per rank for every model; unset: "
                             + ", ".join(f"{k} {m.max_total_tokens}" for k, m in MODELS.items()))
    parser.add_argument("--max-concurrency", type=int, default=128, help="replay: requests in flight at most")
    parser.add_argument("--extra-server-args", default="",
                        help='flags for every server, one shell-quoted string: --extra-server-args="--cost-model F"')
    parser.add_argument("--policy-args", action="append", default=[], metavar='POLICY="ARGS"',
                        help="flags for one policy's servers only (repeatable)")
    parser.add_argument("--out", default="runs/shared_prefix")
    parser.add_argument("--resume", action="store_true", help="skip runs already in OUT/results.json")


def resolve(args: argparse.Namespace) -> dict:
    """The config every run follows, checked before any server starts (ValueError)."""
    from sglang_ext.core.policies import policy_names

    unknown = [p for p in args.policies if p not in policy_names()]
    if unknown:
        raise ValueError(f"unknown policy {unknown[0]!r}; valid: {', '.join(policy_names())}")
    if len(set(args.policies)) != len(args.policies) or len(set(args.seeds)) != len(args.seeds):
        raise ValueError("--policies and --seeds must not repeat")
    workload = {k: getattr(args, k) for k in WORKLOAD_OPTIONS}
    PrefixGroupsConfig(output_tokens=args.output_tokens, max_new_tokens=args.output_tokens,
                       **{k: v for k, v in workload.items() if k != "output_tokens"}).check()
    policy_args: dict[str, list[str]] = {}
    for item in args.policy_args:
        name, sep, flags = item.partition("=")
        if not sep or name not in args.policies:
            raise ValueError(f'--policy-args takes POLICY="ARGS" with POLICY one of --policies, got {item!r}')
        policy_args[name] = policy_args.get(name, []) + shlex.split(flags)
    models = {}
    for name in args.models:
        m = MODELS[name]
        if not (m.path / "config.json").exists():
            raise ValueError(f"model {name} is not built at {m.path} (run scripts/setup_cpu.sh)")
        models[name] = {"path": str(m.path), "max_total_tokens": args.max_total_tokens or m.max_total_tokens,
                        "server_args": list(m.server_args)}
    return {"args": vars(args), "workload": workload, "models": models, "dp_size": 2,
            "extra_server_args": shlex.split(args.extra_server_args), "policy_args": policy_args}


def _same_setup(a: dict, b: dict) -> bool:
    keys = ("workload", "dp_size", "extra_server_args", "policy_args")
    return all(a.get(k) == b.get(k) for k in keys) and all(
        b["models"].get(m) in (None, v) for m, v in a.get("models", {}).items())


def _previous_rows(path: pathlib.Path, config: dict) -> list[dict]:
    """Finished rows of an earlier run of the same setup (errored runs are run again)."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    if not _same_setup(old.get("config", {}), config):
        raise ValueError(f"{path} was made with other workload or server options: use another --out, or drop --resume")
    return [r for r in old.get("rows", []) if r.get("error") is None]


def make_trace(out: pathlib.Path, model: str, seed: int, config: dict) -> pathlib.Path:
    w = config["workload"]
    options = ["--seed", str(seed), "--tokenizer", config["models"][model]["path"], "--max-new-tokens",
               str(w["output_tokens"])]
    for key in WORKLOAD_OPTIONS:
        options += ["--" + key.replace("_", "-"), str(w[key])]
    (out / "traces").mkdir(parents=True, exist_ok=True)
    return generate_trace(out / "traces" / f"{model}_seed{seed}.jsonl", "prefix-groups", options)


def run_row(model: str, seed: int, policy: str, trace: pathlib.Path, run_dir: pathlib.Path, config: dict,
            max_concurrency: int) -> dict:
    m = config["models"][model]
    server_args = m["server_args"] + config["extra_server_args"] + config["policy_args"].get(policy, [])
    spec = ServerSpec(m["path"], dp_size=config["dp_size"], load_balance_method=policy,
                      max_total_tokens=m["max_total_tokens"], extra_args=server_args)
    base = {"model": model, "seed": seed, "policy": policy, "server_args": server_args, "run_dir": str(run_dir)}
    started = time.perf_counter()
    try:
        s = serve_and_replay(trace, spec, run_dir, max_concurrency)
    except (RuntimeError, TimeoutError, OSError) as err:   # server did not start, or went away
        return {**base, "elapsed_s": time.perf_counter() - started, "error": " ".join(str(err).split())}
    prompt_tokens, cached_tokens = token_totals(run_dir / "requests.csv")
    per_worker = get(s, "per_worker", default={}) or {}
    return {
        **base, "elapsed_s": time.perf_counter() - started, "error": None,
        "requests": s["requests"], "succeeded": s["succeeded"], "failed": s["failed"],
        **{f"e2e_{q}_s": get(s, "e2e_s", q, default=None) for q in ("mean", "p50", "p90", "p99")},
        "ttft_mean_s": get(s, "ttft_s", "mean", default=None), "ttft_p99_s": get(s, "ttft_s", "p99", default=None),
        "prefix_hit_rate": s.get("prefix_hit_rate"), "prompt_tokens": prompt_tokens, "cached_tokens": cached_tokens,
        "requests_per_rank": {rank: w["requests"] for rank, w in per_worker.items()},
        "busy_imbalance": s.get("worker_imbalance_busy_max_over_mean"),
        "dispatched_by_worker": get(s, "controller", "dispatched_by_worker", default=None),
    }


def _end_line(r: dict) -> str:
    if r["error"] is not None:
        return f"FAILED after {r['elapsed_s']:.0f} s: {r['error'][:200]}"
    fmt = lambda v, f: "-" if v is None else format(v, f)   # noqa: E731
    return (f"done in {r['elapsed_s']:.0f} s: {r['succeeded']}/{r['requests']} ok, e2e mean "
            f"{fmt(r['e2e_mean_s'], '.2f')} s, p99 {fmt(r['e2e_p99_s'], '.2f')} s, hit rate "
            f"{fmt(r['prefix_hit_rate'], '.2f')}, per rank {r['requests_per_rank']}")


def run(args: argparse.Namespace) -> int:
    try:
        config = resolve(args)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = out / "results.json"
        rows = _previous_rows(results, config) if args.resume else []
    except ValueError as err:
        print(f"shared-prefix: error: {err}", file=sys.stderr)
        return 2
    done = {(r["model"], r["seed"], r["policy"]) for r in rows}
    plan = [(m, s, p) for m in args.models for s in args.seeds for p in args.policies]
    todo = [key for key in plan if key not in done]
    progress = Progress("shared-prefix", len(todo))
    if len(todo) < len(plan):
        progress.line(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already in {results}")
    traces: dict[tuple[str, int], pathlib.Path] = {}
    try:
        for i, (model, seed, policy) in enumerate(todo, start=1):
            if (model, seed) not in traces:
                traces[model, seed] = make_trace(out, model, seed, config)
            progress.line(f"({i}/{len(todo)}) {model} seed {seed} {policy}: starting")
            row = run_row(model, seed, policy, traces[model, seed], out / "runs" / f"{model}_seed{seed}_{policy}",
                          config, args.max_concurrency)
            rows.append(row)
            write_json_atomic(results, {"config": config, "rows": rows, "summary": report.summarize(rows, config)})
            progress.line(f"({i}/{len(todo)}) {model} seed {seed} {policy}: {_end_line(row)}")
            progress.advance()
    except KeyboardInterrupt:
        progress.close()
        print(f"shared-prefix: interrupted; finished runs are in {results} (rerun with --resume)", file=sys.stderr)
        return 1
    progress.close()
    summary = report.summarize(rows, config)
    write_json_atomic(results, {"config": config, "rows": rows, "summary": summary})
    report.write_table(summary, out / "table.txt")
    report.plot(rows, summary, config, out / "shared_prefix.png")
    print(f"shared-prefix: wrote {results}, {out / 'table.txt'} and {out / 'shared_prefix.png'}")
    bad = [r for r in rows if r["error"] is not None or r["failed"]]
    for r in bad:
        print(f"shared-prefix: {r['model']} seed {r['seed']} {r['policy']} failed "
              f"({r['error'] or str(r['failed']) + ' requests'}); see {r['run_dir']}", file=sys.stderr)
    return 1 if bad else 0
