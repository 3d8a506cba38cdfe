"""Start real SGLang with our data-parallel controller.

    python -m sglang_ext.launch_server --model-path models/tiny-llama --dp-size 2 \\
        --load-balance-method prefix_length_aware [--length-source predicted] \\
        [any other sglang.launch_server flag]

Accepts every `sglang.launch_server` flag. `--load-balance-method` takes SGLang's stock
values (run by our controller with the same semantics and a blocking event loop) and
ours; `--length-source` (max_new_tokens | predicted | oracle) is ours. Our values are
handed to the controller process through the environment, since SGLang's parser would
reject them; SGLang itself is told `round_robin`.
"""

from __future__ import annotations

import os
import sys

from sglang_ext.controller import ENV_LENGTH_SOURCE, ENV_POLICY
from sglang_ext.policies import POLICIES, LengthSource

SGLANG_ONLY_METHODS = ("auto", "follow_bootstrap_room")
PLUGIN_NAME = "prefix_length_dp"


class UsageError(Exception):
    pass


def _pop_flag(argv: list[str], flag: str) -> str | None:
    """Remove `flag VALUE` or `flag=VALUE` from argv; return VALUE (last one wins)."""
    value = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag:
            if i + 1 >= len(argv):
                raise UsageError(f"{flag} needs a value")
            value = argv[i + 1]
            del argv[i : i + 2]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
            del argv[i]
        else:
            i += 1
    return value


def translate_args(argv: list[str], environ: dict) -> list[str]:
    """Split our flags from SGLang's; set our settings in `environ`; return SGLang's argv."""
    argv = list(argv)
    method = _pop_flag(argv, "--load-balance-method")
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
    length_source = _pop_flag(argv, "--length-source")
    if length_source is not None:
        sources = [s.value for s in LengthSource]
        if length_source not in sources:
            raise UsageError(f"unknown --length-source {length_source!r}; valid: {', '.join(sources)}")
        environ[ENV_LENGTH_SOURCE] = length_source
    # Our plugin must load in every SGLang process; respect a user whitelist but add us.
    allowed = environ.get("SGLANG_PLUGINS")
    if allowed and PLUGIN_NAME not in allowed.split(","):
        environ["SGLANG_PLUGINS"] = allowed + "," + PLUGIN_NAME
    return argv


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
    try:
        run_server(server_args)
    finally:
        kill_process_tree(os.getpid(), include_parent=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
