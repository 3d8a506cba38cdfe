"""The SGLang internals this package relies on, checked once at start-up.

The controller subclasses SGLang's `DataParallelController` and reuses its launch logic,
its dispatch table and `sock_send`/`sock_recv`; these moved between 0.5.3, 0.5.9 and
0.5.23. When they are not where we expect, we stop with one clear line instead of
failing later inside a child process.
"""

from __future__ import annotations

SUPPORTED_SGLANG = "0.5.23"

_REQUIRED = {
    "sglang.srt.managers.data_parallel_controller": [
        "DataParallelController", "run_data_parallel_controller_process", "LoadBalanceMethod",
    ],
    "sglang.srt.managers.io_struct": [
        "sock_send", "sock_recv", "TokenizedGenerateReqInput", "BatchTokenizedGenerateReqInput",
    ],
    "sglang.srt.plugins.hook_registry": ["HookRegistry", "HookType"],
}
_CONTROLLER_METHODS = [
    "dispatching_with_trace", "maybe_external_dp_rank_routing", "init_dispatcher",
    "send_control_message", "update_active_ranks",
]


class IncompatibleSGLang(RuntimeError):
    pass


def check_sglang() -> str:
    """Return SGLang's version, or raise IncompatibleSGLang with a one-line reason."""
    import importlib

    try:
        import sglang
    except ImportError:
        raise IncompatibleSGLang(
            f"SGLang is not installed; this controller needs sglang=={SUPPORTED_SGLANG} "
            "(CPU host: scripts/setup_cpu.sh; GPU host: pip install sglang==" + SUPPORTED_SGLANG + ")"
        ) from None
    version = getattr(sglang, "__version__", "unknown")
    if version != SUPPORTED_SGLANG:
        raise IncompatibleSGLang(
            f"SGLang {version} is installed but this controller supports only "
            f"sglang=={SUPPORTED_SGLANG} (its DataParallelController internals differ)"
        )
    for module_name, names in _REQUIRED.items():
        module = importlib.import_module(module_name)
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise IncompatibleSGLang(
                f"SGLang {version}: {module_name} lacks {', '.join(missing)}; the internals "
                "this controller relies on have moved"
            )
    controller_cls = importlib.import_module("sglang.srt.managers.data_parallel_controller").DataParallelController
    missing = [m for m in _CONTROLLER_METHODS if not hasattr(controller_cls, m)]
    if missing:
        raise IncompatibleSGLang(
            f"SGLang {version}: DataParallelController lacks {', '.join(missing)}; the "
            "internals this controller relies on have moved"
        )
    return version
