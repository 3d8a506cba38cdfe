"""Workload traces: the versioned JSONL format, ReAct/toolbench/ShareGPT generators, and
replay against a live SGLang server or the simulator."""
