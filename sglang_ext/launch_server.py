"""Start real SGLang with our data-parallel controller.

    python -m sglang_ext.launch_server --model-path models/tiny-llama --dp-size 2 \\
        --load-balance-method prefix_length_aware [--length-source predicted] \\
        [any other sglang.launch_server flag]

Accepts every `sglang.launch_server` flag. `--load-balance-method` takes SGLang's stock
values (run by our controller with the same semantics and a blocking event loop) and
ours; `--length-source` (max_new_tokens | predicted | oracle), `--length-model DIR`
(the trained length head; default: length_model/artifacts), `--predict-wait-ms MS` (how
long a request may wait for its prediction before it is dispatched on the fallback;
default 20, 0 = never wait), `--predictor-host process|thread` (where the predictor runs:
a child of the controller process, the default, or a thread of it), `--cost-model NAME|FILE|online[:NAME]` (the step-time
coefficients the cost-based policies weigh prefill against decode with; `online` fits
them from the workers' reports), `--prefix-holds on|off` (whether `prefix_length_aware`
holds a request whose prefix is still being prefilled on its worker; default on) and
`--kv-mirror` (auto | events | approximate) are ours. Our values are handed to the controller process
through the environment, since SGLang's parser would reject them; SGLang itself is told
`round_robin`.

`--kv-mirror auto` (the default) turns SGLang's KV-event feed on, bound to loopback on
free ports with a replay endpoint, unless `--kv-events-config` is given; the feed carries
prompt token ids, so it never listens beyond 127.0.0.1 unless you say so: a
`--kv-events-config` whose endpoints are not loopback (SGLang's default `tcp://*:5557`
binds every interface) is refused unless `--kv-events-allow-remote` is given too, and
then a warning says what the feed carries. `approximate` leaves events off and the
controller inserts routed prompts itself. `auto` settles for the approximate mirror when
no feed can be had (a user config without a ZeroMQ publisher, no free loopback ports);
`events` refuses to start then.

With SGLang's `--use-ray` the schedulers run as Ray actors (`sglang/srt/ray/`); the
launcher then joins the Ray cluster named by `RAY_ADDRESS` (or starts a local one) with
a job `runtime_env` that loads our hooks in those actors (`ray_actors.py`), and
`--feed-host ADDR|ray-node-ip` (ours; default 127.0.0.1) is the address each rank binds
its report and KV-event sockets on, on its own node; the controller connects to what each
rank advertises (`feeds.py`). See docs/multinode.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import socket
import sys

from sglang_ext.settings import (
    ENV_COST_MODEL,
    ENV_LENGTH_MODEL,
    ENV_LENGTH_SOURCE,
    ENV_POLICY,
    ENV_PREDICT_WAIT_MS,
    ENV_PREDICTOR_HOST,
    ENV_PREFIX_HOLDS,
    PREDICTOR_HOSTS,
)
from sglang_ext.core.policies import POLICIES, LengthSource

SGLANG_ONLY_METHODS = ("auto", "follow_bootstrap_room")
REMOTE_EVENTS_FLAG = "--kv-events-allow-remote"
PLUGIN_NAME = "prefix_length_dp"


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises `UsageError` (one line) instead of printing usage and exiting."""

    def error(self, message: str):
        raise UsageError(message)


def _our_flags() -> _Parser:
    """Our flags, taken out of the command line; everything else goes to SGLang as it was.
    Values are checked after parsing (not with `choices=`), so that every error is our
    one-line message with the list of valid values. No `-h`: `--help` reaches SGLang's
    parser. No abbreviations: `--dp` must not be read as one of ours."""
    parser = _Parser(prog="launch_server", add_help=False, allow_abbrev=False)
    parser.add_argument("--load-balance-method")
    parser.add_argument("--length-source")
    parser.add_argument("--length-model")
    parser.add_argument("--predict-wait-ms")
    parser.add_argument("--predictor-host")
    parser.add_argument("--cost-model")
    parser.add_argument("--prefix-holds")
    parser.add_argument("--kv-mirror", default="auto")
    parser.add_argument(REMOTE_EVENTS_FLAG, dest="allow_remote", action="store_true")
    parser.add_argument("--feed-host")
    return parser


def _sglang_flags() -> _Parser:
    """The SGLang flags we read but leave in place (SGLang parses them again itself)."""
    parser = _Parser(prog="launch_server", add_help=False, allow_abbrev=False)
    parser.add_argument("--kv-events-config")
    parser.add_argument("--device")
    parser.add_argument("--dp-size", "--dp", "--data-parallel-size", dest="dp_size")
    parser.add_argument("--use-ray", action="store_true")
    return parser


def split_args(argv: list[str]) -> tuple[argparse.Namespace, argparse.Namespace, list[str]]:
    """(our flags, the SGLang flags we read, SGLang's argv without ours). A flag given
    twice: the last one wins, as in SGLang's own parser."""
    ours, rest = _our_flags().parse_known_args(argv)
    theirs, _ = _sglang_flags().parse_known_args(rest)
    return ours, theirs, rest


