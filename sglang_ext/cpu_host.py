"""What SGLang 0.5.23 needs in its environment to serve well on a CPU-only host.

Facts (checked on this project's 2-core hosts, no AMX):
- `SGLANG_USE_CPU_ENGINE=1`: without it the schedulers die at start with
  `No module named 'vllm'`.
- `SGLANG_CPU_OMP_THREADS_BIND` (cores per rank, `|`-separated) is honoured only on CPUs
  with AMX or on arm64 (`sglang/srt/distributed/bootstrap.py`, `_init_cpu_threads_env`:
  elsewhere it logs "init_cpu_threads_env ... is disabled" and binds nothing).
- So on other CPUs every rank's torch runs one intra-op thread per core: dp=2 on 2 cores
  runs four compute threads on two cores, and OpenMP's spin-waits burn the rest (seen
  here: half the CPU time in the kernel, a 544-token SmolLM2 prefill taking minutes).
  `OMP_NUM_THREADS` = cores / ranks gives each rank its share, bound or not.
- bf16 weights run through emulated kernels on CPUs without bf16 instructions: a
  544 x 576 x 1536 linear took 122 ms in bf16 against 23 ms in fp32 on one core here,
  so `--dtype float32` serves a bf16 checkpoint several times faster (an argument to
  SGLang, not an environment setting; the benchmarks pass it).
"""

from __future__ import annotations

import os

# The cost model the launcher uses on a CPU unless told otherwise: fitted online from the
# workers' reports, starting from the SmolLM2-on-this-CPU file (the H100 default weighs
# a prefill token against a decode step some 20 times differently).
CPU_COST_MODEL = "online:cpu-smollm2-135m"


def cpu_environment(dp_size: int, cores: int | None = None) -> dict[str, str]:
    """The variables a CPU server with `dp_size` ranks needs (values as strings)."""
    cores = cores or os.cpu_count() or 1
    ranks = max(1, dp_size)
    env = {
        "SGLANG_USE_CPU_ENGINE": "1",
        "OMP_NUM_THREADS": str(max(1, cores // ranks)),
    }
    if ranks > 1:
        # One core per rank when there are enough; else they share (honoured on AMX only).
        env["SGLANG_CPU_OMP_THREADS_BIND"] = "|".join(str(r % cores) for r in range(ranks))
    return env


def apply_cpu_defaults(environ, dp_size: int) -> None:
    """Set what a CPU server needs, keeping whatever the user set already."""
    for key, value in cpu_environment(dp_size).items():
        environ.setdefault(key, value)
