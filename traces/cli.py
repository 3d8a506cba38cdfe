"""`python -m traces generate {react,toolbench,sharegpt,prefix-groups} | predict | replay | stats`.

Exit codes: 0 ok, 2 bad input (options, trace files), 1 runtime failure (server
unreachable, failed requests). Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from traces.argparsing import HelpFormatter, OneLineErrorParser
from traces.arrivals import ArrivalConfig, parse_steps
from traces.config import CommonConfig
from traces.distributions import SAMPLERS
from traces.format import TraceError, read_trace, validate, write_trace

EXAMPLES = """examples:
  python -m traces generate react --out react.jsonl --rate-rps 8 --duration-s 60 \\
      --output-lengths 1:0.5,300:0.5 --max-new-tokens 512 --workloads 10 --examples 4 --seed 1
  python -m traces generate react --out bursty.jsonl --arrival gamma --cv 3 --rate-rps 16
  python -m traces generate react --out steps.jsonl --steps 2:30,8:30,16:30
  python -m traces generate toolbench --out tools.jsonl --tools 200 --zipf-exponent 1.1
  python -m traces generate sharegpt --out chat.jsonl --max-turns 3 --token-ids
  python -m traces generate prefix-groups --out groups.jsonl --groups 4 --prompts-per-group 6 \\
      --prefix-tokens 512 --question-tokens 32 --output-tokens 16 --rate-rps 0.5 --tokenizer models/smollm2-135m
  python -m traces predict chat.jsonl --out chat-predicted.jsonl --model length_model/artifacts
  python -m traces stats react.jsonl --out react-stats
  python -m traces replay react.jsonl --url http://127.0.0.1:30000 --out run1 --rate-scale 2
exit codes: 0 ok, 2 bad input, 1 runtime failure
"""


def _common_options(p: argparse.ArgumentParser, defaults: CommonConfig) -> None:
    g = p.add_argument_group("common workload options")
    g.add_argument("--out", required=True, help="trace file to write (JSONL)")
    g.add_argument("--seed", type=int, default=defaults.seed, help="the same seed gives a byte-identical file")
    g.add_argument("--arrival", choices=["poisson", "gamma"], default="poisson", help="arrival process")
    g.add_argument("--rate-rps", type=float, default=ArrivalConfig.rate_rps, help="requests per second")
    g.add_argument("--duration-s", type=float, default=ArrivalConfig.duration_s, help="trace length in seconds")
    g.add_argument("--cv", type=float, default=1.0, help="gamma: coefficient of variation of the gaps (burstiness)")
    g.add_argument("--steps", default=None, help="rate steps RATE_RPS:DURATION_S,... (replace --rate-rps/--duration-s)")
    g.add_argument("--output-lengths", default=defaults.output_lengths,
                   help="true output lengths as VALUE:WEIGHT,... e.g. 1:0.5,300:0.5"
                        + ("; unset: the real reply lengths" if defaults.output_lengths is None else ""))
    g.add_argument("--length-sampler", choices=SAMPLERS, default=defaults.length_sampler,
                   help="stratified: each value's count is its share of n (every value occurs); iid: independent draws")
    g.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="cap sent with each request")
    g.add_argument("--concurrent-episodes", type=int, default=defaults.concurrent_episodes,
                   help="sessions open at a time, arrivals spread over them")
    g.add_argument("--tokenizer", default=None, help="HF model folder for token counts (default: models/tiny-llama)")
    g.add_argument("--token-ids", action="store_true", help="also store prompt token ids (replay then sends ids)")


def _common_config(a: argparse.Namespace) -> CommonConfig:
    steps = parse_steps(a.steps) if a.steps else ()
    arrivals = ArrivalConfig(process=a.arrival, rate_rps=a.rate_rps, duration_s=a.duration_s, cv=a.cv, steps=steps)
    arrivals.check()
    if a.max_new_tokens < 1:
        raise ValueError("--max-new-tokens must be >= 1")
    return CommonConfig(seed=a.seed, arrivals=arrivals, output_lengths=a.output_lengths, length_sampler=a.length_sampler,
                        max_new_tokens=a.max_new_tokens, concurrent_episodes=a.concurrent_episodes,
                        tokenizer=a.tokenizer, token_ids=a.token_ids)


def _dataclass_options(p: argparse.ArgumentParser, cls) -> None:
    """One option per field of a flat config dataclass, its help from the field's metadata."""
    import dataclasses

    for f in dataclasses.fields(cls):
        kw = {"default": f.default, "help": f.metadata.get("help")}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        elif f.default is not None:
            kw["type"] = type(f.default)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kw)


