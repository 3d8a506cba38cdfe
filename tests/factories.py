"""Small factories for policy and router tests: hand-built views, loads and requests."""

from __future__ import annotations

from sglang_ext.core.policies import ClusterView, LengthSource, PolicyConfig, Request, WorkerLoad


def make_loads(n: int, capacity: int = 100_000, **per_worker) -> list[WorkerLoad]:
    """`n` workers; keyword args give per-worker lists, e.g. requests=[3, 0]."""
    loads = [WorkerLoad(kv_capacity_tokens=capacity) for _ in range(n)]
    for field_name, values in per_worker.items():
        for load, value in zip(loads, values):
            setattr(load, field_name, value)
    return loads


def make_view(loads: list[WorkerLoad], cached: list[int] | None = None, now_s: float = 0.0,
              page_size: int = 1) -> ClusterView:
    return ClusterView(now_s, cached if cached is not None else [0] * len(loads), loads, page_size)


def make_request(prompt_tokens: int = 100, max_new_tokens: int = 64, rid: str = "r0",
                 prefix: list[int] | None = None, predicted: int | None = None,
                 oracle: int | None = None) -> Request:
    ids = list(prefix or [])
    ids += list(range(10_000, 10_000 + max(0, prompt_tokens - len(ids))))
    return Request(rid, ids, max_new_tokens, predicted, oracle)


def make_config(n: int, length_source: LengthSource = LengthSource.MAX_NEW_TOKENS, seed: int = 0) -> PolicyConfig:
    return PolicyConfig(n, length_source, seed)
