"""`python -m cluster calibrate`: fit the CPU cost model from real SGLang on this host,
then hold the simulator against live runs of a held-out trace.

Steps (one real server at a time, through `sglang_ext.server.start_server`'s lock; each
started after `calibration.hostload.wait_for_quiet`):

1. dp=1 server: probes on its one rank (`calibration/probes.py`) -> the "dp1" fit.
2. dp=2 server under the first policy: probes on rank 0 alone, rank 1 alone, then both
   at once -> the "dp2" fit (all three together: a dp=2 replay has ranks sometimes alone,
   sometimes both busy, on 2 cores that the client and SGLang's other processes share).
   Its cache is flushed, then the held-out trace is replayed live through our
   controller. The dp2 fit is written as the cost-model file.
3. For each further policy, a fresh dp=2 server started with `--cost-model FILE` (the
   fit), the same trace replayed live.
4. Each live replay is replayed in the simulator (`traces.replay.simulate`) with the
   fitted file as the workers' step times, the same policy and router cost model, and
   the live server's KV capacity, chunked-prefill size, max prefill tokens, page size,
   schedule policy and max running requests (read from its `/server_info`); the fit's
   request-path terms become `--dispatch-delay-ms`.
5. `calibration.json`, `table.txt`, PNGs; `compare.py` gives PASS/MISS per target.

The held-out trace is `prefix-groups` with its own seed and shape (none of the probes'
random-token prompts), counted in the served model's tokens.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shlex
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import numpy as np

from cluster.calibration import compare as cmp
from cluster.calibration.fit import Fit, cost_model_file, fit_step_model
from cluster.calibration.hostload import LoadWait, wait_for_quiet
from cluster.calibration.probes import DecodeSample, PrefillSample, run_probes

MODELS = ("tiny", "smollm2")
# Cost-model file names in sglang_ext/core/cost_models/ that `--install` writes.
INSTALL_NAMES = {"tiny": "cpu-tiny-llama", "smollm2": "cpu-smollm2-135m"}


def _f(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass(frozen=True)
class CalibrateConfig:
    model: str = _f("tiny", "model to serve: tiny (models/tiny-llama) or smollm2 (models/smollm2-135m, "
                    "served with --dtype float32)", choices=MODELS)
    seed: int = _f(7, "one seed: probe prompts (spawned per probe group) and the held-out trace")
    policies: tuple[str, ...] = _f(("round_robin", "prefix_length_aware"), "policies replayed live and "
                                   "simulated; the first one's server also runs the dp=2 probes")
    dp1: bool = _f(True, "also probe a dp=1 server (its fit is reported, not installed)")
    max_total_tokens: int = _f(65536, "--max-total-tokens of every server (KV pool per rank)")
    prefill_lengths: tuple[int, ...] = _f((16, 256, 1024, 2048, 3072), "prefill probe prompt lengths "
                                          "(tokens; each below the server's chunked-prefill size)")
    decode_batches: tuple[int, ...] = _f((1, 2, 4, 8, 16), "decode probe batch sizes")
    decode_prompt_tokens: int = _f(32, "prompt length of each decode probe request")
    decode_output_tokens: int = _f(48, "output tokens of each decode probe request (ignore_eos)")
    probe_repeats: int = _f(3, "each probe shape this many times; the fit takes the median")
    groups: int = _f(4, "held-out trace: prefix groups")
    prompts_per_group: int = _f(8, "held-out trace: prompts per group")
    prefix_tokens: int = _f(768, "held-out trace: shared prefix tokens per group")
    question_tokens: int = _f(48, "held-out trace: question tokens per prompt")
    output_tokens: int = _f(24, "held-out trace: output tokens per request (forced, = max_new_tokens)")
    rate_rps: float = _f(4.0, "held-out trace: Poisson arrival rate")
    load_threshold: float = _f(0.8, "wait before each live measurement until the 1-minute load average "
                               "is below this")
    load_poll_s: float = _f(10.0, "how often to read the load average while waiting")
    max_load_wait_s: float = _f(900.0, "then measure anyway after this long")
    startup_timeout_s: float = _f(420.0, "a server's start-up limit")

    def check(self) -> None:
        from sglang_ext.core.policies import policy_names

        if self.model not in MODELS:
            raise ValueError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        if not self.policies:
            raise ValueError("--policies needs at least one policy")
        unknown = [p for p in self.policies if p not in policy_names()]
        if unknown:
            raise ValueError(f"unknown policy {unknown[0]!r}; valid: {', '.join(policy_names())}")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError("--policies must not repeat")
        if len(set(self.prefill_lengths)) < 2 or min(self.prefill_lengths) < 1:
            raise ValueError("--prefill-lengths needs two distinct lengths >= 1")
        if len(set(self.decode_batches)) < 2 or min(self.decode_batches) < 1:
            raise ValueError("--decode-batches needs two distinct batch sizes >= 1")
        if self.decode_output_tokens < 8:
            raise ValueError("--decode-output-tokens must be >= 8 (the decode window needs tokens)")
        for name in ("decode_prompt_tokens", "probe_repeats", "groups", "prompts_per_group", "prefix_tokens",
                     "question_tokens", "output_tokens", "max_total_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if not self.rate_rps > 0:
            raise ValueError("--rate-rps must be > 0")
        LoadWait(self.load_threshold, self.load_poll_s, self.max_load_wait_s).check()

    @property
    def load_wait(self) -> LoadWait:
        return LoadWait(self.load_threshold, self.load_poll_s, self.max_load_wait_s)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _say(text: str) -> None:
    print(f"calibrate: {text}", file=sys.stderr, flush=True)


def model_setup(name: str) -> tuple[pathlib.Path, list[str]]:
    from sglang_ext.models import smollm2_path, tiny_path

    path = tiny_path() if name == "tiny" else smollm2_path()
    if not (path / "config.json").exists():
        raise ValueError(f"model {name} is not built at {path} (run scripts/setup_cpu.sh)")
    # SmolLM2's checkpoint is bf16, emulated several times slower than fp32 on CPUs
    # without bf16 instructions (sglang_ext/cpu_host.py): serve it in fp32.
    return path, (["--dtype", "float32"] if name == "smollm2" else [])


SERVER_KEYS = ("max_total_num_tokens", "chunked_prefill_size", "max_prefill_tokens", "page_size", "schedule_policy",
               "decode_log_interval", "disable_overlap_schedule", "effective_max_running_requests_per_dp", "dtype",
               "dp_size")


def server_info(url: str) -> dict:
    with urllib.request.urlopen(url + "/server_info", timeout=30) as r:
        info = json.load(r)
    states = info.get("internal_states") or [{}]
    merged = {**info, **{k: v for k, v in states[0].items() if k not in info or info[k] is None}}
    return {k: merged.get(k) for k in SERVER_KEYS}


def _flush_cache(url: str) -> bool:
    req = urllib.request.Request(url + "/flush_cache", method="POST", data=b"")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status == 200
    except OSError:
        return False


def server_sim_settings(info: dict) -> dict:
    """SimConfig fields that make a simulated worker the live server's (from `server_info`)."""
    running = info.get("effective_max_running_requests_per_dp")
    return dict(
        page_size=int(info["page_size"]), kv_capacity_tokens=int(info["max_total_num_tokens"]),
        chunked_prefill_tokens=int(info["chunked_prefill_size"]), max_prefill_tokens=int(info["max_prefill_tokens"]),
        max_running_requests=int(running) if running else None, schedule_policy=str(info["schedule_policy"]),
        decode_log_interval_steps=int(info["decode_log_interval"]))