def translate_args(argv: list[str], environ: dict) -> list[str]:
    """Split our flags from SGLang's; set our settings in `environ`; return SGLang's argv."""
    ours, theirs, argv = split_args(list(argv))
    method = ours.load_balance_method
    valid = list(POLICIES) + [m for m in SGLANG_ONLY_METHODS if m not in POLICIES]
    if method is not None:
        if method not in valid:
            raise UsageError(f"unknown --load-balance-method {method!r}; valid: {', '.join(valid)}")
        if method in POLICIES:
            environ[ENV_POLICY] = method
            method = "round_robin"  # what SGLang's own parser and launch logic see
        else:
            environ.pop(ENV_POLICY, None)
        argv += ["--load-balance-method", method]
    if ours.length_source is not None:
        sources = [s.value for s in LengthSource]
        if ours.length_source not in sources:
            raise UsageError(f"unknown --length-source {ours.length_source!r}; valid: {', '.join(sources)}")
        environ[ENV_LENGTH_SOURCE] = ours.length_source
    if ours.length_model is not None:
        environ[ENV_LENGTH_MODEL] = ours.length_model
    wait_ms = ours.predict_wait_ms
    if wait_ms is not None:
        try:
            if not float(wait_ms) >= 0:  # also refuses nan
                raise ValueError
        except ValueError:
            raise UsageError(f"--predict-wait-ms must be a number >= 0, got {wait_ms!r}") from None
        environ[ENV_PREDICT_WAIT_MS] = wait_ms
    if ours.predictor_host is not None:
        if ours.predictor_host not in PREDICTOR_HOSTS:
            raise UsageError(f"unknown --predictor-host {ours.predictor_host!r}; valid: {', '.join(PREDICTOR_HOSTS)}")
        environ[ENV_PREDICTOR_HOST] = ours.predictor_host
    if ours.cost_model is not None:
        from sglang_ext.core.cost_model import CostModelError
        from sglang_ext.core.router import build_cost_model

        try:
            build_cost_model(ours.cost_model)
        except CostModelError as exc:
            raise UsageError(f"--cost-model: {exc}") from None
        environ[ENV_COST_MODEL] = ours.cost_model
    holds = ours.prefix_holds
    if holds is not None:
        if holds not in ("on", "off"):
            raise UsageError(f"--prefix-holds must be on or off, got {holds!r}")
        environ[ENV_PREFIX_HOLDS] = holds
    mirror = ours.kv_mirror
    if mirror not in ("auto", "events", "approximate"):
        raise UsageError(f"unknown --kv-mirror {mirror!r}; valid: auto, events, approximate")
    user_events = theirs.kv_events_config
    if user_events is not None:
        remote = remote_kv_event_endpoints(user_events)
        if remote and not ours.allow_remote:
            raise UsageError(
                f"--kv-events-config publishes on {', '.join(remote)}, reachable beyond this host; the "
                f"KV-event feed carries prompt token ids. Use a 127.0.0.1 endpoint, or add {REMOTE_EVENTS_FLAG}")
        if remote:
            print(f"launch_server: warning: the KV-event feed on {', '.join(remote)} carries prompt token ids "
                  "and is reachable beyond this host", file=sys.stderr)
        if mirror == "events" and json.loads(user_events).get("publisher", "null") != "zmq":
            raise UsageError("--kv-mirror events needs a ZeroMQ KV-event feed, and this --kv-events-config "
                             "publishes none (use auto to fall back to the approximate mirror)")
    elif mirror != "approximate":
        dp_size = _dp_size(theirs.dp_size)
        try:
            argv += ["--kv-events-config", json.dumps(loopback_kv_events_config(dp_size))]
        except UsageError:
            if mirror == "events":
                raise
            # auto: the approximate mirror needs no feed
            print("launch_server: warning: no free loopback ports for the KV-event feed; "
                  "using the approximate mirror", file=sys.stderr)
    feed_host = ours.feed_host
    if feed_host is not None:
        if not theirs.use_ray:
            raise UsageError("--feed-host applies to SGLang's Ray path only; add --use-ray")
        from sglang_ext.ray_actors import ENV_FEED_HOST, check_feed_host

        try:
            check_feed_host(feed_host)
        except ValueError as exc:
            raise UsageError(f"--feed-host: {exc}") from None
        environ[ENV_FEED_HOST] = feed_host
        if feed_host == "ray-node-ip" or not ipaddress.ip_address(feed_host).is_loopback:
            print(f"launch_server: warning: the ranks' report and KV-event feeds listen on {feed_host}; they "
                  "carry prompt token ids unauthenticated: keep that interface private (docs/multinode.md)",
                  file=sys.stderr)
    if theirs.device == "cpu":
        from sglang_ext.cpu_host import CPU_COST_MODEL, apply_cpu_defaults

        apply_cpu_defaults(environ, _dp_size(theirs.dp_size))
        # The default file is an H100 fit; on a CPU, fit online from the closest CPU file.
        environ.setdefault(ENV_COST_MODEL, CPU_COST_MODEL)
    # Our plugin must load in every SGLang process; respect a user whitelist but add us.
    allowed = environ.get("SGLANG_PLUGINS")
    if allowed and PLUGIN_NAME not in allowed.split(","):
        environ["SGLANG_PLUGINS"] = allowed + "," + PLUGIN_NAME
    return argv


