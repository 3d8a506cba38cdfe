"""Does the length predictor delay the controller's dispatch of other requests?

    OMP_NUM_THREADS=1 python -m sglang_ext.bench predictor-gil [--rates-rps 16 64] [--duration-s 15] [--repeats 3]
        [--conditions off thread process] [--out runs/predictor_gil]

With `--length-source predicted` the controller predicts each request's decode length
(the shipped model, `length_model/artifacts`) off its event loop. In a thread of the
controller process, that work holds the GIL whenever it runs Python code (the model's
text cues, its word-piece tokenizer, the assembly of features), and the event loop, which
takes the GIL back after every blocking poll and socket call, can wait for it: CPython
forces a switch only after `sys.getswitchinterval()` (5 ms by default). This benchmark
measures that wait on the controller's real dispatch path.

Set-up, per run: our `PrefixAwareController` built on real ZeroMQ sockets
(`dispatch_harness.py`; the router, ledger, policy `prefix_length_aware`, the length
source and the event loop's `run_once` are the controller's own), in this process's
main thread. Two stand-in processes: a *tokenizer* that sends `TokenizedGenerateReqInput`
messages (ReAct prompts with their text, `input_ids` as `array('q')` as SGLang sends them)
at Poisson arrivals, stamping each send with `time.monotonic_ns()` (CLOCK_MONOTONIC, the
same clock in every process), and *schedulers* that stamp each request's arrival, report
its prefill 20 ms later and its finish after 5 ms per output token (so the ledger and
the report socket work as under load).

Run it as the launcher runs the controller on CPU, with `OMP_NUM_THREADS=1` (cores /
ranks on a 2-core host, `sglang_ext/cpu_host.py`): with the default pools the
predictor's idle OpenMP workers spin after every batch and take a core.

Conditions (each run a fresh controller; conditions interleaved within each repeat):

- `off`: `--length-source max_new_tokens`, no predictor;
- `thread`: predicted lengths, predictor on a thread of the controller process (the
  default before this benchmark), `--predict-wait-ms 0`: no request waits for its
  prediction, every request is predicted (the predictor is busy at the offered rate),
  and the latency measured is the event loop's own;
- `process`: the same with the predictor in a child process (`--predictor-host process`,
  the default), which runs at niceness +5; `process-nice0`: the same child at the
  controller's own priority;
- `thread-wait`, `process-wait`: the default `--predict-wait-ms 20`: requests wait for
  their predictions; dispatch latency then includes the prediction.

Measured per request: dispatch latency = scheduler arrival - tokenizer send (so it
includes two local IPC hops, equal in every condition); per decision: `Router.route`
wall time as the controller measures it. Output: `results.json` (config and one row per
run), `table.txt` (median over repeats of each run's p50/p99).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import pathlib
import statistics
import sys
import time

import numpy as np

CONDITIONS = {
    # name: (length source, predictor host, predict wait ms)
    "off": ("max_new_tokens", None, 0.0),
    "thread": ("predicted", "thread", 0.0),
    "process": ("predicted", "process", 0.0),
    "process-nice0": ("predicted", "process-nice0", 0.0),
    "thread-wait": ("predicted", "thread", 20.0),
    "process-wait": ("predicted", "process", 20.0),
}
PREFILL_REPORT_S = 0.020
DECODE_S_PER_TOKEN = 0.005
OUTPUT_LENGTHS = (4, 16, 64)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = _Formatter
    parser.add_argument("--rates-rps", type=float, nargs="+", default=[16.0, 64.0])
    parser.add_argument("--duration-s", type=float, default=15.0, help="sending time per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--conditions", nargs="+", choices=list(CONDITIONS), default=["off", "thread", "process"])
    parser.add_argument("--length-model", default=None, help="predictor folder (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="runs/predictor_gil")


# ------------------------------------------------------------------ stand-in processes

def _react_prompts(seed: int, count: int) -> list[str]:
    from traces.react import ReactConfig, episodes, workload_prefixes
    from traces.config import CommonConfig

    cfg = ReactConfig(CommonConfig(seed=seed), workloads=4, examples_per_workload=2, max_turns=4)
    rng = np.random.default_rng(seed)
    prefixes = workload_prefixes(cfg, rng)
    prompts: list[str] = []
    for episode in episodes(cfg, prefixes, rng):
        prompts += [t.prompt for t in episode.turns]
        if len(prompts) >= count:
            return prompts[:count]
    return prompts


def _tokenizer_process(conn) -> None:
    """The tokenizer manager's stand-in: per command, sends a Poisson stream of requests."""
    from array import array

    import zmq
    from sglang.srt.managers.io_struct import TokenizedGenerateReqInput, sock_send
    from sglang.srt.sampling.sampling_params import SamplingParams
    from tokenizers import Tokenizer

    from sglang_ext.models import tiny_path

    tokenizer = Tokenizer.from_file(str(tiny_path() / "tokenizer.json"))
    context = zmq.Context()
    conn.send("ready")
    while True:
        command = conn.recv()
        if command == "exit":
            return
        endpoint, rate, duration_s, seed = command
        rng = np.random.default_rng(seed)
        n = max(1, int(rate * duration_s))
        texts = _react_prompts(seed, n)
        ids = [array("q", tokenizer.encode(t).ids) for t in texts]
        arrivals = np.cumsum(rng.exponential(1.0 / rate, size=n))
        lengths = rng.choice(OUTPUT_LENGTHS, size=n)
        messages = [TokenizedGenerateReqInput(
            rid=f"r{i}", http_worker_ipc=None, input_text=texts[i % len(texts)], input_ids=ids[i % len(ids)],
            input_embeds=None, mm_inputs=None, token_type_ids=None,
            sampling_params=SamplingParams(max_new_tokens=int(lengths[i])), return_logprob=False,
            logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False, routed_dp_rank=None)
            for i in range(n)]
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 1000)
        push.bind(endpoint)
        conn.send(("prepared", n, float(np.mean([len(x) for x in ids]))))
        conn.recv()  # "go"
        sent = np.zeros(n, dtype=np.int64)
        t0 = time.monotonic() + 0.2
        for i in range(n):
            delay = t0 + arrivals[i] - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            sent[i] = time.monotonic_ns()
            sock_send(push, messages[i])
        push.close()
        conn.send(sent)


