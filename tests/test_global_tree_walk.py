"""An insert right after `match_packed` of the same prompt reuses the match's walk
(`GlobalTree._insert_walked`); it must leave the tree exactly as a fresh insert does:
the same nodes, tokens, holders, token counts and LRU order, whatever the tree held,
the page size, the namespace, or what happened between the match and the insert."""

from __future__ import annotations

import random

import pytest

from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.token_bytes import pack


def shape(tree: GlobalTree) -> tuple:
    """Everything an insert can change, nodes named by their token path from the root."""
    names: dict[int, tuple] = {}

    def walk(node, prefix: tuple) -> list:
        out = []
        for key in sorted(node.children):
            child = node.children[key]
            path = prefix + (bytes(child.tokens),)
            names[id(child)] = path
            assert child.parent is node
            out.append((bytes(child.tokens), child.holders, child.hashes, walk(child, path)))
        return out

    roots = [(None, walk(tree.root, ()))]
    for namespace in sorted(tree._roots, key=repr):
        roots.append((namespace, walk(tree._roots[namespace], (namespace,))))
    lru = [[names[id(node)] for node in order] for order in tree._lru]
    return roots, list(tree._tokens_held), lru, tree.held_changed


def prompts(rng: random.Random, n: int) -> list[list[int]]:
    """ReAct-like: shared prefixes, extended turn by turn, some diverging mid-node."""
    bases = [[rng.randrange(5) for _ in range(rng.randrange(1, 30))] for _ in range(3)]
    out = []
    for _ in range(n):
        p = list(rng.choice(out) if out and rng.random() < 0.6 else rng.choice(bases))
        if rng.random() < 0.3 and len(p) > 2:
            p = p[: rng.randrange(1, len(p))]  # a shorter prompt: ends inside a node
        p += [rng.randrange(5) for _ in range(rng.randrange(0, 12))]
        out.append(p)
    return out


@pytest.mark.parametrize("page", [1, 2, 4])
@pytest.mark.parametrize("seed", range(6))
def test_insert_after_match_equals_a_fresh_insert(page, seed):
    rng = random.Random(seed * 10 + page)
    workers = 5
    walked, fresh = GlobalTree(workers, page), GlobalTree(workers, page)
    reused = 0
    for ids in prompts(rng, 150):
        worker = rng.randrange(workers)
        capacity = rng.choice((40, 80, 10_000))
        namespace = rng.choice((None, None, None, "salt"))
        data = pack(ids)
        assert walked.match_packed(data, namespace=namespace) == fresh.match_packed(data, namespace=namespace)
        reused += walked._walk is not None
        walked.insert_approximate_packed(worker, data, capacity, namespace)
        fresh._walk = None  # forget the match: the insert walks again
        fresh.insert_approximate_packed(worker, data, capacity, namespace)
        assert shape(walked) == shape(fresh)
        if rng.random() < 0.1:  # a worker's part goes (the in-flight union's clear)
            w = rng.randrange(workers)
            walked.apply_cleared(w)
            fresh.apply_cleared(w)
    assert reused > 100


def test_a_walk_is_not_reused_after_the_tree_changed_or_for_another_prompt():
    tree = GlobalTree(3, 1)
    tree.insert_approximate(0, [1, 2, 3, 4], 100)
    data = pack([1, 2, 3, 4, 5, 6])
    tree.match_packed(data)
    tree.apply_cleared(0)  # the walk's nodes are gone
    tree.insert_approximate_packed(1, data, 100)
    assert tree.match(list(range(1, 7))) == [0, 6, 0]
    tree.match_packed(pack([1, 2, 9]))
    tree.insert_approximate_packed(2, data, 100)  # another prompt than the one matched
    assert tree.match([1, 2, 3, 4, 5, 6]) == [0, 6, 6]
    tree.match_packed(data)
    tree.insert_approximate_packed(0, data, 100, namespace="salt")  # another namespace
    assert tree.match([1, 2, 3, 4, 5, 6]) == [0, 6, 6]
    assert tree.match([1, 2, 3, 4, 5, 6], namespace="salt") == [6, 0, 0]
    tree.match_packed(data)
    tree.apply_removed(0, [12345])  # any event may change nodes
    assert tree._walk is None