def remote_kv_event_endpoints(kv_events_config: str) -> list[str]:
    """The TCP endpoints of a `--kv-events-config` that are not loopback (the PUB
    endpoint, bound or connected, and the replay ROUTER; SGLang's defaults apply to
    keys left out: `sglang/srt/disaggregation/kv_events.py: KVEventsConfig`)."""
    try:
        cfg = json.loads(kv_events_config)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--kv-events-config is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise UsageError("--kv-events-config must be a JSON object")
    if cfg.get("publisher", "null") == "null":
        return []
    endpoints = [cfg.get("endpoint", "tcp://*:5557"), cfg.get("replay_endpoint")]
    return [e for e in endpoints if isinstance(e, str) and e.startswith("tcp://") and not _is_loopback(e)]


def _is_loopback(endpoint: str) -> bool:
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a wildcard (*), an interface name or a host name


def _dp_size(value: str | None) -> int:
    """`--dp-size` as SGLang will read it (1 when absent)."""
    if value is None:
        return 1
    try:
        size = int(value)
    except ValueError:
        raise UsageError(f"--dp-size must be a whole number, got {value!r}") from None
    if size < 1:
        raise UsageError(f"--dp-size must be at least 1, got {size}")
    return size


def _ports_free(ports: range) -> bool:
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


# Free now is not free when SGLang's processes bind later: keep clear of the ports other
# parties pick the same way. SGLang 0.5.23 picks its TCPStore (`nccl_port`) from
# 22000-29999 (`srt/utils/network.py`, `get_free_port_below_ephemeral`), and the kernel
# hands out ephemeral ports from 32768 (`/proc/sys/net/ipv4/ip_local_port_range`); a CI
# run here lost a server to "Address already in use" on an event port at 28119.
EVENT_PORT_RANGE = (10000, 21999)


def loopback_kv_events_config(dp_size: int, rng: random.Random | None = None) -> dict:
    """A KV-event feed on 127.0.0.1: `dp_size` consecutive free ports for the PUB
    sockets and as many for the replay ROUTERs (SGLang offsets ports by rank)."""
    rng = rng or random.Random()
    for _ in range(200):
        base = rng.randrange(EVENT_PORT_RANGE[0], EVENT_PORT_RANGE[1] - 2 * dp_size)
        if _ports_free(range(base, base + 2 * dp_size)):
            return {
                "publisher": "zmq", "bind": True,
                "endpoint": f"tcp://127.0.0.1:{base}",
                "replay_endpoint": f"tcp://127.0.0.1:{base + dp_size}",
            }
    raise UsageError("found no free loopback ports for the KV-event feed")


def ray_env_vars(environ, device: str | None) -> dict[str, str]:
    """What SGLang's scheduler actors need from this process's environment: Ray starts
    them from its own raylet, not from us, so nothing is inherited."""
    from sglang_ext.ray_actors import ENV_CPU_ACTORS

    keep = {k: v for k, v in environ.items()
            if k.startswith(("SGLANG_", "OMP_")) and k != "SGLANG_EXT_REPORTS"}
    if device == "cpu":
        keep[ENV_CPU_ACTORS] = "1"
    return keep


def _join_ray(server_args) -> None:
    import ray

    from sglang_ext.ray_actors import DEFAULT_FEED_HOST, ENV_FEED_HOST, runtime_env, work_around_ray_dp_declaration

    env = runtime_env(os.environ.get(ENV_FEED_HOST, DEFAULT_FEED_HOST),
                      ray_env_vars(os.environ, getattr(server_args, "device", None)))
    # address None: RAY_ADDRESS if set, else a new local cluster (Ray's own rule).
    ray.init(address=os.environ.get("RAY_ADDRESS"), runtime_env=env, include_dashboard=False)
    work_around_ray_dp_declaration()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        sglang_argv = translate_args(argv, os.environ)
        from sglang_ext.compat import IncompatibleSGLang, check_sglang

        check_sglang()
    except UsageError as exc:
        print(f"launch_server: {exc}", file=sys.stderr)
        return 2
    except IncompatibleSGLang as exc:
        print(f"launch_server: {exc}", file=sys.stderr)
        return 3

    from sglang.launch_server import run_server
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args
    from sglang.srt.utils import kill_process_tree

    load_plugins()
    server_args = prepare_server_args(sglang_argv)
    if getattr(server_args, "use_ray", False):
        _join_ray(server_args)
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
