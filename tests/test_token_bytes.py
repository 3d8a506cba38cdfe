"""The packed-token helpers: the compiled ones agree with the pure-Python fallbacks, and
the mirror gives the same answers on either."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_ext.core import global_tree, token_bytes
from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.token_bytes import (_common_prefix_array, _pack_array, _spread_python, common_prefix,
                                    pack, spread, unpack)

ids_lists = st.lists(st.integers(0, 2**32 - 1), max_size=40)


def test_the_compiled_helpers_are_built():
    # setup_cpu.sh builds them; a silent fall-back would cost 3-5x on the dispatch path.
    assert token_bytes.COMPILED


@settings(max_examples=300, deadline=None)
@given(ids_lists, st.integers(0, 45), st.integers(0, 45))
def test_pack_matches_array(ids, start, stop):
    assert pack(ids) == _pack_array(ids)
    assert pack(ids, start, stop) == _pack_array(ids, start, stop)
    assert unpack(pack(ids)) == ids


@settings(max_examples=300, deadline=None)
@given(ids_lists, ids_lists, st.integers(0, 45))
def test_common_prefix_matches_fallback(a, b, start):
    packed = pack(b)
    expected = _common_prefix_array(a, start, packed)
    assert common_prefix(a, start, packed) == expected
    assert a[start : start + expected] == b[:expected]
    if start + expected < len(a) and expected < len(b):
        assert a[start + expected] != b[expected]


@pytest.mark.parametrize("n", [1, 8, 9, 128, 130])
def test_spread_matches_fallback(n):
    rng = random.Random(n)
    for _ in range(200):
        workers = rng.sample(range(n), n)
        levels = []
        while workers:
            k = rng.randint(1, len(workers))
            levels.append((sum(1 << w for w in workers[:k]), rng.randint(0, 10**6)))
            workers = workers[k:]
        if rng.random() < 0.5:
            levels.pop()
        assert spread(levels, n) == _spread_python(levels, n)


@pytest.mark.parametrize("bad", [[1, -1], [1, 2**32], [1, "x"], [1, 2.0]])
def test_non_token_ids_are_refused(bad):
    with pytest.raises((OverflowError, TypeError)):
        pack(bad)
    with pytest.raises((OverflowError, TypeError)):
        common_prefix(bad, 0, pack([1, 5]))


def test_the_mirror_answers_the_same_on_the_fallbacks(monkeypatch):
    rng = random.Random(0)
    prompts = [[rng.randrange(50) for _ in range(rng.randrange(1, 60))] for _ in range(40)]

    def build() -> GlobalTree:
        tree = GlobalTree(20, page_size=2)
        for i, p in enumerate(prompts):
            tree.insert_approximate(i % 20, p, capacity_tokens=200)
        return tree

    probes = prompts + [p[: len(p) // 2] + [7, 7] for p in prompts]
    compiled = [build().match(p) for p in probes]
    monkeypatch.setattr(global_tree, "pack", _pack_array)
    monkeypatch.setattr(global_tree, "common_prefix", _common_prefix_array)
    monkeypatch.setattr(global_tree, "spread", _spread_python)
    assert [build().match(p) for p in probes] == compiled
