"""The host-independent routing core: global mirror + load ledger + policy.

The live controller (`controller.py`, over local processes or Ray actors) and the cluster
simulator both drive a `Router`: they call `route` for each request, and report
`prefill_done` / `finished` as the workers do. The router never reads a clock or
touches a socket: `now_s` is passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sglang_ext.core.cost_model import DEFAULT_COST_MODEL, ONLINE, CostModel, OnlineCostFit, load_cost_model
from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.inflight import InflightPrefixes
from sglang_ext.core.ledger import FinishedRequest, LoadLedger
from sglang_ext.core.load_check import LoadCrossCheck, ReportedLoad
from sglang_ext.core.namespaces import UNCREDITED
from sglang_ext.core.prefix_hold import PrefixHolds
from sglang_ext.core.policies import LengthSource, Policy, PolicyConfig, Request, make_policy
from sglang_ext.core.policies.base import ClusterView, LoadColumns
from sglang_ext.core.token_bytes import pack

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouterConfig:
    """How a router is built. Field names carry units; see `--help` of the launcher."""

    policy: str = "prefix_length_aware"
    num_workers: int = 2
    page_size: int = 1
    # One figure for every worker, or one per worker (heterogeneous workers).
    kv_capacity_tokens: int | tuple[int, ...] = 65536
    length_source: LengthSource = LengthSource.MAX_NEW_TOKENS
    # True: the mirror is fed by SGLang's KV events. False: approximate mode, the
    # router inserts each routed prompt itself and evicts by LRU within capacity.
    exact_mirror: bool = False
    ledger_expiry_s: float = 600.0
    # Requests sent to a worker this long before it reported itself idle are finished
    # (see `load_check.py`).
    load_check_grace_s: float = 2.0
    seed: int = 0
    # A cost-model file name or path (`sglang_ext/core/cost_models/`), or `online` /
    # `online:NAME`: fitted from the workers' reports, starting from and bounded around
    # NAME (default file if omitted).
    cost_model: str = DEFAULT_COST_MODEL
    # Hold a request whose prefix on its worker is still being prefilled for another
    # request there (policies with `holds_for_prefix`; `prefix_hold.py`). Measured: it
    # helped live on CPU (SmolLM2, docs/results/shared_prefix/); in the simulator at
    # 8-16 GPUs and high rates it cost TTFT, as a released request joins the back of
    # its worker's queue (docs/results/cluster/).
    prefix_holds: bool = True


@dataclass(frozen=True)
class Decision:
    """What `Router.route` decided: the worker, the per-worker cached tokens the decision
    saw (mirror or in-flight prompts, see `Router.cached_tokens`), and whether the host
    must hold the request until `Router.take_released` names it."""

    worker: int
    cached_tokens: list[int]
    held: bool = False


def build_cost_model(spec: str) -> tuple[CostModel, OnlineCostFit | None]:
    """The cost model a `RouterConfig.cost_model` names, and its online fit if asked for.
    Raises `CostModelError` (one line) for an unknown name or a bad file."""
    if spec == ONLINE or spec.startswith(ONLINE + ":"):
        model = load_cost_model(spec.partition(":")[2] or DEFAULT_COST_MODEL)
        return model, OnlineCostFit(model)
    return load_cost_model(spec), None


class Router:
    def __init__(self, config: RouterConfig, policy: Policy | None = None):
        self.config = config
        self.cost_model, self.cost_fit = build_cost_model(config.cost_model)
        self.policy = policy or make_policy(
            config.policy,
            PolicyConfig(config.num_workers, config.length_source, config.seed, self.cost_model),
        )
        self._prefilled_tokens = [0] * config.num_workers  # cumulative, for the online fit
        self.tree = GlobalTree(config.num_workers, config.page_size)
        self.inflight = InflightPrefixes(config.num_workers, config.page_size)
        self.ledger = LoadLedger(config.num_workers, config.kv_capacity_tokens, config.ledger_expiry_s)
        self.load_check = LoadCrossCheck(config.num_workers, config.load_check_grace_s)
        self.holds = PrefixHolds(config.num_workers)
        # Exact mirror only: per worker, the prompts of requests whose stored pages the
        # KV events show under another namespace (an extra key that names no adapter,
        # `namespaces.py`), bounded by LRU within the worker's capacity. Made on the
        # first such request; until then the plain path pays nothing for it.
        self.ambiguous: GlobalTree | None = None
        self._zeros = [0] * config.num_workers
        # The ledger's loads as arrays for vectorised policies, re-copied per decision for
        # the workers that changed only (see `refresh_kv_figures`).
        self.columns = LoadColumns.from_loads(self.ledger.loads)
        self._last_mirror_tokens: list[int] = self._zeros
        logger.info(
            "router: policy=%s workers=%d mirror=%s length_source=%s cost_model=%s",
            config.policy, config.num_workers,
            "exact (KV events)" if config.exact_mirror else "approximate (insert on dispatch, LRU)",
            config.length_source.value, config.cost_model,
        )

    def route(self, request: Request, now_s: float) -> Decision:
        """Pick a worker for `request` and record the placement in ledger and mirror.

        If the policy holds requests for their prefix (`Policy.holds_for_prefix`) and the
        request's prefix on that worker is only the prompt of a request still waiting for
        its prefill there, the decision is `held`: the host keeps the request until
        `take_released` names it, then sends it to `ledger.worker_of(rid)`.
        """
        # The prompt is packed once (4 bytes per token, see `token_bytes`) and shared by
        # both trees' matches and inserts: each would otherwise read SGLang's array('q')
        # again (~1 ns per token per pass, 8K-token prompts).
        packed = self._pack(request)
        if self.policy.uses_prefix_match and packed is not None:
            cached = self.cached_tokens(request, packed)
        else:
            cached = list(self._zeros)
        self.refresh_kv_figures()
        view = ClusterView(now_s, cached, self.ledger.loads, self.config.page_size, columns=self.columns)
        worker = self.policy.choose(request, view)
        leader = None
        if self.policy.holds_for_prefix and self.config.prefix_holds and self.config.exact_mirror and cached[worker]:
            namespace = None if request.namespace is None else request.namespace.full_key
            leader = self.holds.leader_for(request.input_ids, worker, self._last_mirror_tokens[worker], namespace,
                                           packed)
        self.record_dispatch(request, worker, cached[worker], now_s, packed)
        if leader is not None:
            self.holds.hold(request.rid, leader, now_s)
        return Decision(worker, cached, leader is not None)

    def snapshot(self) -> dict:
        """The router's state as plain data (JSON-ready, msgspec structs aside): the
        controller's status file and the simulator's traces both show it."""
        tree = self.tree
        return {
            "policy": self.config.policy,
            "length_source": self.config.length_source.value,
            "mirror": "exact" if self.config.exact_mirror else "approximate",
            "loads": [dict(
                requests=ld.requests, queued_requests=ld.queued_requests,
                queued_prefill_tokens=ld.queued_prefill_tokens,
                pending_decode_tokens=ld.pending_decode_tokens, kv_tokens_used=ld.kv_tokens_used,
                kv_tokens_committed=ld.kv_tokens_committed,
                kv_capacity_tokens=ld.kv_capacity_tokens, alive=ld.alive,
            ) for ld in self.ledger.loads],
            "in_flight": len(self.ledger),
            "expired": self.ledger.expired,
            "prefix_holds": {"held_now": len(self.holds), "held_total": self.holds.holds,
                             "timeouts": self.holds.timeouts},
            "tree": {
                "pages_indexed": tree.num_pages_indexed(),
                "tokens_held": [tree.tokens_held(w) for w in range(tree.num_workers)],
                "uncertain_mask": tree.uncertain_mask, "skipped_pages": tree.skipped_pages,
                "namespaces": len(tree.namespaces()),
                "ambiguous_tokens": (None if self.ambiguous is None
                                     else [self.ambiguous.tokens_held(w) for w in range(tree.num_workers)]),
            },
            "load_check": self.load_check.status(),
            "cost_model": (self.cost_fit.status() if self.cost_fit is not None
                           else {"name": self.cost_model.name}),
        }

    def take_released(self, now_s: float) -> list[str]:
        """Held requests that may be sent now (see `route`)."""
        return self.holds.take_released(now_s)

    def _pack(self, request: Request) -> bytes | None:
        """The request's prompt packed, or None (logged) when it is not token ids."""
        try:
            return pack(request.input_ids)
        except (OverflowError, TypeError) as exc:
            # Ids outside [0, 2**32) are no tokens of any model: nothing can be cached.
            logger.warning("router: rid=%s: prompt is not token ids (%s); counted as uncached",
                           request.rid, exc)
            return None

    def cached_tokens(self, request: Request, packed: bytes | None = None) -> list[int]:
        """Per worker, the prefix of the request that is cached there or will be by the
        time the request runs: the mirror's match, or the longest prefix shared with one
        of the worker's in-flight prompts (queued ones are about to be cached, running
        ones are cached and locked), whichever is longer. Workers with an unrepaired
        event gap count as holding only their in-flight prompts (their mirror is not
        trusted blindly). `packed`: the prompt already packed (`token_bytes.pack`).

        Both matches stay within the request's cache namespace (`namespaces.py`): pages
        of another namespace are a miss on the worker. From the mirror fed by events, a
        request is credited only where the events identify its namespace, and a
        plain-namespace match on a worker counts only where it goes deeper than the
        prompts of the ambiguous requests sent there (see `_discount_ambiguous`)."""
        if packed is None:
            packed = self._pack(request)
            if packed is None:
                return list(self._zeros)
        if request.namespace is not None:
            return self._cached_in_namespace(request.namespace, packed)
        cached = self.tree.match_packed(packed)
        if self.ambiguous is not None:
            self._discount_ambiguous(cached, packed, None)
        mask = self.tree.uncertain_mask
        if not mask:  # the usual case: the larger of both matches, merged in C
            self._last_mirror_tokens = cached
            return self.inflight.match_packed(packed, floor=cached)
        return self._merge_uncertain(cached, self.inflight.match_packed(packed), mask)

    def _cached_in_namespace(self, namespace, packed: bytes) -> list[int]:
        """`cached_tokens` of a request with a cache namespace (`CacheNamespace`)."""
        full = namespace.full_key
        if not self.config.exact_mirror:
            cached = self.tree.match_packed(packed, namespace=full)  # inserted by us: exact
        else:
            key = namespace.event_key
            if key is UNCREDITED:
                cached = list(self._zeros)  # the events cannot identify its pages: none count
            else:
                cached = self.tree.match_packed(packed, namespace=key)
                if self.ambiguous is not None:
                    self._discount_ambiguous(cached, packed, key)
        inflight = self.inflight.match_packed(packed, namespace=full)
        return self._merge_uncertain(cached, inflight, self.tree.uncertain_mask)

    def _discount_ambiguous(self, cached: list[int], packed: bytes, key) -> None:
        """Zero the mirror's match on a worker where it ends within the prompt of an
        ambiguous request sent there (in place).

        The events show those requests' pages as if they were namespace `key`'s (same
        tokens, same hashes), so a match that ends within such a prompt may be entirely
        theirs. A match that goes deeper is genuine: its last page was stored by a
        request of `key` (no ambiguous prompt reaches it), and SGLang stores a page only
        under its own namespace's path, so every page above it is `key`'s too.
        Ambiguous requests' decode pages are not recorded (the prompts are what later
        requests share).
        """
        shadow = self.ambiguous.match_packed(packed, namespace=key)
        for w, depth in enumerate(shadow):
            if depth and cached[w] <= depth:
                cached[w] = 0

    def _merge_uncertain(self, cached: list[int], inflight: list[int], mask: int) -> list[int]:
        """The larger of the mirror's and the in-flight match per worker; workers in
        `mask` (an unrepaired event gap) count their in-flight match only."""
        self._last_mirror_tokens = [0 if mask >> w & 1 else c for w, c in enumerate(cached)]
        for w, pending in enumerate(inflight):
            if mask >> w & 1 or pending > cached[w]:
                cached[w] = pending
        return cached

    def refresh_kv_figures(self) -> None:
        """Derive the workers' KV figures (see `WorkerLoad`) from the mirror and the
        in-flight prompts, and copy their loads into `columns`; run before each
        decision, since KV events change the mirror behind the router's back.

        Only workers whose inputs changed since the last decision are visited: the
        ledger, the mirror and the in-flight union each keep a bitmask of the workers
        they changed. (Refreshing all of them cost ~0.5 us per worker per decision, 60 us
        at 128 workers, while a decision usually changes one worker.) This relies on
        the ledger's `WorkerLoad`s being written only by the ledger and `_refresh_kv`.
        """
        dirty = self.ledger.take_changed() | self.tree.take_held_changed() | self.inflight.take_changed()
        loads, columns, refresh = self.ledger.loads, self.columns, self._refresh_kv
        while dirty:
            low = dirty & -dirty
            dirty ^= low
            w = low.bit_length() - 1
            refresh(w)
            columns.sync(w, loads[w])

    def _refresh_kv(self, worker: int) -> None:
        # In exact mode the mirror has not seen queued prompts yet, so their uncached
        # tokens are added; the approximate mirror inserted them at dispatch.
        load = self.ledger.loads[worker]
        queued = load.queued_prefill_tokens
        load.kv_tokens_used = max(0, self.inflight.tokens(worker) - queued)
        load.kv_tokens_committed = (self.tree.tokens_held(worker) + (queued if self.config.exact_mirror else 0)
                                    + load.pending_decode_tokens)

    def record_dispatch(self, request: Request, worker: int, cached_tokens: int, now_s: float,
                        packed: bytes | None = None) -> None:
        """Account for a request sent to `worker` (by the policy, or pinned by the client).
        `packed`: the prompt already packed by `route` (None: pack it here)."""
        expected = request.expected_output_tokens(self.config.length_source)
        previous = self.ledger.worker_of(request.rid)
        if previous is not None:  # a retried rid: the ledger forgets its old placement too
            self.inflight.remove(request.rid, previous)
            self.holds.prefilled(request.rid, previous)
        if self.cost_fit is not None:
            ahead = self.ledger.loads[worker].queued_prefill_tokens + max(0, request.prompt_tokens - cached_tokens)
            self.cost_fit.on_dispatch(request.rid, now_s, ahead)
        self.ledger.on_dispatch(request.rid, worker, request.prompt_tokens, cached_tokens, expected, now_s)
        namespace = request.namespace
        full = None if namespace is None else namespace.full_key
        if packed is None:
            try:
                packed = pack(request.input_ids)
            except (OverflowError, TypeError):
                pass  # not token ids (logged by `route` / `cached_tokens`): nothing to record
        if packed is not None:  # b"" (an empty prompt) is recorded, as any other
            # Packed once here for the holds too: a follower is compared with it by memcmp.
            # (A prompt of no token ids can lead no one, so it is not queued there.)
            self.holds.queued(request.rid, worker, request.input_ids, full, packed)
            self.inflight.add(request.rid, worker, request.input_ids, packed, full)
            capacity = self.ledger.loads[worker].kv_capacity_tokens
            if not self.config.exact_mirror:
                self.tree.insert_approximate_packed(worker, packed, capacity, full)
            elif namespace is not None and namespace.collapses_into is not UNCREDITED:
                if self.ambiguous is None:
                    self.ambiguous = GlobalTree(self.config.num_workers, self.config.page_size)
                self.ambiguous.insert_approximate_packed(worker, packed, capacity, namespace.collapses_into)
        self._refresh_kv(worker)

    def prefill_done(self, rid: str, now_s: float) -> None:
        worker = self.ledger.worker_of(rid)
        uncached = self.ledger.queued_uncached_tokens(rid)
        if self.ledger.on_prefill_done(rid) and worker is not None:
            self.holds.prefilled(rid, worker)
            self._prefilled_tokens[worker] += uncached
            if self.cost_fit is not None:
                self.cost_fit.on_prefill_done(rid, now_s, self.ledger.loads[worker].requests,
                                              self._prefilled_tokens[worker])
            self._refresh_kv(worker)
            self.policy.on_prefill_done(rid, worker, now_s)

    def finished(self, rid: str, output_tokens: int, now_s: float) -> FinishedRequest | None:
        done = self.ledger.on_finished(rid)
        if done is not None:
            self.inflight.remove(rid, done.worker)
            self.holds.prefilled(rid, done.worker)
            self._refresh_kv(done.worker)
            if self.cost_fit is not None:
                # The request itself has left the ledger's count: add it back.
                self.cost_fit.on_finished(rid, now_s, output_tokens, self.ledger.loads[done.worker].requests + 1,
                                          self._prefilled_tokens[done.worker])
            self.policy.on_finished(rid, done.worker, output_tokens, now_s)
        return done

    def expire(self, now_s: float) -> list[str]:
        return self.ledger.expire(now_s, lambda rid, worker: self._forget(rid, worker, now_s))

    def _forget(self, rid: str, worker: int, now_s: float) -> None:
        """A request left the ledger without a completion report."""
        self.inflight.remove(rid, worker)
        self.holds.prefilled(rid, worker)
        self._refresh_kv(worker)
        if self.cost_fit is not None:
            self.cost_fit.forget(rid)
        self.policy.on_expired(rid, worker, now_s)

    def cancel(self, rid: str, now_s: float) -> bool:
        """Undo a placement the host could not deliver (its send to the worker failed):
        the request leaves the ledger as if it had never been dispatched. False if the
        router does not know the rid."""
        done = self.ledger.on_finished(rid)
        if done is None:
            return False
        self._forget(rid, done.worker, now_s)
        return True

    def reconcile(self, report: ReportedLoad, now_s: float) -> list[str]:
        """Cross-check the ledger with a worker's own load report (see `load_check.py`);
        requests it shows were finished without a completion report are dropped."""
        stale = self.load_check.observe(report, self.ledger)
        for rid in stale:
            self._forget(rid, report.worker, now_s)
        return stale

    def update_expected_output(self, rid: str, output_tokens: int) -> None:
        """A length prediction arrived after dispatch: re-weigh the request's decode work."""
        worker = self.ledger.worker_of(rid)
        if self.ledger.update_expected_output(rid, output_tokens) and worker is not None:
            self._refresh_kv(worker)  # committed KV counts the pending decode

    def set_alive(self, worker: int, alive: bool, now_s: float) -> None:
        """Mark a worker up or down: the one way hosts change the set of routable workers
        (the controller on SGLang's rank-status and elastic scale-up messages, the
        simulator on its worker schedule).

        Going down drops its in-flight requests (their completions will never be
        reported) and its mirrored cache (gone with it): every policy skips it from the
        next decision on. Coming up (a revived rank, or an elastic slot activated at run
        time) starts it clean, whatever arrived for it meanwhile (a late KV-event batch
        of the dead rank): empty ledger, mirror, in-flight and hold entries, and the
        policy's own state for it reset (`Policy.on_worker_reset`); every policy may
        pick it from the next decision on. A call that changes nothing does nothing.
        """
        if not 0 <= worker < self.config.num_workers:
            raise ValueError(f"worker {worker} is not in 0..{self.config.num_workers - 1}")
        was_alive = self.ledger.loads[worker].alive
        if was_alive == alive:
            return
        self.ledger.set_alive(worker, alive)
        if not alive:
            for rid in self.ledger.forget_worker(worker):
                if self.cost_fit is not None:
                    self.cost_fit.forget(rid)
                self.policy.on_expired(rid, worker, now_s)
        self._reset_worker(worker, now_s)

    def forget_cache(self, worker: int) -> None:
        """Forget what the mirror holds for `worker` (its cache is no use to new requests
        any more, e.g. SGLang moved every new request into another namespace); it is
        rebuilt from the worker's next KV events."""
        self.tree.apply_cleared(worker)
        self.tree.mark_uncertain(worker, False)
        if self.ambiguous is not None:
            self.ambiguous.apply_cleared(worker)
        self._refresh_kv(worker)

    def _reset_worker(self, worker: int, now_s: float) -> None:
        """Forget everything known of `worker`'s cache and queue."""
        for rid in self.ledger.forget_worker(worker):  # none once it was down
            self.policy.on_expired(rid, worker, now_s)
        self.inflight.forget_worker(worker)
        self.holds.forget_worker(worker)
        self.load_check.forget_worker(worker)
        self.policy.on_worker_reset(worker, now_s)
        self.forget_cache(worker)