def build_parser() -> argparse.ArgumentParser:
    from traces.prefix_groups import PrefixGroupsConfig
    from traces.react import ReactConfig
    from traces.sharegpt import ShareGPTConfig
    from traces.toolbench import ToolbenchConfig

    fmt = HelpFormatter
    parser = OneLineErrorParser(prog="python -m traces", description="Workload traces: generate, replay, stats.",
                     epilog=EXAMPLES, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)

    gen = sub.add_parser("generate", help="write a trace", epilog=EXAMPLES, formatter_class=fmt)
    kinds = gen.add_subparsers(dest="kind", required=True, parser_class=OneLineErrorParser)

    r = kinds.add_parser("react", help="ReAct agent episodes (FanOutQA questions)", epilog=EXAMPLES, formatter_class=fmt)
    _common_options(r, ReactConfig().common)
    r.add_argument("--workloads", type=int, default=ReactConfig.workloads, help="W shared prefixes")
    r.add_argument("--examples", type=int, default=ReactConfig.examples_per_workload, help="k in-context examples per workload")
    r.add_argument("--questions", choices=["dev", "test", "all"], default=ReactConfig.questions, help="FanOutQA split")
    r.add_argument("--max-turns", type=int, default=ReactConfig.max_turns, help="turns per episode at most")

    t = kinds.add_parser("toolbench", help="tool prefixes with Zipf popularity", epilog=EXAMPLES, formatter_class=fmt)
    _common_options(t, ToolbenchConfig().common)
    t.add_argument("--tools", type=int, default=ToolbenchConfig.tools, help="distinct tool prefixes")
    t.add_argument("--zipf-exponent", type=float, default=ToolbenchConfig.zipf_exponent, help="popularity skew")
    t.add_argument("--min-endpoints", type=int, default=ToolbenchConfig.min_endpoints)
    t.add_argument("--max-endpoints", type=int, default=ToolbenchConfig.max_endpoints)

    s = kinds.add_parser("sharegpt", help="real ShareGPT prompts and reply lengths", epilog=EXAMPLES, formatter_class=fmt)
    _common_options(s, ShareGPTConfig().common)
    s.add_argument("--max-turns", type=int, default=ShareGPTConfig.max_turns, help="user turns per conversation")
    s.add_argument("--max-prompt-tokens", type=int, default=ShareGPTConfig.max_prompt_tokens)
    s.add_argument("--scan-records", type=int, default=None, help="read only the first N records of the file")

    pg = kinds.add_parser("prefix-groups", help="G long shared prefixes x P short questions, exact token counts",
                          epilog=EXAMPLES, formatter_class=fmt)
    pg.add_argument("--out", required=True, help="trace file to write (JSONL)")
    _dataclass_options(pg, PrefixGroupsConfig)

    pr = sub.add_parser("predict", help="add the shipped length predictor's predicted_output_tokens to every request",
                        epilog=EXAMPLES, formatter_class=fmt)
    pr.add_argument("trace")
    pr.add_argument("--out", required=True, help="trace to write: the input plus predicted_output_tokens")
    pr.add_argument("--model", default=None, help="predictor folder (default: length_model/artifacts)")
    pr.add_argument("--batch-size", type=int, default=16, help="prompts per predict call (the live controller's largest micro-batch)")
    pr.add_argument("--no-cache", action="store_true", help="predict again even if TRACE.predictions-<key>.json exists")
    pr.add_argument("--no-progress", action="store_true")

    rp = sub.add_parser("replay", help="open-loop replay against SGLang /generate", epilog=EXAMPLES, formatter_class=fmt)
    rp.add_argument("trace")
    rp.add_argument("--url", default="http://127.0.0.1:30000", help="SGLang server (default: loopback)")
    rp.add_argument("--out", default="replay-out", help="folder for requests.csv, summary.json, config.json")
    rp.add_argument("--rate-scale", type=float, default=1.0, help="2 = twice the trace's rate")
    rp.add_argument("--max-concurrency", type=int, default=256, help="requests in flight at most")
    rp.add_argument("--force-lengths", action=argparse.BooleanOptionalAction, default=True,
                    help="ask for each request's true output length (ignore_eos)")
    rp.add_argument("--max-requests", type=int, default=None, help="replay only the first N requests")
    rp.add_argument("--max-duration-s", type=float, default=None, help="replay only requests due before this time")
    rp.add_argument("--request-timeout-s", type=float, default=600.0)
    rp.add_argument("--no-rid", action="store_true", help="do not send trace ids as SGLang rids")
    rp.add_argument("--no-progress", action="store_true")
    rp.add_argument("--skip-bad-lines", action="store_true", help="drop malformed request lines (each reported) instead of stopping")
    rp.add_argument("--simulate", action="store_true",
                    help="replay on the cluster simulator instead of --url (options below; same output files)")
    from cluster.cli import add_sim_options

    # --max-requests and --force-lengths are the replay's own (the simulator obeys them).
    add_sim_options(rp, exclude=("max_requests", "force_lengths"), title="simulator (with --simulate)")

    st = sub.add_parser("stats", help="length and prefix-sharing statistics, histograms", epilog=EXAMPLES, formatter_class=fmt)
    st.add_argument("trace")
    st.add_argument("--out", default=None, help="folder for stats.json, histograms.png, config.json")
    st.add_argument("--page-tokens", type=int, default=16, help="page size for prefix matching")
    st.add_argument("--tokenizer", default=None, help="for traces without token ids (default: the header's)")
    st.add_argument("--skip-bad-lines", action="store_true")
    return parser


