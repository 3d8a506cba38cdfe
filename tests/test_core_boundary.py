"""The routing core stays host-free: importing every module of `sglang_ext.core` loads
neither SGLang nor ZeroMQ (the simulator and the controller share it as is)."""

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import sglang_ext.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "sglang_ext.core.")]
for name in names:
    importlib.import_module(name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("sglang", "zmq"))
print(len(names), ",".join(loaded))
"""


def test_the_core_imports_neither_sglang_nor_zmq():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout.split()
    assert int(out[0]) >= 10  # the walk found the core's modules (router, ledger, policies, ...)
    assert out[1:] == [], f"the core loaded {out[1:]}"