def sim_config_for(policy: str, cost_model_path: str, info: dict, fit: Fit, mean_prompt_tokens: float,
                   context_length_tokens: int, seed: int):
    """The simulator's settings that make its workers the live server's."""
    from cluster.config import SimConfig

    return SimConfig(
        gpus=2, policy=policy, cost_model=cost_model_path, router_cost_model=cost_model_path, seed=seed,
        context_length_tokens=context_length_tokens, dispatch_delay_ms=fit.request_delay_ms(mean_prompt_tokens),
        force_lengths=True, **server_sim_settings(info))


def make_trace(cfg: CalibrateConfig, model_path: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    from traces.prefix_groups import PrefixGroupsConfig, generate
    from traces.format import write_trace

    pg = PrefixGroupsConfig(seed=cfg.seed, groups=cfg.groups, prompts_per_group=cfg.prompts_per_group,
                            prefix_tokens=cfg.prefix_tokens, question_tokens=cfg.question_tokens,
                            output_tokens=cfg.output_tokens, max_new_tokens=cfg.output_tokens, rate_rps=cfg.rate_rps,
                            tokenizer=str(model_path))
    pg.check()
    header, requests = generate(pg)
    path = out / "heldout_trace.jsonl"
    write_trace(path, header, requests)
    return path


def _probe_kw(cfg: CalibrateConfig, vocab_size: int, chunked: int) -> dict:
    lengths = [n for n in cfg.prefill_lengths if n <= chunked]
    if len(lengths) < 2:
        raise ValueError(f"fewer than two --prefill-lengths fit the server's chunked-prefill size {chunked}")
    return {"prefill_lengths": lengths, "decode_batches": list(cfg.decode_batches),
            "decode_prompt_tokens": cfg.decode_prompt_tokens, "decode_output_tokens": cfg.decode_output_tokens,
            "vocab_size": vocab_size, "repeats": cfg.probe_repeats}


def run_calibration(cfg: CalibrateConfig, out: pathlib.Path, install: bool = False) -> dict:
    """Everything above; returns the `calibration.json` payload (also written to `out`)."""
    from sglang_ext.server import ServerSpec, start_server
    from traces.format import read_trace
    from traces.replay import ReplayConfig, run as replay_live, simulate as replay_sim

    cfg.check()
    model_path, model_args = model_setup(cfg.model)
    model_config = json.loads((model_path / "config.json").read_text())
    vocab = int(model_config["vocab_size"])
    context = int(model_config.get("max_position_embeddings", 32768))
    out.mkdir(parents=True, exist_ok=True)
    # One seed: a child stream per probe group and per simulation (the trace uses it as is).
    children = np.random.SeedSequence(cfg.seed).spawn(4 + len(cfg.policies))
    seeds = iter(int(s.generate_state(1)[0]) for s in children)
    trace_path = make_trace(cfg, model_path, out)
    trace = read_trace(str(trace_path))
    mean_prompt = float(np.mean([len(r.input_ids or []) for r in trace.requests]))
    loads, probes, fits, servers, runs = [], {"prefill": [], "decode": []}, {}, {}, {}
    started = time.monotonic()

    def spec(dp: int, policy: str, extra: list[str]) -> ServerSpec:
        return ServerSpec(str(model_path), dp_size=dp, load_balance_method=policy,
                          max_total_tokens=cfg.max_total_tokens, extra_args=model_args + extra,
                          startup_timeout_s=cfg.startup_timeout_s)

    def keep(setting, p, d):
        probes["prefill"] += [dataclasses.asdict(x) for x in p]
        probes["decode"] += [dataclasses.asdict(x) for x in d]
        return p, d

    if cfg.dp1:
        loads.append(wait_for_quiet("dp1 probes", cfg.load_wait, say=_say).to_dict())
        _say(f"dp=1 server ({cfg.model}) for probes; load {loads[-1]['load_1m_at_start']}")
        with start_server(spec(1, "round_robin", []), str(out / "server_dp1.log")) as server:
            servers["dp1"] = server_info(server.url)
            kw = _probe_kw(cfg, vocab, int(servers["dp1"]["chunked_prefill_size"]))
            p, d = keep("dp1", *run_probes(server.url, "dp1", (None,), seed=next(seeds), **kw))
        fits["dp1"] = fit_step_model("dp1", p, d)
        _say(f"dp1 fit: {_fit_line(fits['dp1'])}")

    cost_path = out / f"{INSTALL_NAMES[cfg.model]}.json"
    dp2_p: list[PrefillSample] = []
    dp2_d: list[DecodeSample] = []
    for i, policy in enumerate(cfg.policies):
        label = f"dp2 {policy}" + (" + probes" if i == 0 else "")
        loads.append(wait_for_quiet(label, cfg.load_wait, say=_say).to_dict())
        extra = [] if i == 0 else ["--cost-model", str(cost_path.resolve())]
        _say(f"dp=2 server ({cfg.model}, {policy}); load {loads[-1]['load_1m_at_start']}")
        run_dir = out / f"live_{policy}"
        run_dir.mkdir(parents=True, exist_ok=True)
        with start_server(spec(2, policy, extra), str(run_dir / "server.log")) as server:
            info = server_info(server.url)
            servers[f"dp2_{policy}"] = info
            if i == 0:
                kw = _probe_kw(cfg, vocab, int(info["chunked_prefill_size"]))
                for setting, ranks in (("dp2-solo", (0,)), ("dp2-solo", (1,)), ("dp2-paired", (0, 1))):
                    p, d = keep(setting, *run_probes(server.url, setting, ranks, seed=next(seeds), **kw))
                    dp2_p += p
                    dp2_d += d
                fits["dp2"] = fit_step_model("dp2", dp2_p, dp2_d)
                for setting in ("dp2-solo", "dp2-paired"):
                    fits[setting] = fit_step_model(setting, [x for x in dp2_p if x.setting == setting],
                                                   [x for x in dp2_d if x.setting == setting])
                _say(f"dp2 fit: {_fit_line(fits['dp2'])}")
                _write_cost_model(cost_path, cfg, fits["dp2"], info)
                flushed = _flush_cache(server.url)
                servers[f"dp2_{policy}"]["flushed_after_probes"] = flushed
                loads.append(wait_for_quiet(f"held-out {policy}", cfg.load_wait, say=_say).to_dict())
            _say(f"held-out replay live ({policy}, {len(trace.requests)} requests)")
            live = replay_live(trace, ReplayConfig(trace=str(trace_path), url=server.url, out_dir=str(run_dir),
                                                   max_concurrency=256, progress=False))
        sim_dir = out / f"sim_{policy}"
        sim_cfg = sim_config_for(policy, str(cost_path.resolve()), info, fits["dp2"], mean_prompt, context,
                                 next(seeds))
        sim = replay_sim(trace, ReplayConfig(trace=str(trace_path), out_dir=str(sim_dir), progress=False), sim_cfg)
        rows = cmp.compare(live, sim, ranks=2)
        runs[policy] = {"live": _brief(live), "sim": _brief(sim), "sim_config": sim_cfg.to_dict(),
                        "rows": [r.to_dict() for r in rows]}
        _say("\n" + cmp.format_table(f"{cfg.model} {policy}: live vs simulated", rows))

    payload = {"config": cfg.to_dict(), "model_path": str(model_path), "trace": str(trace_path),
               "mean_prompt_tokens": mean_prompt, "host_load": loads, "servers": servers,
               "fits": {k: v.to_dict() for k, v in fits.items()}, "probes": probes, "runs": runs,
               "cost_model_file": str(cost_path), "wall_s": round(time.monotonic() - started, 1)}
    (out / "calibration.json").write_text(json.dumps(payload, indent=2) + "\n")
    (out / "table.txt").write_text(report_text(payload) + "\n")
    try:
        from cluster.calibration.plot import plot_all

        plot_all(payload, out)
    except ImportError as err:   # matplotlib missing: the JSON and table still stand
        _say(f"no plots ({err})")
    if install:
        from sglang_ext.core.cost_model import COST_MODEL_DIR

        target = COST_MODEL_DIR / cost_path.name
        target.write_text(cost_path.read_text())
        _say(f"installed {target}")
    return payload


def _brief(summary: dict) -> dict:
    keys = ("requests", "succeeded", "failed", "e2e_s", "ttft_s", "tpot_s", "prefix_hit_rate", "per_worker")
    return {k: summary.get(k) for k in keys}


def _fit_line(fit: Fit) -> str:
    d = fit.to_dict()
    return (f"b0 {d['step_base_us']:.0f} us, b1 {d['prefill_us_per_token']:.2f} us/token, b2 "
            f"{d['decode_us_per_request']:.1f} us/request, path {d['overhead_ms']:.1f} ms + "
            f"{d['per_prompt_token_us']:.2f} us/prompt token; rms rel residual prefill "
            f"{d['prefill_residuals']['rms_rel']:.3f}, decode {d['decode_residuals']['rms_rel']:.3f}")


def _write_cost_model(path: pathlib.Path, cfg: CalibrateConfig, fit: Fit, info: dict) -> None:
    model = ("tiny random Llama (hidden 64, 2 layers, vocab 1024; models/tiny-llama)" if cfg.model == "tiny"
             else "SmolLM2-135M-Instruct, float32 (--dtype float32)")
    today = time.strftime("%Y-%m-%d", time.gmtime())
    payload = cost_model_file(
        fit, name=INSTALL_NAMES[cfg.model], model=model,
        hardware="2-core x86_64 CPU without AMX (this project's hosts), one rank per core",
        engine="SGLang 0.5.23, torch_native attention, OMP_NUM_THREADS=1 per rank (dp=2)",
        source=(f"python -m cluster calibrate --model {cfg.model} ({today}): non-negative least squares on "
                f"live probes of real SGLang dp=2 on this host (rank 0 alone, rank 1 alone, both at once): "
                f"prefill time vs prompt length (max_new_tokens 1), decode step time vs batch size "
                f"(ignore_eos); see docs/results/calibration/"),
        kv_capacity_tokens=int(info["max_total_num_tokens"]),
        extra={"chunked_prefill_tokens": info.get("chunked_prefill_size"), "page_size": info.get("page_size")})
    path.write_text(json.dumps(payload, indent=2) + "\n")


def report_text(payload: dict) -> str:
    lines = [f"model {payload['config']['model']}, held-out trace {payload['trace']} "
             f"(mean prompt {payload['mean_prompt_tokens']:.0f} tokens)"]
    for name, fit in payload["fits"].items():
        lines.append(f"fit {name:10s} b0 {fit['step_base_us']:9.0f} us  b1 {fit['prefill_us_per_token']:8.2f} us/tok  "
                     f"b2 {fit['decode_us_per_request']:8.1f} us/req  path {fit['overhead_ms']:6.1f} ms + "
                     f"{fit['per_prompt_token_us']:6.2f} us/prompt tok  rms rel resid prefill "
                     f"{fit['prefill_residuals']['rms_rel']:.3f} decode {fit['decode_residuals']['rms_rel']:.3f}")
    for rec in payload["host_load"]:
        lines.append(f"load {rec['label']:28s} 1-min {rec['load_1m_first']:.2f} -> {rec['load_1m_at_start']:.2f} "
                     f"after {rec['waited_s']:.0f} s ({'quiet' if rec['quiet'] else 'BUSY: measured anyway'})")
    for policy, run in payload["runs"].items():
        rows = [cmp.Row(**{k: v for k, v in r.items() if k != "verdict"}, passed=r["verdict"] == "PASS")
                for r in run["rows"]]
        lines += ["", cmp.format_table(f"{payload['config']['model']} {policy}: live vs simulated", rows)]
    return "\n".join(lines)


def parse_list(text: str, kind=int) -> tuple:
    try:
        return tuple(kind(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"expected a comma-separated list of numbers, got {text!r}") from None


def config_from_args(args) -> CalibrateConfig:
    values = {}
    for f in dataclasses.fields(CalibrateConfig):
        value = getattr(args, f.name)
        if f.name == "policies":
            value = tuple(shlex.split(value.replace(",", " ")))
        elif f.name in ("prefill_lengths", "decode_batches"):
            value = parse_list(value)
        values[f.name] = value
    return CalibrateConfig(**values)
