"""Calibrating the simulator's CPU cost model against real SGLang (`python -m cluster calibrate`).

One module per concept:
- `hostload`: wait for a quiet host before a live measurement (this machine has 2 cores
  that other work shares), and record the load average measured under;
- `probes`: controlled live probes of one SGLang rank (prefill time against prompt length,
  decode step time against batch size) through `/generate`;
- `fit`: least squares of the linear step-time model on the probes, with residuals, and
  the cost-model file it writes;
- `compare`: live against simulated replays of one held-out trace, error and PASS/MISS
  per metric against the targets;
- `plot`: the PNG figures.
The orchestration (servers, traces, replays) is `cluster/calibrate.py`.
"""
