"""The length predictor in a child process of the controller, behind the same interface
as `length_model.serving.AsyncLengthPredictor` (`submit`, `poll`, `pending`, `close`,
`batch_sizes`, `on_result`).

Why a process: in a thread of the controller, prediction holds the GIL whenever it runs
Python code, and the event loop, which must take the GIL back after each poll and each
socket call, waits for it, up to CPython's switch interval (5 ms) at a time. Measured on
the controller's dispatch path (`python -m sglang_ext.bench predictor-gil`,
docs/results/predictor_gil/, a loaded 2-core host): at 64 requests/s with the predictor
busy on its thread, the p99 time from the tokenizer's send to the scheduler's receipt of
requests that do not wait for a prediction grew from about 7 ms to over 60 ms; with the
predictor in this child (niced) it stayed near 8 ms. The price: with the default 20 ms
wait, fewer predictions arrived in time there.

Wire: the controller binds two `ipc://` sockets in a private folder (mode 0700); the
child (`python -m sglang_ext.predictor_process`) connects a PULL for requests and a PUSH
for results. Requests are pickled `(rid, text or token ids)`; results `("ok",
batch_size, [(rid, tokens), ...])` or `("failed", batch_size, [rid, ...], reason)`. The
child micro-batches as the thread does, detokenizes prompts that came as ids (the
tokenizer is loaded there, once), and exits when its parent is gone.

In the controller: `submit` runs on the event loop and only queues a message (a full
queue is `PredictorBusy`, back-pressure for that request); one receiver thread blocks in
ZeroMQ (GIL released) and, per result, appends it and calls `on_result`. The child's
death or a failed start is a `PredictorError`, which the length source turns into the
fallback, as for a dead thread.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable

import zmq

from length_model.serving import PredictorBusy, PredictorError, drain_predictions

logger = logging.getLogger(__name__)

READY, OK, FAILED, ERROR = "ready", "ok", "failed", "error"
# The child runs at a lower CPU priority: on a small host it competes with the event
# loop and the schedulers for cores, and a late prediction only costs its request the
# fallback, while a late dispatch or decode step costs every request behind it.
DEFAULT_NICE = 5


class ProcessLengthPredictor:
    def __init__(self, model_dir: str | None, tokenizer_path: str | None,
                 on_result: Callable[[Hashable, int], None] | None = None,
                 max_batch_size: int = 16, max_wait_ms: float = 1.0, max_queue: int = 4096,
                 start_timeout_s: float = 120.0, nice: int = DEFAULT_NICE):
        self.on_result = on_result
        self.max_queue = max_queue
        self.batch_sizes: list[int] = []
        self._out: collections.deque = collections.deque()
        self._failed: collections.deque = collections.deque()
        self._submitted = 0  # written by the event loop only
        self._answered = 0   # written by the receiver thread only
        self._closed = threading.Event()
        self._dead: str | None = None
        self._context = zmq.Context()
        self._folder = tempfile.mkdtemp(prefix="sglang_ext_predictor_")
        self._requests = self._context.socket(zmq.PUSH)
        self._requests.setsockopt(zmq.LINGER, 0)
        self._requests.setsockopt(zmq.SNDHWM, max_queue)
        self._requests.bind(f"ipc://{self._folder}/requests")
        self._results = self._context.socket(zmq.PULL)
        self._results.setsockopt(zmq.LINGER, 0)
        self._results.bind(f"ipc://{self._folder}/results")
        cmd = [sys.executable, "-m", "sglang_ext.predictor_process", "--requests", f"ipc://{self._folder}/requests",
               "--results", f"ipc://{self._folder}/results", "--parent-pid", str(os.getpid()),
               "--max-batch-size", str(max_batch_size), "--max-wait-ms", str(max_wait_ms), "--nice", str(nice)]
        if model_dir:
            cmd += ["--model", model_dir]
        if tokenizer_path:
            cmd += ["--tokenizer", tokenizer_path]
        # One compute thread: batches are small, and idle OpenMP workers spin-wait after
        # each batch (measured: 0.6 of a core at 16 requests/s with the default pools).
        env = dict(os.environ)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(name, "1")
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
        try:
            self._wait_ready(start_timeout_s)
        except BaseException:
            self._shutdown()
            raise
        self._thread = threading.Thread(target=self._receive, name="length-predictor-results", daemon=True)
        self._thread.start()

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._results.poll(200):
                message = pickle.loads(self._results.recv())
                if message[0] == READY:
                    return
                raise PredictorError(f"the predictor process could not start: {message[1]}")
            if self.process.poll() is not None:
                raise PredictorError(f"the predictor process exited with {self.process.returncode} at start")
        raise PredictorError(f"the predictor process was not ready within {timeout_s:.0f} s")

    # ------------------------------------------------------------ event-loop side

    def submit(self, rid: Hashable, item) -> None:
        if self._closed.is_set() or self._dead is not None:
            raise PredictorError(f"length predictor process is gone ({self._dead or 'closed'})")
        if self._submitted - self._answered >= self.max_queue:
            raise PredictorBusy("length predictor queue is full")
        try:
            self._requests.send(pickle.dumps((rid, item), protocol=pickle.HIGHEST_PROTOCOL), zmq.NOBLOCK)
        except zmq.Again as exc:
            raise PredictorBusy("length predictor queue is full") from exc
        self._submitted += 1

    def poll(self) -> list[tuple[Hashable, int]]:
        """Drain finished predictions; raises PredictionFailed if any request failed."""
        return drain_predictions(self._out, self._failed)

    def pending(self) -> int:
        return self._submitted - self._answered

    def close(self, timeout_s: float = 5.0) -> None:
        self._closed.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout_s)
        self._shutdown(timeout_s)

    def _shutdown(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=max(0.1, timeout_s))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._requests.close(0)
        if not (getattr(self, "_thread", None) is not None and self._thread.is_alive()):
            self._results.close(0)
            self._context.term()
        shutil.rmtree(self._folder, ignore_errors=True)

    # ------------------------------------------------------------ receiver thread

    def _receive(self) -> None:
        while not self._closed.is_set():
            if not self._results.poll(200):
                if self.process.poll() is not None:
                    self._dead = f"exited with {self.process.returncode}"
                    logger.error("length predictor process %s", self._dead)
                    return
                continue
            message = pickle.loads(self._results.recv())
            if message[0] == OK:
                _, size, pairs = message
                self.batch_sizes.append(size)
                for rid, tokens in pairs:
                    self._out.append((rid, tokens))
                    self._answered += 1
                    if self.on_result is not None:
                        self.on_result(rid, tokens)
            elif message[0] == FAILED:
                _, size, rids, reason = message
                self.batch_sizes.append(size)
                cause = PredictorError(reason)
                self._failed.extend((rid, cause) for rid in rids)
                self._answered += len(rids)


# ------------------------------------------------------------------ child process

def _serve(args: argparse.Namespace) -> int:
    from length_model.serving import LengthPredictor

    if args.nice:
        os.nice(args.nice)

    from sglang_ext.length_source import _PredictOnThread

    context = zmq.Context()
    requests = context.socket(zmq.PULL)
    requests.connect(args.requests)
    results = context.socket(zmq.PUSH)
    results.setsockopt(zmq.LINGER, 2000)
    results.connect(args.results)
    try:
        predictor = LengthPredictor.load(args.model) if args.model else LengthPredictor.load()
    except Exception as exc:  # reported to the controller, which falls back
        results.send(pickle.dumps((ERROR, str(exc))))
        return 1
    predict = _PredictOnThread(predictor, args.tokenizer)
    results.send(pickle.dumps((READY,)))
    max_wait_s = args.max_wait_ms / 1000.0
    while True:
        if not requests.poll(1000):
            if os.getppid() != args.parent_pid:
                return 0  # the controller is gone
            continue
        batch = [pickle.loads(requests.recv())]
        deadline = time.monotonic() + max_wait_s
        while len(batch) < args.max_batch_size:
            left_ms = int(max(0.0, deadline - time.monotonic()) * 1000)
            if not requests.poll(left_ms):
                break
            batch.append(pickle.loads(requests.recv()))
        try:
            tokens = predict.predict([item for _, item in batch])
        except Exception as exc:  # noqa: BLE001 - any failure is that batch's, reported
            results.send(pickle.dumps((FAILED, len(batch), [rid for rid, _ in batch], repr(exc))))
            continue
        results.send(pickle.dumps((OK, len(batch), [(rid, n) for (rid, _), n in zip(batch, tokens)])))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sglang_ext.predictor_process",
                                     description="the controller's length predictor (started by the controller)")
    parser.add_argument("--requests", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--model")
    parser.add_argument("--tokenizer")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=1.0)
    parser.add_argument("--nice", type=int, default=DEFAULT_NICE, help="added to the child's niceness")
    return _serve(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
