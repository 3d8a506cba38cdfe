"""Our scheduler-side pieces inside SGLang's Ray actors.

SGLang 0.5.23's Ray path builds each `Scheduler` inside a Ray actor
(`sglang/srt/ray/scheduler_actor.py: SchedulerActor.__init__`) and never calls
`sglang.srt.plugins.load_plugins()` there (the forked path does, in
`run_scheduler_process`, `sglang/srt/managers/scheduler.py`), so without help our
completion reports and feed hooks would not exist in the actors. Ray runs a job's
`runtime_env["worker_process_setup_hook"]` in every worker process it starts for that
job, before any task or actor runs there (Ray 2.60 `ray/_private/worker.py`,
`upload_worker_process_setup_hook_if_needed`); `runtime_env()` below names
`setup_worker`, which loads SGLang's plugins, ours among them.

In an actor the reports and KV events cannot ride the driver's `ipc://` paths: they may
be on another machine. `setup_worker` puts the process in *advertise mode*: each rank
binds its own report PUSH socket and its KV-event sockets on its feed host
(`SGLANG_EXT_FEED_HOST`: an address of this node, or `ray-node-ip` for the address Ray
uses on this node; 127.0.0.1 by default) and adds the endpoints it bound to its
`get_init_info()` reply, which SGLang's Ray controller collects from every actor
(`RayDataParallelController._launch_ray_tp_group`). Our controller connects to what each
rank advertised (`feeds.py`).
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

ENV_FEED_HOST = "SGLANG_EXT_FEED_HOST"
# "1": the actors run SGLang's CPU engine (a CPU-only torch); see `_cpu_only_torch`.
ENV_CPU_ACTORS = "SGLANG_EXT_RAY_CPU"
ENV_ADVERTISE = "SGLANG_EXT_ADVERTISE_FEEDS"  # "1" in Ray actors (set by setup_worker)
RAY_NODE_IP = "ray-node-ip"
DEFAULT_FEED_HOST = "127.0.0.1"
SETUP_HOOK = "sglang_ext.ray_actors.setup_worker"


def runtime_env(feed_host: str = DEFAULT_FEED_HOST, env_vars: dict[str, str] | None = None) -> dict:
    """The job-level `runtime_env` for `ray.init` that makes our hooks load in SGLang's
    scheduler actors, with their feeds bound on `feed_host`."""
    check_feed_host(feed_host)
    merged = dict(env_vars or {})
    merged[ENV_FEED_HOST] = feed_host
    return {"worker_process_setup_hook": SETUP_HOOK, "env_vars": merged}


def check_feed_host(value: str) -> None:
    """A feed host is an IP address or `ray-node-ip`; a wildcard would bind every
    interface, and the feeds carry prompt token ids."""
    import ipaddress

    if value == RAY_NODE_IP:
        return
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{ENV_FEED_HOST} must be an IP address of the node or {RAY_NODE_IP!r}, "
                         f"got {value!r}") from None
    if address.is_unspecified:
        raise ValueError(f"{ENV_FEED_HOST}={value} would listen on every interface; name one address")


def setup_worker() -> None:
    """Ray's worker setup hook: advertise mode, then SGLang's plugins (ours included)."""
    # A worker process on the driver's machine may have inherited the driver's
    # environment, whose report endpoint is the driver's private IPC path.
    from sglang_ext import completions

    os.environ.pop(completions.ENV_ENDPOINT, None)
    os.environ[ENV_ADVERTISE] = "1"
    if os.environ.get(ENV_CPU_ACTORS) == "1":
        _cpu_only_torch()
    from sglang.srt.plugins import load_plugins

    load_plugins()


def _cpu_only_torch() -> None:
    """Let SGLang's scheduler actors start their event loop on a CPU-only torch.

    `SchedulerActor.run_event_loop` (sglang/srt/ray/scheduler_actor.py, line 131 in
    0.5.23) calls `torch.cuda.set_device(gpu_id)` unconditionally; a CPU build of torch
    has no CUDA bindings and raises `AttributeError: module 'torch._C' has no attribute
    '_cuda_setDevice'`, so the actor dies before serving. On a host without CUDA there is
    no device to select, and the CPU engine never reads the current CUDA device, so the
    call is made a no-op there (only in these worker processes, only when asked for).
    """
    import torch

    if torch.cuda.is_available():
        return

    def set_device(device) -> None:
        logger.debug("ray actors: torch.cuda.set_device(%r) ignored (CPU-only torch)", device)

    torch.cuda.set_device = set_device


def advertise_mode() -> bool:
    return os.environ.get(ENV_ADVERTISE) == "1"


def feed_host() -> str:
    """This process's feed address, resolved (`ray-node-ip` asks Ray)."""
    value = os.environ.get(ENV_FEED_HOST) or DEFAULT_FEED_HOST
    check_feed_host(value)
    if value == RAY_NODE_IP:
        import ray

        return ray.util.get_node_ip_address()
    return value


def work_around_ray_dp_declaration() -> None:
    """Let SGLang 0.5.23's Ray launcher start data-parallel ranks (driver side).

    `RayEngine._launch_dp_scheduler_processes` (sglang/srt/ray/engine.py, line 469)
    calls `declare_resolution(server_args, "ray.dp_controller", dist_init_addr=...)` on
    the config that `Engine._launch_subprocesses` has already published, and
    `declare_resolution` (sglang/srt/arg_groups/overrides.py) refuses every declaration
    on a published config: `ValueError: ray.dp_controller: declared on the published
    config; ...`. So every `--use-ray --dp-size N>1` launch fails there, on any device,
    before a single actor exists. The declared value is read only by
    `PortArgs.init_new` in its DP-attention branch (sglang/srt/server_args.py, the
    `else` after `if not attn_dp_enabled_of(cfg)`); plain DP uses `ipc://` names and
    never reads it, and each actor declares its own `dist_init_addr` on its own copy
    (`SchedulerActor.__init__`). So for plain DP that one call is skipped; with DP
    attention it still fails as in SGLang (we cannot supply the value correctly).
    Only the name in `sglang.srt.ray.engine` is rebound; nothing else changes.
    """
    import sglang.srt.ray.engine as ray_engine

    original = ray_engine.declare_resolution
    if getattr(original, "_sglang_ext_workaround", False):
        return

    def declare_resolution(server_args, source, **fields):
        from sglang.srt.runtime_context import get_parallel

        if source == "ray.dp_controller" and not get_parallel().attn_dp_enabled:
            logger.info("ray: skipped SGLang's post-publish dist_init_addr declaration (unread by plain DP)")
            return None
        return original(server_args, source, **fields)

    declare_resolution._sglang_ext_workaround = True
    ray_engine.declare_resolution = declare_resolution
