"""SGLang plugin entry point (group `sglang.srt.plugins`, name `prefix_length_dp`).

SGLang calls `register()` in each of its processes. It replaces the stock
`DataParallelController` with ours and hooks the schedulers' output streaming so that
workers report finished requests to it (`completions.py`).
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

CONTROLLER_TARGET = "sglang.srt.managers.data_parallel_controller.DataParallelController"
STREAM_OUTPUT_TARGET = (
    "sglang.srt.managers.scheduler_components.output_streamer.SchedulerOutputStreamer.stream_output"
)

INIT_INFO_TARGET = "sglang.srt.managers.scheduler.Scheduler.get_init_info"
KV_PUBLISHER_TARGET = "sglang.srt.disaggregation.kv_events.ZmqEventPublisher.__init__"


def register() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    from sglang_ext.compat import check_sglang

    check_sglang()
    from sglang_ext.controller import PrefixAwareController

    from sglang_ext.completions import stream_output_hook

    HookRegistry.register(CONTROLLER_TARGET, PrefixAwareController, HookType.REPLACE)
    # Workers report prefill-done and finished requests to our controller (no-op unless
    # our controller set the report endpoint).
    HookRegistry.register(STREAM_OUTPUT_TARGET, stream_output_hook, HookType.BEFORE)
    # In SGLang's Ray actors each rank binds its feeds on its own node and advertises
    # them in its init info (no-ops elsewhere; see feeds.py).
    from sglang_ext.feeds import init_info_hook, kv_event_endpoint_hook

    HookRegistry.register(INIT_INFO_TARGET, init_info_hook, HookType.AFTER)
    HookRegistry.register(KV_PUBLISHER_TARGET, kv_event_endpoint_hook, HookType.BEFORE)
