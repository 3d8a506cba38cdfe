"""Silent-feed detection (`core/feed_watch.py`) and its use by the event applier: a rank
that keeps finishing requests with no event batch is treated as uncached until its feed
is back. Host-free: hand-made payloads, times passed in."""

from __future__ import annotations

import msgspec
import pytest

from sglang_ext.core.events import EventApplier
from sglang_ext.core.feed_watch import FeedWatch, FeedWatchConfig
from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.policies import Request
from sglang_ext.core.router import Router, RouterConfig

CFG = FeedWatchConfig(silence_s=3.0, min_finishes=3)


def payload(hashes: list[int], parent: int | None, tokens: list[int]) -> bytes:
    """One `KVEventBatch` as SGLang 0.5.23 encodes it: `[ts, events, attn_dp_rank]`."""
    event = {"type": "BlockStored", "block_hashes": hashes, "parent_block_hash": parent,
             "token_ids": tokens, "block_size": 1, "lora_id": None, "medium": "GPU"}
    return msgspec.msgpack.encode([0.0, [event], 0])


def test_finished_requests_without_a_batch_make_a_rank_silent_after_the_window():
    watch = FeedWatch(2, CFG)
    for t in (10.0, 10.5, 11.0):
        watch.on_finished(1, t)
    assert watch.check(12.9) == []  # three finishes, but the first only 2.9 s ago
    assert watch.check(13.0) == [1]
    assert watch.check(14.0) == []  # reported once
    assert watch.silent(1) and not watch.silent(0)
    assert watch.on_batch(1, 14.5) is True and not watch.silent(1)
    assert watch.detected == 1


def test_too_few_finishes_are_no_evidence_and_a_batch_resets_the_count():
    watch = FeedWatch(1, CFG)
    watch.on_finished(0, 0.0)
    watch.on_finished(0, 0.1)
    assert watch.check(100.0) == []  # two finishes (a fully cached request stores nothing)
    assert watch.on_batch(0, 100.0) is False
    watch.on_finished(0, 101.0)
    watch.on_finished(0, 101.0)
    assert watch.check(200.0) == []  # the two before the batch no longer count
    watch.on_finished(0, 150.0)
    assert watch.check(200.0) == [0]


def test_reports_for_unknown_ranks_are_ignored_and_bad_settings_refused():
    watch = FeedWatch(2, CFG)
    watch.on_finished(7, 0.0)
    watch.on_finished(-1, 0.0)
    assert watch.check(100.0) == []
    with pytest.raises(ValueError, match="min_finishes"):
        FeedWatch(2, FeedWatchConfig(min_finishes=0))


def feed_prefix(applier: EventApplier, rank: int, tokens: list[int], first_seq: int, now_s: float) -> int:
    """Store `tokens` on `rank`, one page per batch; returns the next sequence number."""
    seq, parent = first_seq, None
    for i, tok in enumerate(tokens):
        h = 1000 * (rank + 1) + first_seq + i + 1
        assert not applier.on_live(rank, seq, payload([h], parent, [tok]), now_s)
        parent, seq = h, seq + 1
    return seq


def test_the_applier_marks_a_silent_rank_uncertain_and_trusts_it_again_on_its_next_batch():
    tree = GlobalTree(2, page_size=1)
    applier = EventApplier(tree, replay_available=True, watch=CFG)
    seq = feed_prefix(applier, 1, [40, 41, 42], 0, now_s=0.0)
    assert tree.match([40, 41, 42]) == [0, 3]
    for t in (1.0, 1.5, 2.0):
        applier.on_work_done(1, t)
    applier.check_timeouts(3.9)
    assert not tree.is_uncertain(1)
    applier.check_timeouts(4.0)
    assert tree.is_uncertain(1) and applier.stats.silent_feeds == 1
    # The next batch is in sequence (nothing was lost, the feed only stalled).
    assert not applier.on_live(1, seq, payload([77], None, [50]), now_s=5.0)
    assert not tree.is_uncertain(1) and applier.stats.gaps == 0


def test_a_silent_rank_whose_feed_resumes_after_a_gap_stays_uncertain_until_the_replay_ends():
    tree = GlobalTree(2, page_size=1)
    applier = EventApplier(tree, replay_available=True, watch=CFG)
    feed_prefix(applier, 1, [40, 41], 0, now_s=0.0)  # batches 0, 1
    for t in (1.0, 1.1, 1.2):
        applier.on_work_done(1, t)
    applier.check_timeouts(5.0)
    assert tree.is_uncertain(1)
    # Batches 2..4 were lost while the feed was cut; batch 5 arrives: a gap, replay asked.
    assert applier.on_live(1, 5, payload([99], None, [60]), now_s=6.0)
    assert tree.is_uncertain(1) and applier.state(1).replaying
    for seq, (h, parent, tok) in zip((2, 3, 4), ((11, None, 70), (12, 11, 71), (13, 12, 72))):
        applier.on_replayed(1, seq, payload([h], parent, [tok]))
    applier.on_replay_end(1)
    assert not tree.is_uncertain(1)
    assert tree.match([70, 71, 72]) == [0, 3] and tree.match([60]) == [0, 1]  # repaired, then live


def test_routing_counts_a_silent_rank_as_uncached():
    router = Router(RouterConfig(policy="prefix_length_aware", num_workers=2, exact_mirror=True))
    applier = EventApplier(router.tree, replay_available=True, watch=CFG)
    prefix = list(range(100, 164))
    feed_prefix(applier, 1, prefix, 0, now_s=0.0)
    request = Request(rid="r1", input_ids=prefix + [5, 6], max_new_tokens=8)
    assert router.cached_tokens(request) == [0, 64]
    for t in (1.0, 1.1, 1.2):
        applier.on_work_done(1, t)
    applier.check_timeouts(10.0)
    assert router.cached_tokens(request) == [0, 0]
