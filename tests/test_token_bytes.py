"""The packed-token helpers: the compiled ones agree with the pure-Python fallbacks, and
the mirror gives the same answers on either."""

from __future__ import annotations

import random
from array import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_ext.core import global_tree, token_bytes
from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.token_bytes import (_common_prefix_array, _pack_array, _packed_common_prefix_python,
                                         _spread_python, common_prefix, pack, packed_common_prefix, spread,
                                         unpack)

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
    monkeypatch.setattr(global_tree, "packed_common_prefix", _packed_common_prefix_python)
    assert [build().match_packed(_pack_array(p)) for p in probes] == compiled


# Forms SGLang and hosts hand us: SGLang 0.5.23's `input_ids` is array('q'); numpy arrays
# of several widths, and ones the buffer path cannot read in place (byte-swapped,
# strided), which go through the sequence path and must give the same answers.
FORMS = {
    "list": list, "tuple": tuple,
    "array q": lambda ids: array("q", ids), "array Q": lambda ids: array("Q", ids),
    "array I": lambda ids: array("I", ids), "array L": lambda ids: array("L", ids),
    "numpy int64": lambda ids: np.array(ids, dtype=np.int64),
    "numpy uint32": lambda ids: np.array(ids, dtype=np.uint32),
    "numpy >i8": lambda ids: np.array(ids, dtype=">i8"),
    "numpy strided": lambda ids: np.repeat(np.array(ids, dtype=np.int64), 2)[::2],
}


@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=100, deadline=None)
@given(ids_lists, ids_lists, st.integers(0, 45), st.integers(0, 45))
def test_every_input_form_gives_the_list_answers(form, a, b, start, stop):
    make = FORMS[form]
    assert pack(make(a)) == pack(a)
    assert pack(make(a), start, stop) == pack(a, start, stop)
    assert common_prefix(make(a), start, pack(b)) == common_prefix(a, start, pack(b))


@pytest.mark.parametrize("bad", [array("q", [1, -1]), array("q", [1, 2**32]), np.array([1, -3]),
                                 np.array([1.0, 2.0]), array("d", [1.0])])
def test_non_token_ids_in_buffers_are_refused(bad):
    with pytest.raises((OverflowError, TypeError)):
        pack(bad)
    with pytest.raises((OverflowError, TypeError)):
        common_prefix(bad, 0, pack([1, 5]))


def test_common_prefix_stops_before_a_bad_id_past_the_difference():
    # Same contract as for lists: only ids up to the first difference are read.
    assert common_prefix(array("q", [1, 2, -1]), 0, pack([1, 3])) == 1


@settings(max_examples=300, deadline=None)
@given(ids_lists, ids_lists, st.integers(0, 45))
def test_packed_common_prefix_matches_fallback_and_common_prefix(a, b, start):
    got = packed_common_prefix(pack(a), start, pack(b))
    assert got == _packed_common_prefix_python(pack(a), start, pack(b))
    assert got == common_prefix(a, start, pack(b))


def test_match_on_array_q_and_packed_equals_match_on_list():
    rng = random.Random(1)
    tree = GlobalTree(130, page_size=4)
    prompts = [[rng.randrange(30) for _ in range(rng.randrange(4, 300))] for _ in range(200)]
    for i, p in enumerate(prompts):
        tree.insert_approximate(i % 130, array("q", p), capacity_tokens=2000)
    for p in prompts + [p[: len(p) // 2] + [99] for p in prompts]:
        expected = tree.match(p)
        assert tree.match(array("q", p)) == expected
        assert tree.match_packed(pack(array("q", p))) == expected


@pytest.mark.parametrize("n", [1, 9, 130])
def test_spread_with_a_floor_is_the_larger_of_both(n):
    rng = random.Random(n)
    for _ in range(100):
        workers = rng.sample(range(n), n)
        levels = []
        while workers:
            k = rng.randint(1, len(workers))
            levels.append((sum(1 << w for w in workers[:k]), rng.randint(0, 100)))
            workers = workers[k:]
        floor = [rng.randint(0, 100) for _ in range(n)]
        plain = spread(levels, n)
        expected = [max(a, b) for a, b in zip(plain, floor)]
        assert spread(levels, n, floor) == expected
        assert _spread_python(levels, n, floor) == expected
        assert floor == [f for f in floor]  # the floor list itself is left alone


def test_match_packed_with_a_floor_unions_two_trees():
    rng = random.Random(2)
    a, b = GlobalTree(7, page_size=2), GlobalTree(7, page_size=2)
    prompts = [[rng.randrange(9) for _ in range(rng.randrange(2, 40))] for _ in range(60)]
    for i, p in enumerate(prompts):
        (a if i % 2 else b).insert_approximate(i % 7, p, capacity_tokens=10_000)
    for p in prompts:
        data = pack(p)
        assert b.match_packed(data, floor=a.match_packed(data)) == [
            max(x, y) for x, y in zip(a.match(p), b.match(p))]


def test_spread_refuses_masks_outside_its_workers():
    with pytest.raises(OverflowError):
        spread([(1 << 9, 5)], 9)  # worker 9 of 9: within the mask's last byte, past n
    with pytest.raises(OverflowError):
        spread([(1 << 16, 5)], 9)  # past the mask's bytes
    with pytest.raises((OverflowError, ValueError)):
        spread([(-1, 5)], 9)
    with pytest.raises(TypeError):
        spread([(b"\x01", 5)], 9)
    # Values too large for a C integer are compared as Python ints.
    assert spread([(0b11, 2**70)], 2, [1, 2**71]) == [2**70, 2**71]
