"""Deterministic cluster simulator that hosts the same Router and policies as the live
controller at 8-128 GPUs, with cost models, sweeps and reports."""
