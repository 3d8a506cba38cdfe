"""SGLang's Ray path uses our controller: proven on the real imported classes.

`RayDataParallelController` (`sglang/srt/ray/data_parallel_controller.py`) subclasses
whatever `sglang.srt.managers.data_parallel_controller.DataParallelController` is when
its module is first imported. Our plugin replaces that name (a class REPLACE hook), so
the Ray controller's base is ours only if the plugins are loaded first. SGLang's Ray
launcher imports the module lazily, inside `RayEngine._launch_dp_scheduler_processes`
(`sglang/srt/ray/engine.py`), after `Engine._launch_subprocesses` has called
`load_plugins()`. Each check runs in a fresh interpreter: import order is the point.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("sglang")
pytest.importorskip("ray", reason="ray is not installed (requirements/ray.txt)")

# What SGLang's `--use-ray` launch imports before the controller class is needed, then
# the plugins (as `sglang_ext.launch_server.main` and `Engine._launch_subprocesses` do).
PROBE = r"""
import json, sys
import sglang.launch_server, sglang.srt.ray.http_server, sglang.srt.ray.engine
lazy = "sglang.srt.ray.data_parallel_controller" not in sys.modules
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.ray.data_parallel_controller import RayDataParallelController as Ray
from sglang_ext.controller import PrefixAwareController as Ours
own = [name for name, value in vars(Ours).items() if callable(value) and not name.startswith("__")]
print(json.dumps({
    "lazy": lazy,
    "mro": [f"{c.__module__}.{c.__qualname__}" for c in Ray.__mro__],
    "shadowed": [n for n in own if getattr(Ray, n, None) is not getattr(Ours, n)],
    "ours_checked": own,
}))
"""


def _probe(env_extra: dict | None = None) -> dict:
    import os

    env = dict(os.environ)
    env.update(env_extra or {})
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_ray_controller_has_our_controller_as_its_base_and_runs_our_methods():
    found = _probe()
    # The launch path leaves the Ray controller's module unimported until it is needed.
    assert found["lazy"]
    assert found["mro"][:3] == [
        "sglang.srt.ray.data_parallel_controller.RayDataParallelController",
        "sglang_ext.controller.PrefixAwareController",
        "sglang.srt.managers.data_parallel_controller.DataParallelController",
    ]
    # Ray's subclass overrides only the launch methods; the event loop, the dispatch
    # entry and our routing resolve to ours.
    assert {"event_loop", "run_once", "dispatching_with_trace", "dispatch_by_policy", "_init_ours"} <= set(
        found["ours_checked"])
    assert found["shadowed"] == []


def test_with_our_plugin_filtered_out_the_ray_controller_keeps_the_stock_base():
    # The check above would hold by construction if the probe could not tell the two apart.
    found = _probe({"SGLANG_PLUGINS": "some_other_plugin"})
    assert found["mro"][1] == "sglang.srt.managers.data_parallel_controller.DataParallelController"
    assert "dispatch_by_policy" in found["shadowed"]
