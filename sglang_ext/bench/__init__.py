"""Micro-benchmarks of the routing core: `python -m sglang_ext.bench <subcommand>`.

Subcommands are registered in `__main__.SUBCOMMANDS`; each lives in its own module
exposing `add_arguments(parser)` and `run(args) -> int`.
"""
