"""The one interface every scheduling policy implements.

A policy sees a read-only `ClusterView` (per worker: how many tokens of *this* request
are already cached there, and the load ledger's figures) and returns a worker index. The
live controller and the cluster simulator each build that view; a policy never touches
sockets, processes or clocks: `now_s` arrives in the view, and randomness comes from a
seeded generator handed to the constructor.

Invariants a host relies on:
- `choose` returns an index in `range(view.num_workers)` whose `alive` flag is true
  (hosts never call `choose` when no worker is alive).
- `choose` does not mutate the view. A policy's own state (PREBLE's tree, a round-robin
  counter) is its business; it is updated in `choose`, `on_prefill_done` and `on_finished`.
- Per-decision cost must not grow with the number of requests served so far; policies
  that inherently do (PREBLE) say so in their docstring.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar

import numpy as np

from sglang_ext.core.namespaces import CacheNamespace


class LengthSource(str, Enum):
    """Where a policy reads a request's expected decode length from."""

    MAX_NEW_TOKENS = "max_new_tokens"
    PREDICTED = "predicted"
    ORACLE = "oracle"


@dataclass(slots=True)
class WorkerLoad:
    """One worker's entry in the load ledger (owned and updated by the host).

    All token counts are tokens, not pages. `pending_decode_tokens` sums, over the
    requests dispatched to the worker and not yet finished, the decode tokens each is
    still expected to generate (by the host's length source). The two KV figures come
    from the mirror and the in-flight prompts (the router refreshes them before each
    decision), never from a per-request sum.
    """

    requests: int = 0  # dispatched and not finished (queued + running)
    queued_requests: int = 0  # dispatched, prefill not yet done
    queued_prefill_tokens: int = 0  # uncached prompt tokens still to prefill
    pending_decode_tokens: int = 0  # expected remaining decode tokens of in-flight requests
    # KV tokens the in-flight requests hold now: their prompts' cached or prefilled
    # tokens, a prefix shared by several requests counted once (SGLang's "used" tokens,
    # without the tokens generated so far, which the host does not see).
    kv_tokens_used: int = 0
    # Tokens the worker's KV cache holds (in use or evictable), plus what its in-flight
    # requests will still add (uncached prompt, expected decode): what a placement
    # would have to fit beside.
    kv_tokens_committed: int = 0
    kv_capacity_tokens: int = 1  # the worker's KV capacity (max_total_num_tokens)
    alive: bool = True


_COLUMN_FIELDS = ("requests", "queued_requests", "queued_prefill_tokens", "pending_decode_tokens",
                  "kv_tokens_used", "kv_tokens_committed", "kv_capacity_tokens")


class LoadColumns:
    """The same figures as a list of `WorkerLoad`, one int64 numpy array per field (and a
    bool array `alive`), so a policy can score every worker in a few vector operations:
    a Python loop over 128 workers cost ~50 us per decision, half the decision budget.

    The router keeps one in step with the ledger's `WorkerLoad`s, re-copying only the
    workers that changed since the last decision (`Router.refresh_kv_figures`); for a
    hand-built view, `ClusterView.load_columns` builds one from the loads.

    Each numpy array is a view of a stdlib `array` (`_stores`, same order as `FIELDS`):
    numpy reads them as vectors, `sync` writes through the stdlib arrays, where a store
    from Python costs ~50 ns instead of ~85 ns into a numpy array (eight per changed
    worker, about three workers per decision).
    """

    FIELDS = _COLUMN_FIELDS + ("alive",)
    __slots__ = FIELDS + ("_stores",)

    def __init__(self, num_workers: int):
        stores = [array("q", bytes(8 * num_workers)) for _ in _COLUMN_FIELDS]
        stores.append(array("b", bytes([1]) * num_workers))
        self._stores = tuple(stores)
        for name, store in zip(_COLUMN_FIELDS, stores):
            setattr(self, name, np.frombuffer(store, dtype=np.int64))
        self.alive = np.frombuffer(stores[-1], dtype=bool)

    def __reduce__(self):
        # A copy (pickle, deepcopy) must keep the numpy arrays views of its own stores,
        # or `sync` would write where no policy reads.
        return _columns_from_stores, (self._stores,)

    @classmethod
    def from_loads(cls, loads: Sequence[WorkerLoad]) -> LoadColumns:
        out = cls(len(loads))
        for w, load in enumerate(loads):
            out.sync(w, load)
        return out

    def sync(self, worker: int, load: WorkerLoad) -> None:
        """Copy one worker's figures in."""
        requests, queued, prefill, decode, used, committed, capacity, alive = self._stores
        requests[worker] = load.requests
        queued[worker] = load.queued_requests
        prefill[worker] = load.queued_prefill_tokens
        decode[worker] = load.pending_decode_tokens
        used[worker] = load.kv_tokens_used
        committed[worker] = load.kv_tokens_committed
        capacity[worker] = load.kv_capacity_tokens
        alive[worker] = load.alive


def _columns_from_stores(stores: tuple) -> LoadColumns:
    out = LoadColumns(len(stores[0]))
    for mine, theirs in zip(out._stores, stores):
        mine[:] = theirs
    return out


