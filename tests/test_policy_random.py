"""`random`: uniform over live workers, reproducible from its seed."""

from __future__ import annotations

from collections import Counter

from sglang_ext.core.policies import make_policy
from tests.factories import make_config, make_loads, make_request, make_view


def _choices(seed: int, loads, n: int = 400) -> list[int]:
    p = make_policy("random", make_config(len(loads), seed=seed))
    view = make_view(loads)
    return [p.choose(make_request(), view) for _ in range(n)]


def test_random_spreads_over_live_workers_only():
    loads = make_loads(4)
    loads[2].alive = False
    counts = Counter(_choices(1, loads))
    assert set(counts) == {0, 1, 3}
    assert min(counts.values()) > 400 / 3 * 0.7  # roughly uniform, not stuck on one worker


def test_random_is_reproducible_from_its_seed():
    loads = make_loads(8)
    assert _choices(5, loads) == _choices(5, loads)
    assert _choices(5, loads) != _choices(6, loads)
