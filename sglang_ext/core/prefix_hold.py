"""Hold a request back until the same-prefix request ahead of it on its worker is prefilled.

Why: SGLang's default FCFS scheduler does not deduplicate prefixes inside a prefill batch
(only its cache-aware policies look at the waiting queue; `schedule_policy.py`,
`_compute_prefix_matches`). Requests of one prefix family that wait on a worker together
all join one batch and all prefill the whole prefix: measured on SmolLM2 dp=2 (CPU), three
requests of a group queued on one rank all reported 0 cached tokens, under round robin
and under our policy alike. A prefill that could have been 32 tokens costs 544, and it
stalls every running decode on that rank for as long (SGLang runs prefill first).

So when the chosen worker's prefix for a request exists only as the prompt of a request
still waiting there for its prefill (the mirror does not have it yet), the request is
held in the controller until that leader's prefill is reported done, then sent: the
leader's prompt is then in the worker's radix cache, and the follower prefills only its
own part. It loses nothing it would have had: queued behind the leader, it could not
have finished its prefill before the leader's anyway.

Bounded: a hold ends when the leader is prefilled, finishes, expires or loses its
worker, or after `max_hold_s` (a lost report). Host-free: `now_s` is passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sglang_ext.core.token_bytes import common_prefix, pack, packed_common_prefix

DEFAULT_MIN_SHARED_TOKENS = 64
DEFAULT_MAX_HOLD_S = 30.0


@dataclass(slots=True)
class _Held:
    leader: str
    deadline_s: float


class PrefixHolds:
    def __init__(self, num_workers: int, min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS,
                 max_hold_s: float = DEFAULT_MAX_HOLD_S):
        self.min_shared_tokens = min_shared_tokens
        self.max_hold_s = max_hold_s
        # Per worker: requests dispatched there whose prefill is not done yet, with their
        # prompts packed (by the router, or here on first use when a follower is checked).
        self._queued: list[dict[str, list]] = [{} for _ in range(num_workers)]
        self._held: dict[str, _Held] = {}
        self._followers: dict[str, list[str]] = {}  # leader -> held rids, in hold order
        self._released: list[str] = []
        self.holds = 0
        self.timeouts = 0

    def __contains__(self, rid: str) -> bool:
        return rid in self._held

    def __len__(self) -> int:
        return len(self._held)

    # ------------------------------------------------------------ queued prompts

    def queued(self, rid: str, worker: int, input_ids: Sequence[int], namespace=None,
               packed: bytes | None = None) -> None:
        """`rid` waits on `worker` for its prefill; `namespace`: its cache namespace key
        (`CacheNamespace.full_key`), since only a leader of the same namespace caches
        anything a follower can use; `packed`: its prompt already packed (`token_bytes`)."""
        self._queued[worker][rid] = [input_ids, packed, namespace]

    def prefilled(self, rid: str, worker: int) -> None:
        """`rid`'s prefill is done (or it left the worker): its followers go."""
        self._queued[worker].pop(rid, None)
        for follower in self._followers.pop(rid, ()):
            if self._held.pop(follower, None) is not None:
                self._released.append(follower)

    def forget_worker(self, worker: int) -> None:
        for rid in list(self._queued[worker]):
            self.prefilled(rid, worker)

    # -------------------------------------------------------------------- holds

    def leader_for(self, input_ids: Sequence[int], worker: int, cached_tokens: int,
                   namespace=None, packed: bytes | None = None) -> str | None:
        """The queued request on `worker` in the same cache `namespace` whose prompt
        shares the longest prefix with `input_ids`, if that prefix reaches
        `min_shared_tokens` beyond what the worker already caches (`cached_tokens`, from
        the mirror); else None. `packed`: `input_ids` already packed, compared by memcmp
        (reading SGLang's int64 array('q') once per queued request cost twice as much)."""
        best, best_rid = cached_tokens + self.min_shared_tokens - 1, None
        for rid, entry in self._queued[worker].items():
            if entry[2] != namespace:
                continue
            if entry[1] is None:
                entry[1] = pack(entry[0])
            if packed is not None:
                shared = packed_common_prefix(packed, 0, entry[1])
            else:
                shared = common_prefix(input_ids, 0, entry[1])
            if shared > best:
                best, best_rid = shared, rid
        return best_rid

    def hold(self, rid: str, leader: str, now_s: float) -> None:
        self._held[rid] = _Held(leader, now_s + self.max_hold_s)
        self._followers.setdefault(leader, []).append(rid)
        self.holds += 1

    def take_released(self, now_s: float) -> list[str]:
        """Held requests free to go now (their leader was prefilled, or they waited
        `max_hold_s`), in the order they were held or released."""
        # Holds are made in time order with one `max_hold_s`, so `_held` (insertion
        # ordered) is ordered by deadline: only its expired head is visited.
        while self._held:
            rid, held = next(iter(self._held.items()))
            if now_s < held.deadline_s:
                break
            del self._held[rid]
            followers = self._followers.get(held.leader, [])
            if rid in followers:
                followers.remove(rid)
            self.timeouts += 1
            self._released.append(rid)
        out, self._released = self._released, []
        return out

    def next_deadline_s(self) -> float | None:
        if not self._held:
            return None
        return next(iter(self._held.values())).deadline_s
