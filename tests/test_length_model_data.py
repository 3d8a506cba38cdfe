"""length_model.data: parsing a cut-off ShareGPT file, pairs, split determinism."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from length_model.config import DataConfig
from length_model.data import (assign_splits, build_pairs, extract_pairs, group_of,
                               iter_records, react_pairs, read_records)


def _conv(cid: str, turns: list[tuple[str, str]]) -> dict:
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def _truncated_file(records: list[dict]) -> str:
    text = json.dumps(records, indent=2)
    return text[: len(text) - 40]  # cut inside the last record, like the shipped file


def test_truncated_file_stops_at_first_bad_record():
    recs = [_conv(f"c{i}_0", [("human", f"q{i}"), ("gpt", "a b c")]) for i in range(5)]
    got = list(iter_records(_truncated_file(recs)))
    assert [r["id"] for r in got] == ["c0_0", "c1_0", "c2_0", "c3_0"]
    assert [r["id"] for r in read_records(io.StringIO(json.dumps(recs)))] == [r["id"] for r in recs]
    assert len(list(iter_records(json.dumps(recs), max_records=2))) == 2


def test_pairs_only_human_then_assistant_and_nonempty():
    rec = _conv("x_1", [("system", "be nice"), ("human", "hi"), ("gpt", "hello there"),
                        ("human", "again"), ("human", "q"), ("chatgpt", "ans"),
                        ("human", "  "), ("gpt", "ignored"), ("human", "last")])
    pairs = extract_pairs([rec])
    assert [(p[1], p[2], p[3]) for p in pairs] == [(1, "hi", "hello there"), (4, "q", "ans")]


def test_targets_are_llama3_token_counts():
    pairs = build_pairs([_conv("a_0", [("human", "hi"), ("gpt", "Hello world")])], DataConfig())
    assert pairs[0].response_tokens == 2  # "Hello", " world" in Llama-3's tokenizer


def test_split_is_seeded_and_by_conversation_group():
    ids = [f"g{i // 3}_{i % 3}" for i in range(600)]
    a = assign_splits(ids, DataConfig(seed=7))
    b = assign_splits(ids, DataConfig(seed=7))
    c = assign_splits(ids, DataConfig(seed=8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    for g in range(200):  # all parts of one conversation share a split
        assert len(set(a[3 * g: 3 * g + 3].tolist())) == 1
    frac = np.bincount(a, minlength=3) / len(a)
    assert frac[0] == pytest.approx(0.8, abs=0.06) and frac[2] == pytest.approx(0.1, abs=0.05)
    assert group_of("QWJhYvA_12") == "QWJhYvA" and group_of("plain") == "plain"


def test_real_package_file_first_records():
    records = read_records(max_records=50)
    assert len(records) == 50
    pairs = build_pairs(records, DataConfig())
    assert len(pairs) > 50
    assert all(p.response_tokens >= 1 and p.prompt.strip() for p in pairs)
    assert {p.split for p in pairs} <= {"train", "val", "test"}


def test_react_prompts_from_langchain_file():
    pairs = react_pairs()
    assert len(pairs) >= 15
    assert all("Question:" in p.prompt and p.response_tokens > 5 for p in pairs)
