"""The union of in-flight prompts per worker (`sglang_ext.core.inflight`)."""

from __future__ import annotations

import random

from sglang_ext.core.inflight import MIN_STALE_BEFORE_REBUILD, InflightPrefixes


def _prompt(rng: random.Random, family: int, own: int) -> list[int]:
    return [family * 1000 + i for i in range(1, 101)] + [rng.randrange(5000, 9000) for _ in range(own)]


def test_shared_prefixes_count_once_and_leave_with_the_last_request():
    rng = random.Random(0)
    inflight = InflightPrefixes(2)
    prompts = {f"r{i}": _prompt(rng, 1, 20) for i in range(3)}
    for rid, ids in prompts.items():
        inflight.add(rid, 0, ids)
    assert inflight.tokens(0) == 100 + 3 * 20 and inflight.tokens(1) == 0
    probe = _prompt(rng, 1, 5)
    assert inflight.match(probe) == [100, 0]
    for rid in prompts:
        inflight.remove(rid, 0)
    assert inflight.tokens(0) == 0 and inflight.match(probe) == [0, 0]


def test_stale_prompts_never_outnumber_live_ones_and_live_ones_are_always_found():
    rng = random.Random(1)
    inflight = InflightPrefixes(1)
    live: dict[str, list[int]] = {}
    for step in range(400):
        if live and rng.random() < 0.5:
            rid = rng.choice(sorted(live))
            inflight.remove(rid, 0)
            del live[rid]
        else:
            rid = f"r{step}"
            live[rid] = _prompt(rng, rng.randrange(4), rng.randrange(1, 30))
            inflight.add(rid, 0, live[rid])
        for ids in live.values():
            assert inflight.match(ids)[0] == len(ids)  # every live prompt is held whole
        distinct = len({tuple(ids[:k]) for ids in live.values() for k in range(1, len(ids) + 1)})
        # Stale prompts (finished, not yet rebuilt away) are bounded by the live ones.
        assert inflight.tokens(0) <= 2 * distinct + MIN_STALE_BEFORE_REBUILD * 130
    assert inflight.rebuilds > 0


def test_unknown_removals_and_a_lost_worker():
    inflight = InflightPrefixes(2)
    inflight.remove("never-added", 1)
    inflight.add("a", 1, list(range(1, 50)))
    inflight.forget_worker(1)
    assert inflight.tokens(1) == 0 and inflight.requests(1) == 0
