"""`python -m sglang_ext.bench SUBCOMMAND [options]`: routing-core micro-benchmarks.

Examples:
    python -m sglang_ext.bench policies
    python -m sglang_ext.bench policies --workers 2,8 --requests 2000 --out runs/b.json
    python -m sglang_ext.bench shared-prefix --models tiny --seeds 1
    python -m sglang_ext.bench live --seeds 1 2 3
    python -m sglang_ext.bench soak --duration-s 600
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module exposing add_arguments(parser) and run(args) -> int, one-line help).
# Adding a subcommand is one line here plus its module.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "policies": ("sglang_ext.bench.policies",
                 "decision time of every registered policy vs workers and request rate"),
    "mirror": ("sglang_ext.bench.mirror",
               "global radix mirror: decision-path time, event pages/s, memory per token"),
    "live-lengths": ("sglang_ext.bench.live_lengths",
                     "real SGLang dp=2: max_new_tokens vs predicted vs oracle lengths (and round robin)"),
    "live": ("sglang_ext.bench.live",
             "real SGLang on CPU: our policies and the SGLang Model Gateway on the same traces, report + plots"),
    "shared-prefix": ("sglang_ext.bench.shared_prefix",
                      "real SGLang dp=2: a few long shared prefixes x short questions, policies vs round robin"),
    "predictor-gil": ("sglang_ext.bench.predictor_gil",
                      "the length predictor's thread vs process: dispatch latency of the controller's event loop"),
    "soak": ("sglang_ext.bench.soak",
             "real SGLang dp=2: a long Locust ReAct run; controller memory, mirror, in-flight, latency over time"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sglang_ext.bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    modules = {}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        # Every module is imported to declare its options (for --help); keep their
        # top-level imports light.
        modules[name] = importlib.import_module(module_name)
        modules[name].add_arguments(sub_parser)
    args = parser.parse_args(argv)
    return modules[args.subcommand].run(args)


if __name__ == "__main__":
    sys.exit(main())
