"""Our controller's real dispatch path without SGLang's processes, for benchmarks.

`build_controller` makes a `PrefixAwareController` without the stock constructor (which
spawns schedulers): the stock attributes its methods read are set by hand, as
`data_parallel_controller.py` (SGLang 0.5.23) sets them, and every socket is a real ZMQ
socket on an `ipc://` path in a private folder, so that the tokenizer manager and the
schedulers can be stand-ins in other processes (`Endpoints`). From there on the code is
the controller's own: `run_once` is one round of its event loop, `_init_ours` builds the
router, the ledger and, with `--length-source predicted`, the length predictor.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace

import zmq


@dataclass(frozen=True)
class Endpoints:
    requests: str        # tokenizer manager -> controller (the stand-in binds a PUSH)
    workers: tuple[str, ...]  # controller -> scheduler w (the stand-ins bind PULLs)
    reports: str         # schedulers -> controller (the controller binds a PULL)
    replies: str         # controller -> tokenizer manager, error replies (the stand-in binds a PULL)

    @classmethod
    def in_folder(cls, folder: str, num_workers: int) -> "Endpoints":
        return cls(f"ipc://{folder}/requests", tuple(f"ipc://{folder}/worker{w}" for w in range(num_workers)),
                   f"ipc://{folder}/reports", f"ipc://{folder}/replies")


class _NoSnapshots:
    def read_all(self):
        return []


def new_endpoints(num_workers: int) -> Endpoints:
    return Endpoints.in_folder(tempfile.mkdtemp(prefix="sglang_ext_bench_"), num_workers)


def bare_controller(num_workers: int):
    """A `PrefixAwareController` with only what the stock constructor would have set
    and its methods read (`data_parallel_controller.py`, SGLang 0.5.23), no sockets yet:
    the caller wires `workers`, `recv_from_tokenizer`, `recv_reports`, then calls
    `init_dispatcher()` and `_init_ours(...)`."""
    from sglang.srt.managers.data_parallel_controller import LoadBalanceMethod

    from sglang_ext.controller import PrefixAwareController

    ctl = object.__new__(PrefixAwareController)
    ctl.max_dp_size = num_workers
    ctl.load_balance_method = LoadBalanceMethod.ROUND_ROBIN
    ctl.status = [True] * num_workers
    ctl.dp_active = [True] * num_workers
    ctl._active_workers = list(range(num_workers))
    ctl.round_robin_counter = 0
    ctl.health_round_robin_counter = 0
    ctl.load_snapshot_reader = _NoSnapshots()
    ctl.soft_watchdog = SimpleNamespace(feed=lambda: None)
    ctl.workers = []
    return ctl


def build_controller(context: zmq.Context, endpoints: Endpoints, router_config, lengths=None):
    """A controller on `endpoints`; `lengths` (a `PredictedLengths`) for predicted lengths."""
    from sglang_ext.controller import ErrorReplies

    ctl = bare_controller(router_config.num_workers)
    for address in endpoints.workers:
        push = context.socket(zmq.PUSH)
        push.connect(address)
        ctl.workers.append(push)
    ctl.recv_from_tokenizer = context.socket(zmq.PULL)
    ctl.recv_from_tokenizer.connect(endpoints.requests)
    ctl.recv_reports = context.socket(zmq.PULL)
    ctl.recv_reports.bind(endpoints.reports)
    ctl._reports_context = context
    ctl.init_dispatcher()
    ctl._init_ours(SimpleNamespace(kv_events_config=None), ErrorReplies(context, endpoints.replies),
                   router_config, lengths)
    return ctl


def remove_endpoints(endpoints: Endpoints) -> None:
    folder = os.path.dirname(endpoints.requests.removeprefix("ipc://"))
    for name in os.listdir(folder):
        os.remove(os.path.join(folder, name))
    os.rmdir(folder)