def _scheduler_process(conn) -> None:
    """The schedulers' stand-in: stamps arrivals, reports prefill and finish later."""
    import heapq

    import zmq
    from sglang.srt.managers.io_struct import sock_recv

    from sglang_ext import completions

    context = zmq.Context()
    conn.send("ready")
    while True:
        command = conn.recv()
        if command == "exit":
            return
        worker_endpoints, reports_endpoint, replies_endpoint = command
        pulls = []
        poller = zmq.Poller()
        for address in worker_endpoints:
            pull = context.socket(zmq.PULL)
            pull.bind(address)
            poller.register(pull, zmq.POLLIN)
            pulls.append(pull)
        replies = context.socket(zmq.PULL)
        replies.bind(replies_endpoint)
        poller.register(replies, zmq.POLLIN)
        reports = context.socket(zmq.PUSH)
        reports.connect(reports_endpoint)
        arrived: dict[str, tuple[int, int]] = {}
        due: list = []  # (time_s, kind, rid, worker, output_tokens)
        error_replies = 0
        conn.send("bound")
        while not conn.poll():
            timeout_ms = 50 if not due else max(0, min(50, int((due[0][0] - time.monotonic()) * 1000)))
            ready = dict(poller.poll(timeout_ms))
            now_ns = time.monotonic_ns()
            for worker, pull in enumerate(pulls):
                if pull in ready:
                    while True:
                        try:
                            message = sock_recv(pull, flags=zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        arrived[message.rid] = (now_ns, worker)
                        now_s = now_ns / 1e9
                        out = int(message.sampling_params.max_new_tokens)
                        heapq.heappush(due, (now_s + PREFILL_REPORT_S, completions.PREFILL_DONE, message.rid, worker, 0))
                        heapq.heappush(due, (now_s + PREFILL_REPORT_S + out * DECODE_S_PER_TOKEN,
                                             completions.FINISHED, message.rid, worker, out))
            if replies in ready:
                while True:
                    try:
                        replies.recv(zmq.NOBLOCK)
                        error_replies += 1
                    except zmq.Again:
                        break
            now_s = time.monotonic()
            while due and due[0][0] <= now_s:
                _, kind, rid, worker, out = heapq.heappop(due)
                report = completions.WorkerReport(kind, rid, worker, 0, 0, out)
                reports.send(completions.encode_batch(completions.ReportBatch(worker, [report])))
        conn.recv()  # "stop"
        for sock in [*pulls, replies, reports]:
            sock.close(0)
        conn.send((arrived, error_replies))


# ------------------------------------------------------------------ one run

class _RecordedTimes:
    """Stands in for the controller's `DecisionTimes`, keeping every figure."""

    def __init__(self):
        self.ns: list[int] = []

    def record(self, elapsed_ns: int) -> None:
        self.ns.append(elapsed_ns)

    def status(self) -> dict:
        return {"count": len(self.ns)}


def _thread_cpu_s(native_id: int | None) -> float | None:
    import psutil

    if native_id is None:
        return None
    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return None


def run_one(condition: str, rate: float, duration_s: float, seed: int, predictor, model_dir, tokenizer, schedulers
            ) -> dict:
    import zmq

    from sglang_ext.bench.dispatch_harness import build_controller, new_endpoints, remove_endpoints
    from sglang_ext.core.policies import LengthSource
    from sglang_ext.core.router import RouterConfig
    from sglang_ext.length_source import PredictedLengths

    source, host, wait_ms = CONDITIONS[condition]
    context = zmq.Context()
    endpoints = new_endpoints(2)
    schedulers.send((endpoints.workers, endpoints.reports, endpoints.replies))
    assert schedulers.recv() == "bound"
    tokenizer.send((endpoints.requests, rate, duration_s, seed))
    _, n, mean_prompt_tokens = tokenizer.recv()
    lengths = None
    if source == "predicted":
        lengths = PredictedLengths(model_dir, wait_ms, context, None, predictor=predictor if host == "thread" else None,
                                   host=host.removesuffix("-nice0"))
        if host == "process-nice0":  # the same child at the controller's own priority
            from sglang_ext.predictor_process import ProcessLengthPredictor

            lengths._async.close()
            lengths._async = ProcessLengthPredictor(model_dir, None, on_result=lengths._on_result, nice=0)
        if lengths.failed:
            raise RuntimeError(f"the predictor did not start: {lengths.unavailable}")
    ctl = build_controller(context, endpoints, RouterConfig(policy="prefix_length_aware", num_workers=2,
                                                            length_source=LengthSource(source)), lengths)
    ctl.decision_times = _RecordedTimes()
    poller = ctl._make_poller()
    gc.collect()
    gc.freeze()  # as the controller's event loop does
    predictor_thread = getattr(getattr(lengths, "_async", None), "_thread", None)
    thread_cpu0 = _thread_cpu_s(getattr(predictor_thread, "native_id", None))
    child_cpu0 = _child_cpu_s(lengths)
    load_before = os.getloadavg()[0]
    tokenizer.send("go")
    started = time.monotonic()
    # Until every request is dispatched (a loaded host can put the loop seconds behind),
    # then a little longer for the predictions still on their way.
    end = started + 0.2 + duration_s + 60.0
    while time.monotonic() < end and sum(ctl.dispatched_by_worker) < n:
        timeout = ctl._guarded_value("the poll timeout", ctl._poll_timeout_ms, 1000)
        ctl.run_once(poller, min(timeout, 100))
    settle = time.monotonic() + 0.5
    while time.monotonic() < settle:
        ctl.run_once(poller, 50)
    sent = tokenizer.recv()
    elapsed = time.monotonic() - started
    thread_cpu = _thread_cpu_s(getattr(predictor_thread, "native_id", None))
    child_cpu = _child_cpu_s(lengths)
    stats = lengths.status(time.monotonic()) if lengths is not None else None
    schedulers.send("stop")
    arrived, error_replies = schedulers.recv()
    if lengths is not None:
        lengths.close()
    for sock in [*ctl.workers, ctl.recv_from_tokenizer, ctl.recv_reports, ctl.replies.socket]:
        sock.close(0)
    context.term()
    remove_endpoints(endpoints)
    gc.unfreeze()
    latency_us = np.array([(arrived[f"r{i}"][0] - sent[i]) / 1000 for i in range(n) if f"r{i}" in arrived])
    decision_us = np.array(ctl.decision_times.ns) / 1000
    # The predictor's CPU seconds per second: its thread's, or its process's (whose
    # thread in the controller only receives results: `receiver_cpu_fraction`).
    thread_share = None if thread_cpu is None or thread_cpu0 is None else (thread_cpu - thread_cpu0) / elapsed
    child_share = None if child_cpu is None or child_cpu0 is None else (child_cpu - child_cpu0) / elapsed
    return {
        "condition": condition, "rate_rps": rate, "requests": n, "dispatched": int(latency_us.size),
        "error_replies": error_replies, "mean_prompt_tokens": mean_prompt_tokens,
        **_dist("dispatch_us", latency_us), **_dist("decision_us", decision_us),
        "predictor_cpu_fraction": child_share if (host or "").startswith("process") else thread_share,
        "receiver_cpu_fraction": thread_share if (host or "").startswith("process") else None,
        "load_average_1min": load_before, "load_average_1min_after": os.getloadavg()[0],
        "dispatch_us_all": [round(float(x), 1) for x in latency_us],
        "predictions": None if stats is None else {k: stats.get(k) for k in (
            "predicted_in_time", "fallbacks", "late_reweighed", "failed", "refused", "unavailable")},
    }


def _child_cpu_s(lengths) -> float | None:
    child = getattr(getattr(lengths, "_async", None), "process", None)
    if child is None:
        return None
    import psutil

    try:
        t = psutil.Process(child.pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system


def _dist(name: str, values: np.ndarray) -> dict:
    if values.size == 0:
        return {f"{name}_p50": None, f"{name}_p90": None, f"{name}_p99": None, f"{name}_max": None}
    return {f"{name}_p50": float(np.percentile(values, 50)), f"{name}_p90": float(np.percentile(values, 90)),
            f"{name}_p99": float(np.percentile(values, 99)), f"{name}_max": float(values.max())}


# ------------------------------------------------------------------ driver

HEADERS = ("condition", "req/s", "runs", "pooled p50 us", "pooled p90 us", "pooled p99 us", "per-run p50 us",
           "per-run p99 us", "decision p99 us", "predictor CPU", "load avg")


def table(rows: list[dict]) -> str:
    body = []
    for rate in dict.fromkeys(r["rate_rps"] for r in rows):
        for cond in dict.fromkeys(r["condition"] for r in rows):
            mine = [r for r in rows if r["rate_rps"] == rate and r["condition"] == cond]
            if not mine:
                continue

            def med(key, fmt=".0f"):
                vals = [r[key] for r in mine if r[key] is not None]
                if not vals:
                    return "-"
                return f"{statistics.median(vals):{fmt}} [{min(vals):{fmt}}-{max(vals):{fmt}}]"

            pooled = np.concatenate([np.asarray(r["dispatch_us_all"], dtype=float) for r in mine])
            body.append([cond, f"{rate:g}", str(len(mine)),
                         *(f"{np.percentile(pooled, q):.0f}" if pooled.size else "-" for q in (50, 90, 99)),
                         med("dispatch_us_p50"), med("dispatch_us_p99"), med("decision_us_p99", ".1f"),
                         med("predictor_cpu_fraction", ".2f"), med("load_average_1min", ".1f")])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in body]
    lines.append("pooled: over every request of the runs; per-run: median [min-max] over repeats of each run's "
                 "percentile; predictor CPU: its thread's or "
                 "process's CPU seconds per second; load avg: the host's 1-minute load average at each run's start")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.duration_s <= 0 or any(not (math.isfinite(r) and r > 0) for r in args.rates_rps):
        print("predictor-gil: --repeats, --duration-s and --rates-rps must be positive", file=sys.stderr)
        return 2
    from length_model.serving import LengthPredictor

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = None
    if any(CONDITIONS[c][1] == "thread" for c in args.conditions):
        predictor = LengthPredictor.load(args.length_model) if args.length_model else LengthPredictor.load()
    spawn = mp.get_context("spawn")
    pipes, procs = [], []
    for target in (_tokenizer_process, _scheduler_process):
        parent, child = spawn.Pipe()
        proc = spawn.Process(target=target, args=(child,), daemon=True)
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    tokenizer, schedulers = pipes
    for pipe in pipes:
        assert pipe.recv() == "ready"
    rows = []
    config = {"args": vars(args), "switch_interval_s": sys.getswitchinterval(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "conditions": {
        c: dict(zip(("length_source", "predictor_host", "predict_wait_ms"), CONDITIONS[c])) for c in args.conditions},
        "scheduler_stand_in": {"prefill_report_s": PREFILL_REPORT_S, "decode_s_per_token": DECODE_S_PER_TOKEN,
                               "output_lengths": OUTPUT_LENGTHS}}
    try:
        for repeat in range(args.repeats):
            for rate in args.rates_rps:
                # Rotated per repeat, so that no condition always runs first (or right
                # after another) while the host's load drifts.
                shift = repeat % len(args.conditions)
                for condition in args.conditions[shift:] + args.conditions[:shift]:
                    row = run_one(condition, rate, args.duration_s, args.seed + repeat, predictor, args.length_model,
                                  tokenizer, schedulers)
                    row["repeat"] = repeat
                    rows.append(row)
                    print(f"predictor-gil: repeat {repeat + 1} {rate:g} req/s {condition:12s} dispatch p50 "
                          f"{row['dispatch_us_p50']:.0f} p99 {row['dispatch_us_p99']:.0f} us, decision p99 "
                          f"{row['decision_us_p99']:.1f} us, dispatched {row['dispatched']}/{row['requests']}",
                          flush=True)
                    (out / "results.json").write_text(json.dumps({"config": config, "runs": rows}, indent=2) + "\n")
    finally:
        for pipe in pipes:
            pipe.send("exit")
        for proc in procs:
            proc.join(10)
    text = table(rows)
    (out / "table.txt").write_text(text)
    print(text, end="")
    return 0 if all(r["dispatched"] == r["requests"] and r["error_replies"] == 0 for r in rows) else 1
