"""Scheduling policies, one module each, registered by their command-line name.

`make_policy(name, config)` builds one; `POLICY_NAMES` lists the valid names (stock
SGLang methods first). Hosts: `sglang_ext.core.router.Router` (live controller) and the
cluster simulator.
"""

from __future__ import annotations

from sglang_ext.core.policies.base import (
    ClusterView,
    LengthSource,
    Policy,
    PolicyConfig,
    Request,
    WorkerLoad,
)
from sglang_ext.core.policies.cache_aware import CacheAware
from sglang_ext.core.policies.kv_cost import KvCost
from sglang_ext.core.policies.lmetric import LMetric
from sglang_ext.core.policies.preble import Preble
from sglang_ext.core.policies.prefix_length_aware import PrefixLengthAware
from sglang_ext.core.policies.random_choice import RandomChoice
from sglang_ext.core.policies.round_robin import RoundRobin
from sglang_ext.core.policies.total_requests import TotalRequests
from sglang_ext.core.policies.total_tokens import TotalTokens

# SGLang's own --load-balance-method values that our controller implements itself.
STOCK_METHODS = ("round_robin", "total_requests", "total_tokens")

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RoundRobin, TotalRequests, TotalTokens, PrefixLengthAware,
                              CacheAware, KvCost, LMetric, Preble, RandomChoice)
}


def policy_names() -> list[str]:
    return list(POLICIES)


class UnknownPolicyError(ValueError):
    pass


def make_policy(name: str, config: PolicyConfig, **options) -> Policy:
    try:
        cls = POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown load-balance method {name!r}; valid: {', '.join(POLICIES)}"
        ) from None
    return cls(config, **options)


__all__ = [
    "ClusterView", "LengthSource", "Policy", "PolicyConfig", "Request", "WorkerLoad",
    "POLICIES", "STOCK_METHODS", "make_policy", "policy_names", "UnknownPolicyError",
]
