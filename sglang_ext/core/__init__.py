"""The host-free routing core: global mirror, load ledger, policies, cost models, and
the event applier that feeds the mirror.

It imports neither SGLang nor ZeroMQ and never reads a clock (time arrives as
arguments), so the same code runs inside the live controller (`sglang_ext.controller`)
and in the cluster simulator (`cluster/`). `tests/test_core_boundary.py` holds it to that.
"""
