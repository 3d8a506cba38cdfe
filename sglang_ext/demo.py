"""The main job, end to end on this machine: real SGLang (dp=2, CPU) with our controller.

    python -m sglang_ext.demo                 # SmolLM2-135M-Instruct, prefix_length_aware
    python -m sglang_ext.demo --model tiny    # the tiny random Llama (fast, noise output)
    python -m sglang_ext.demo --policy round_robin

It starts the server, runs a short ReAct-style batch (a shared instruction and worked
example, several questions, two agent turns each: the second turn's prompt is the first
prompt plus the model's Thought/Action and a tool Observation), prints one row per
request (worker, prompt and cached tokens, output tokens, latency), a summary, and stops
the server. Requests of one wave are sent together, so the controller must balance them
while keeping each question's follow-up turn on the worker that caches its prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from sglang_ext.models import smollm2_path, tiny_path
from sglang_ext.core.policies import POLICIES
from sglang_ext.server import ServerSpec, start_server
from traces.console import print_table

INSTRUCTION = (
    "Solve a question answering task with interleaving Thought, Action, Observation steps. "
    "Thought can reason about the current situation, and Action can be three types: "
    "(1) Search[entity], which searches the exact entity on Wikipedia and returns the first "
    "paragraph if it exists. (2) Lookup[keyword], which returns the next sentence containing "
    "keyword in the current passage. (3) Finish[answer], which returns the answer and finishes "
    "the task.\n"
    "Here is an example.\n"
    "Question: What is the capital of the country where the Eiffel Tower stands?\n"
    "Thought 1: The Eiffel Tower is in Paris, France. I need the capital of France.\n"
    "Action 1: Search[France]\n"
    "Observation 1: France is a country in Western Europe. Its capital is Paris.\n"
    "Thought 2: The capital of France is Paris.\n"
    "Action 2: Finish[Paris]\n"
)
QUESTIONS = [
    "Which river flows through the capital of England?",
    "Who wrote the novel that introduced the detective Sherlock Holmes?",
    "What is the largest planet in the solar system?",
    "In which country is the city of Kyoto?",
]
OBSERVATION = "Observation 1: The search returned a short encyclopedia paragraph about the topic."


def _post(url: str, body: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    req = urllib.request.Request(url + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        reply = json.load(r)
    return reply, time.perf_counter() - start


def _first_turn_prompt(tokenizer, question: str) -> str:
    user = f"{INSTRUCTION}\nNow your turn.\nQuestion: {question}\nThought 1:"
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return user
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


def _print_wave(turn: int, wave: list[tuple[dict, float]], since_s: float) -> list[tuple]:
    """Print one wave's table as soon as it is answered (the point shows after the
    second), returns its rows."""
    rows = []
    for q, (reply, latency) in enumerate(wave):
        m = reply["meta_info"]
        rows.append((q + 1, turn, m.get("dp_rank"), m["prompt_tokens"], m["cached_tokens"], m["completion_tokens"],
                     latency, reply["text"].strip().replace("\n", " ")[:48]))
    print()
    print_table([(*r[:6], f"{r[6]:.2f}", r[7]) for r in rows],
                ["question", "turn", "worker", "prompt", "cached", "output", "latency s", "text"], left_columns=[7],
                title=f"turn {turn}, answered {time.perf_counter() - since_s:.0f} s into the batch")
    return rows


def _controller_process(server):
    """Our controller's process, to report what it cost (None where it cannot be found)."""
    import psutil

    pid = server.controller_pid()
    return psutil.Process(pid) if pid is not None else None


def _cpu_seconds(process) -> float:
    if process is None:
        return float("nan")
    times = process.cpu_times()
    return times.user + times.system


def run(model: str, policy: str, max_new_tokens: int) -> int:
    from transformers import AutoTokenizer

    path = smollm2_path() if model == "smollm2" else tiny_path()
    if not (path / "config.json").exists():
        print(f"demo: model {model} is not built at {path}; run scripts/setup_cpu.sh", file=sys.stderr)
        return 2
    tokenizer = AutoTokenizer.from_pretrained(path)
    real_model = model == "smollm2"
    # SmolLM2 ships bf16, which CPUs without bf16 instructions emulate several times
    # slower than fp32 (see sglang_ext/cpu_host.py).
    spec = ServerSpec(str(path), dp_size=2, load_balance_method=policy, max_total_tokens=16384,
                      extra_args=["--dtype", "float32"] if real_model else [])
    print(f"demo: starting SGLang dp=2 on CPU with our controller ({policy}), model {path.name} ...", flush=True)
    started = time.perf_counter()
    rows = []
    with start_server(spec) as server:
        print(f"demo: server ready in {time.perf_counter() - started:.0f} s at {server.url}", flush=True)
        controller = _controller_process(server)
        controller_cpu_s = _cpu_seconds(controller)
        batch_started = time.perf_counter()
        sampling = {"max_new_tokens": max_new_tokens, "temperature": 0.0, "stop": ["Observation"]}
        if not real_model:
            sampling["ignore_eos"] = True  # random weights: fix the output length
        first = [_first_turn_prompt(tokenizer, q) for q in QUESTIONS]
        with ThreadPoolExecutor(len(QUESTIONS)) as pool:
            wave1 = list(pool.map(lambda p: _post(server.url, {"text": p, "sampling_params": sampling}), first))
            rows += _print_wave(1, wave1, batch_started)
            second = [p + r["text"] + "\n" + OBSERVATION + "\nThought 2:" for p, (r, _) in zip(first, wave1)]
            wave2 = list(pool.map(lambda p: _post(server.url, {"text": p, "sampling_params": sampling}), second))
            rows += _print_wave(2, wave2, batch_started)
        batch_s = time.perf_counter() - batch_started
        controller_cpu_s = _cpu_seconds(controller) - controller_cpu_s
        status = server.status() or {}
    prompt_total = sum(r[3] for r in rows)
    cached_total = sum(r[4] for r in rows)
    per_worker = {w: sum(1 for r in rows if r[2] == w) for w in (0, 1)}
    same_worker = sum(1 for q in range(len(QUESTIONS)) if rows[q][2] == rows[len(QUESTIONS) + q][2])
    print(f"\nprefix hit rate {cached_total / max(1, prompt_total):.2f} ({cached_total}/{prompt_total} prompt tokens); "
          f"requests per worker {per_worker}; follow-up turns on their first turn's worker: "
          f"{same_worker}/{len(QUESTIONS)}; mirror: {status.get('mirror', '?')}")
    print(f"batch of {len(rows)} requests in {batch_s:.1f} s; our controller process used "
          f"{controller_cpu_s:.2f} CPU-s meanwhile")
    print("demo: server stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_ext.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--policy", default="prefix_length_aware",
                        help=f"one of: {', '.join(POLICIES)}")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    if args.policy not in POLICIES:
        print(f"demo: unknown --policy {args.policy!r}; valid: {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    return run(args.model, args.policy, args.max_new_tokens)


if __name__ == "__main__":
    sys.exit(main())