@dataclass(slots=True)
class Request:
    """What a policy may know about one request."""

    rid: str
    input_ids: Sequence[int]
    max_new_tokens: int
    predicted_output_tokens: int | None = None
    oracle_output_tokens: int | None = None
    # SGLang's cache namespace of the request (cache salt, LoRA, extra key); None: the
    # plain one. Cached pages of another namespace are a miss (`core/namespaces.py`).
    namespace: CacheNamespace | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)

    def expected_output_tokens(self, source: LengthSource) -> int:
        """The decode length to plan for; falls back to `max_new_tokens` when missing."""
        if source is LengthSource.PREDICTED and self.predicted_output_tokens is not None:
            return self.predicted_output_tokens
        if source is LengthSource.ORACLE and self.oracle_output_tokens is not None:
            return self.oracle_output_tokens
        return self.max_new_tokens


@dataclass(slots=True)
class ClusterView:
    """A read-only snapshot a policy decides on.

    `cached_tokens[w]` is the length of the longest prefix of the request's prompt that
    worker `w` holds in its KV cache (from the global mirror), `loads[w]` its ledger entry.
    `evictable_tokens[w]` is what worker `w` could free without touching pages in use,
    when the host knows it (else None).
    """

    now_s: float
    cached_tokens: Sequence[int]
    loads: Sequence[WorkerLoad]
    page_size: int = 1
    evictable_tokens: Sequence[int] | None = None
    extra: dict = field(default_factory=dict)
    # `loads` as arrays, when the host keeps them (the router does); else built on demand.
    columns: LoadColumns | None = None

    @property
    def num_workers(self) -> int:
        return len(self.loads)

    def load_columns(self) -> LoadColumns:
        """`loads` as numpy arrays (see `LoadColumns`); read-only like the rest of the view."""
        if self.columns is None:
            self.columns = LoadColumns.from_loads(self.loads)
        return self.columns

    def alive_workers(self) -> list[int]:
        return [w for w, load in enumerate(self.loads) if load.alive]


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """Options shared by all policies; each policy reads the ones it needs.

    `cost_model` (a `sglang_ext.core.cost_model.CostModel`, None: the default file) is the
    instance the host keeps current: with `--cost-model online` the router re-fits it in
    place, so a policy reads its coefficients at each decision rather than copying them.
    """

    num_workers: int
    length_source: LengthSource = LengthSource.MAX_NEW_TOKENS
    seed: int = 0
    cost_model: object | None = None


class Policy(ABC):
    """Base class: one subclass per module in `sglang_ext/core/policies/`, named as on the CLI."""

    name: ClassVar[str]
    # False for content-blind policies: the host may skip the prefix match for them.
    uses_prefix_match: ClassVar[bool] = True
    # True: the host holds a request whose prefix on its worker is still being prefilled
    # for another request there, until that prefill is done (`sglang_ext/core/prefix_hold.py`).
    # Off for the baselines, which reproduce other systems' behaviour.
    holds_for_prefix: ClassVar[bool] = False

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.rng = random.Random(config.seed)

    @abstractmethod
    def choose(self, request: Request, view: ClusterView) -> int:
        """Return the worker that should serve `request`."""

    def on_prefill_done(self, rid: str, worker: int, now_s: float) -> None:
        """The worker finished the request's prefill (first token produced)."""

    def on_finished(self, rid: str, worker: int, output_tokens: int, now_s: float) -> None:
        """The worker finished the request."""

    def on_expired(self, rid: str, worker: int, now_s: float) -> None:
        """The host gave up on hearing that the request finished (a lost report); forget
        it without learning from it."""

    def on_worker_reset(self, worker: int, now_s: float) -> None:
        """`worker` went down or came (back) up (`Router.set_alive`): whatever the policy
        keeps of it (a tree of what it routed there) is void; it starts empty."""


def lowest(costs: np.ndarray) -> list[int]:
    """The indices holding the minimum of `costs`, ascending (usually one).

    `argmin` on a slice, not `min()` / `flatnonzero(costs == min)`: numpy's reductions
    cost 2-7 us each on 128 items, `argmin` under 0.5 us.
    """
    w = int(costs.argmin())
    best = costs[w]
    tail = costs[w + 1 :]
    if not tail.size or tail[tail.argmin()] != best:
        return [w]
    return [w] + (w + 1 + np.flatnonzero(tail == best)).tolist()


def all_alive(alive: np.ndarray) -> bool:
    """True when every worker is alive (a bool array's `argmin` is its first False)."""
    return bool(alive[alive.argmin()])


def alive_only(key: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """`key` as float64 with dead workers at +inf (they never hold the minimum while a
    worker lives); `key` itself when every worker is alive."""
    if all_alive(alive):
        return key
    out = key.astype(np.float64)
    out[~alive] = np.inf
    return out


def least_loaded(candidates: Sequence[int], key) -> int:
    """The candidate with the smallest key; ties go to the lowest index (deterministic)."""
    return min(candidates, key=lambda w: (key(w), w))
