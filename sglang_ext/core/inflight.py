"""Per worker, the prompts of the requests it is serving: what the mirror cannot see yet.

Why: the mirror learns of a prompt only when the worker's KV events for its prefill
arrive, after the prefill ran. A burst of requests sharing a new prefix would otherwise
all look uncached everywhere and scatter (each worker then prefills the prefix again),
and the ledger would have no way to count a prefix shared by several in-flight requests
once. A request's prompt is in flight on its worker from dispatch until the worker reports
it finished: queued (about to be cached there) or running (cached and locked there, so
SGLang cannot evict it).

Design note:
- One `GlobalTree` in approximate mode holds, per worker, the union of its in-flight
  prompts (shared prefixes once, page-aligned). Matching a request against it costs one
  more tree walk; `tokens(w)` is the worker's distinct in-flight prompt tokens.
- The tree has no reference counts, so a finished request cannot be taken out of the
  union alone. Instead a worker's part is cleared when its last request leaves, and
  rebuilt from its live prompts once more requests left since the last rebuild than are
  still in flight (and at least `MIN_STALE_BEFORE_REBUILD`): amortised, at most about one
  re-insert per finished request, and the union never holds more stale prompts than
  live ones. Stale prompts belong to requests that just finished, whose prefixes the
  worker still caches (its radix cache keeps a finished request's tokens until it needs
  the room), so the over-report is short-lived and mostly true.
- Namespaced requests (cache salt, LoRA, extra key: `namespaces.py`) go under their own
  namespace in the union, keyed as SGLang's tree keys them (`CacheNamespace.full_key`):
  the router knows each prompt's namespace, so here the separation is exact.
- `now_s`-free and socket-free, like the rest of the routing core.
"""

from __future__ import annotations

from collections.abc import Sequence

from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.token_bytes import pack

MIN_STALE_BEFORE_REBUILD = 8
_NO_LIMIT = 1 << 62  # the union is bounded by what is in flight, not by a capacity


class InflightPrefixes:
    def __init__(self, num_workers: int, page_size: int = 1):
        self.tree = GlobalTree(num_workers, page_size)
        # Live prompts packed (4 bytes per token; SGLang's array('q') holds 8).
        self._prompts: list[dict[str, bytes]] = [{} for _ in range(num_workers)]
        # Namespace keys of the live prompts that have one (most have none).
        self._namespaces: list[dict[str, object]] = [{} for _ in range(num_workers)]
        self._stale = [0] * num_workers
        self.rebuilds = 0

    def add(self, rid: str, worker: int, input_ids: Sequence[int], packed: bytes | None = None,
            namespace=None) -> None:
        """`rid` (prompt `input_ids`, or the same already `packed`) was sent to `worker`,
        in cache namespace `namespace` (a `CacheNamespace.full_key`; None: the plain one).
        Raises OverflowError or TypeError when the prompt is not token ids (nothing is
        recorded then)."""
        data = pack(input_ids) if packed is None else packed
        self.tree.insert_approximate_packed(worker, data, _NO_LIMIT, namespace)
        self._prompts[worker][rid] = data
        if namespace is not None:
            self._namespaces[worker][rid] = namespace

    def remove(self, rid: str, worker: int) -> None:
        """`rid` left `worker` (finished, expired, or the worker is gone)."""
        live = self._prompts[worker]
        if live.pop(rid, None) is None:
            return
        if self._namespaces[worker]:
            self._namespaces[worker].pop(rid, None)
        if not live:
            self.tree.apply_cleared(worker)
            self._stale[worker] = 0
            return
        self._stale[worker] += 1
        if self._stale[worker] >= max(len(live), MIN_STALE_BEFORE_REBUILD):
            self._rebuild(worker)

    def forget_worker(self, worker: int) -> None:
        self._prompts[worker].clear()
        self._namespaces[worker].clear()
        self._stale[worker] = 0
        self.tree.apply_cleared(worker)

    def match(self, input_ids: Sequence[int], namespace=None) -> list[int]:
        """Per worker, the longest prefix of `input_ids` shared with one of its in-flight
        prompts of the same namespace (page-aligned)."""
        return self.tree.match(input_ids, namespace)

    def match_packed(self, data: bytes, floor: list[int] | None = None, namespace=None) -> list[int]:
        """`match` of a prompt already packed (`token_bytes.pack`); `floor`: see
        `GlobalTree.match_packed`."""
        return self.tree.match_packed(data, floor, namespace)

    def tokens(self, worker: int) -> int:
        """Distinct prompt tokens in flight on `worker` (plus stale ones, see module)."""
        return self.tree.tokens_held(worker)

    def take_changed(self) -> int:
        """Bitmask of workers whose `tokens` changed since the last call (see `GlobalTree`)."""
        return self.tree.take_held_changed()

    def requests(self, worker: int) -> int:
        return len(self._prompts[worker])

    def _rebuild(self, worker: int) -> None:
        self.rebuilds += 1
        self.tree.apply_cleared(worker)
        namespaces = self._namespaces[worker]
        for rid, data in self._prompts[worker].items():
            self.tree.insert_approximate_packed(worker, data, _NO_LIMIT, namespaces.get(rid) if namespaces else None)
        self._stale[worker] = 0
