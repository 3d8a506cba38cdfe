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


# SGLang's Ray launcher declares `dist_init_addr` on the config it already published;
# SGLang refuses that, so every dp>1 Ray launch fails (sglang/srt/ray/engine.py:469).
WORKAROUND = r"""
import json, sys
from sglang.srt.runtime_context import publish
from sglang.srt.server_args import ServerArgs
import sglang.srt.ray.engine as ray_engine
from sglang_ext.ray_actors import work_around_ray_dp_declaration
args = ServerArgs(model_path=sys.argv[1], device="cpu", dp_size=2)
publish(args, role="tokenizer")  # as Engine._launch_subprocesses does before the DP launch
def attempt(source):
    try:
        ray_engine.declare_resolution(args, source, dist_init_addr="127.0.0.1:1")
        return "ok"
    except ValueError as exc:
        return str(exc)[:60]
before = attempt("ray.dp_controller")
work_around_ray_dp_declaration()
print(json.dumps({"before": before, "after": attempt("ray.dp_controller"), "other": attempt("someone.else")}))
"""


def test_sglangs_post_publish_declaration_fails_and_the_workaround_skips_only_that_one():
    from conftest import tiny_model

    done = subprocess.run([sys.executable, "-c", WORKAROUND, tiny_model()], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["before"].startswith("ray.dp_controller: declared on the published config")
    assert found["after"] == "ok"
    assert found["other"].startswith("someone.else: declared on the published config")


def test_feed_host_flag_needs_the_ray_path_and_a_specific_address():
    from sglang_ext.launch_server import UsageError, translate_args

    with pytest.raises(UsageError, match="applies to SGLang's Ray path only"):
        translate_args(["--feed-host", "10.0.0.2", "--kv-mirror", "approximate"], {})
    with pytest.raises(UsageError, match="every interface"):
        translate_args(["--use-ray", "--feed-host", "0.0.0.0", "--kv-mirror", "approximate"], {})
    with pytest.raises(UsageError, match="must be an IP address"):
        translate_args(["--use-ray", "--feed-host", "eth0", "--kv-mirror", "approximate"], {})
    env: dict = {}
    argv = translate_args(["--use-ray", "--feed-host", "ray-node-ip", "--kv-mirror", "approximate"], env)
    assert env["SGLANG_EXT_FEED_HOST"] == "ray-node-ip" and "--feed-host" not in argv and "--use-ray" in argv


def test_the_actors_get_our_settings_but_never_the_drivers_report_path():
    from sglang_ext.launch_server import ray_env_vars

    env = ray_env_vars({"SGLANG_EXT_POLICY": "lmetric", "SGLANG_EXT_REPORTS": "ipc:///tmp/x",
                        "OMP_NUM_THREADS": "1", "HOME": "/root"}, "cpu")
    assert env == {"SGLANG_EXT_POLICY": "lmetric", "OMP_NUM_THREADS": "1", "SGLANG_EXT_RAY_CPU": "1"}