def _generate(a: argparse.Namespace) -> int:
    import dataclasses

    from traces import prefix_groups, react, sharegpt, toolbench

    if a.kind == "prefix-groups":
        names = [f.name for f in dataclasses.fields(prefix_groups.PrefixGroupsConfig)]
        header, requests = prefix_groups.generate(prefix_groups.PrefixGroupsConfig(**{n: getattr(a, n) for n in names}))
        return _write(a.out, header, requests)
    common = _common_config(a)
    if a.kind == "react":
        cfg = react.ReactConfig(common, a.workloads, a.examples, a.questions, a.max_turns)
        header, requests = react.generate(cfg)
    elif a.kind == "toolbench":
        cfg = toolbench.ToolbenchConfig(common, a.tools, a.zipf_exponent, a.min_endpoints, a.max_endpoints)
        header, requests = toolbench.generate(cfg)
    else:
        cfg = sharegpt.ShareGPTConfig(common, a.max_turns, a.max_prompt_tokens, a.scan_records)
        header, requests = sharegpt.generate(cfg)
    return _write(a.out, header, requests)


def _write(path: str, header, requests) -> int:
    validate(requests)
    n = write_trace(path, header, requests)
    sessions = len({r.session for r in requests})
    groups = len({r.prefix_group for r in requests})
    print(f"traces: wrote {n} requests ({sessions} sessions, {groups} prefix groups) to {path}")
    return 0


def _load(path: str, skip_bad_lines: bool):
    trace = read_trace(path, strict=not skip_bad_lines)
    for message in trace.skipped_lines:
        print(f"traces: skipped {message}", file=sys.stderr)
    return trace


def _stats(a: argparse.Namespace) -> int:
    from traces.stats import StatsConfig, run

    trace = _load(a.trace, a.skip_bad_lines)
    stats = run(StatsConfig(a.trace, a.out, a.page_tokens, a.tokenizer), trace)
    print(json.dumps(stats, indent=2))
    if a.out:
        print(f"traces: wrote stats.json and histograms.png to {a.out}", file=sys.stderr)
    return 0


def _predict(a: argparse.Namespace) -> int:
    from traces.predict import PredictConfig, run

    result = run(PredictConfig(a.trace, a.out, a.model, a.batch_size, progress=not a.no_progress,
                               use_cache=not a.no_cache))
    how = f"cached in {result.cache_file}" if result.cached else f"predicted, cache {result.cache_file}"
    print(f"traces: wrote {result.requests} requests with predicted_output_tokens to {result.out} ({how})")
    return 0


def _replay(a: argparse.Namespace) -> int:
    from traces.replay import ReplayConfig, run

    cfg = ReplayConfig(trace=a.trace, url=a.url.rstrip("/"), out_dir=a.out, rate_scale=a.rate_scale,
                       max_concurrency=a.max_concurrency, force_lengths=a.force_lengths, max_requests=a.max_requests,
                       max_duration_s=a.max_duration_s, request_timeout_s=a.request_timeout_s,
                       send_rid=not a.no_rid, progress=not a.no_progress)
    cfg.check()
    if a.simulate:
        from cluster.cli import sim_config_from

        from cluster.config import resolve

        sim = sim_config_from(a)
        resolve(sim)   # option, cost-model and decision-time errors before the trace is read
    trace = _load(a.trace, a.skip_bad_lines)
    if a.simulate:
        from traces.replay import simulate

        summary = simulate(trace, cfg, sim)
    else:
        summary = run(trace, cfg)
    e2e, ttft = summary["e2e_s"], summary["ttft_s"]
    print(f"traces: {summary['succeeded']}/{summary['requests']} ok, ttft p50 {ttft['p50']} s, e2e p50 {e2e['p50']} s, "
          f"prefix hit rate {summary['prefix_hit_rate']}; wrote {a.out}/requests.csv and summary.json")
    if summary["failed"]:
        print(f"traces: {summary['failed']} of {summary['requests']} requests failed (see {a.out}/requests.csv)", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    where = f"traces {args.command}"
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "stats":
            return _stats(args)
        if args.command == "predict":
            return _predict(args)
        return _replay(args)
    except (TraceError, ValueError) as err:
        print(f"{where}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as err:
        print(f"{where}: failed: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 1
