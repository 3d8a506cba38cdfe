"""`PrefixHolds.leader_for` on a prompt already packed (memcmp) picks the leader it picks
on SGLang's array('q') or a list, with the queued prompts packed by the router or here."""

from __future__ import annotations

import random
from array import array

from sglang_ext.core.prefix_hold import PrefixHolds
from sglang_ext.core.token_bytes import pack


def test_leader_for_a_packed_prompt_is_the_leader_for_its_ids():
    rng = random.Random(4)
    base = [rng.randrange(50) for _ in range(300)]
    found = 0
    for trial in range(200):
        holds = PrefixHolds(2, min_shared_tokens=rng.choice((1, 16, 64)))
        for k in range(rng.randrange(0, 8)):
            prompt = base[: rng.randrange(0, 300)] + [rng.randrange(50) for _ in range(rng.randrange(0, 40))]
            packed = pack(prompt) if rng.random() < 0.5 else None  # the router's, or packed on first use
            holds.queued(f"q{k}", rng.randrange(2), array("q", prompt), rng.choice((None, None, "salt")), packed)
        ids = base[: rng.randrange(1, 300)] + [rng.randrange(50) for _ in range(rng.randrange(0, 40))]
        for worker in (0, 1):
            cached, namespace = rng.randrange(0, 100), rng.choice((None, "salt"))
            expected = holds.leader_for(ids, worker, cached, namespace)
            assert holds.leader_for(array("q", ids), worker, cached, namespace) == expected
            assert holds.leader_for(array("q", ids), worker, cached, namespace, pack(ids)) == expected
            found += expected is not None
    assert found > 50  # leaders were found, not only refused
