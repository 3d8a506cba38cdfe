"""The KV-event feed against SGLang's own ZMQ publisher (real sockets, no server).

SGLang's `ZmqEventPublisher` is the class every scheduler uses; we drive it in-process
with real event batches and check what our subscriber makes of them: stores and
removals reach the mirror, a subscriber that missed batches repairs them from the replay
endpoint, malformed frames are skipped without stopping the feed.
"""

from __future__ import annotations

import time

import msgspec
import pytest
import zmq

pytest.importorskip("sglang")
from sglang.srt.disaggregation.kv_events import (  # noqa: E402
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KVEventBatch,
    ZmqEventPublisher,
)

from sglang_ext.core.events import EventApplier  # noqa: E402
from sglang_ext.core.global_tree import GlobalTree  # noqa: E402
from sglang_ext.kv_events import EventFeedConfig, KVEventSubscriber  # noqa: E402
from sglang_ext.launch_server import loopback_kv_events_config  # noqa: E402


def stored(hashes, parent, tokens):
    return BlockStored(block_hashes=hashes, parent_block_hash=parent, token_ids=tokens,
                       block_size=1, lora_id=None, medium="GPU")


def batch(*events):
    return KVEventBatch(ts=time.time(), events=list(events))


def pump(subscriber: KVEventSubscriber, until, timeout_s: float = 5.0) -> None:
    poller = zmq.Poller()
    for s in subscriber.sockets():
        poller.register(s, zmq.POLLIN)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not until():
        for sock, _ in poller.poll(50):
            subscriber.handle(sock, time.monotonic())
        subscriber.applier.check_timeouts(time.monotonic())


@pytest.fixture
def feed():
    cfg = loopback_kv_events_config(1)
    pub = ZmqEventPublisher(0, endpoint=cfg["endpoint"], replay_endpoint=cfg["replay_endpoint"], bind=True)
    yield pub, EventFeedConfig(cfg["endpoint"], cfg["replay_endpoint"])
    pub.shutdown()


def test_store_and_remove_reach_the_mirror(feed):
    pub, config = feed
    tree = GlobalTree(1, page_size=1)
    sub = KVEventSubscriber(config, tree, zmq.Context())
    time.sleep(0.3)  # let the SUB connect before the first publish
    pub.publish(batch(stored([11, 12, 13], None, [5, 6, 7])))
    pump(sub, lambda: tree.match([5, 6, 7, 8]) == [3])
    assert tree.match([5, 6, 7, 8]) == [3]
    pub.publish(batch(BlockRemoved(block_hashes=[13], medium="GPU")))
    pump(sub, lambda: tree.match([5, 6, 7]) == [2])
    assert tree.match([5, 6, 7]) == [2]
    pub.publish(batch(AllBlocksCleared()))
    pump(sub, lambda: tree.match([5, 6, 7]) == [0])
    assert tree.match([5, 6, 7]) == [0] and tree.num_nodes() == 0
    sub.close()


def test_late_subscriber_repairs_the_gap_from_the_replay_buffer(feed):
    pub, config = feed
    # Published before anyone listens: only the replay buffer has these.
    pub.publish(batch(stored([1, 2], None, [40, 41])))
    pub.publish(batch(stored([3], 2, [42])))
    time.sleep(0.3)
    tree = GlobalTree(1, page_size=1)
    sub = KVEventSubscriber(config, tree, zmq.Context())
    time.sleep(0.3)
    pub.publish(batch(stored([4], 3, [43])))
    pump(sub, lambda: tree.match([40, 41, 42, 43]) == [4] and not tree.is_uncertain(0))
    assert tree.match([40, 41, 42, 43]) == [4]
    assert not tree.is_uncertain(0)
    assert sub.applier.stats.gaps == 1 and sub.applier.stats.resyncs == 0
    sub.close()


def test_gap_without_replay_resyncs_and_keeps_following(feed):
    pub, config = feed
    pub.publish(batch(stored([1], None, [40])))  # missed
    time.sleep(0.3)
    tree = GlobalTree(1, page_size=1)
    sub = KVEventSubscriber(EventFeedConfig(config.endpoint, None), tree, zmq.Context())
    time.sleep(0.3)
    pub.publish(batch(stored([9], None, [50])))
    pump(sub, lambda: tree.match([50]) == [1])
    assert tree.match([50]) == [1]
    assert sub.applier.stats.resyncs == 1 and not tree.is_uncertain(0)
    sub.close()


def test_malformed_frames_are_skipped(feed):
    pub, config = feed
    tree = GlobalTree(1, page_size=1)
    sub = KVEventSubscriber(EventFeedConfig(config.endpoint, None), tree, zmq.Context())
    # Raw frames come from a second PUB that rank 0's SUB also connects to (SGLang's
    # publisher only sends well-formed batches).
    raw = zmq.Context.instance().socket(zmq.PUB)
    raw_port = raw.bind_to_random_port("tcp://127.0.0.1")
    sub.subs[0].connect(f"tcp://127.0.0.1:{raw_port}")
    time.sleep(0.3)
    raw.send_multipart([b"", (0).to_bytes(8, "big"), b"\xc1not msgpack"])
    raw.send_multipart([b"only two", b"frames"])
    unknown = msgspec.msgpack.encode([time.time(), [{"type": "BlockMoved", "x": 1}], 0])
    raw.send_multipart([b"", (1).to_bytes(8, "big"), unknown])
    good = msgspec.msgpack.encode(batch(stored([7], None, [70])))
    raw.send_multipart([b"", (2).to_bytes(8, "big"), good])
    pump(sub, lambda: tree.match([70]) == [1])
    assert tree.match([70]) == [1]
    assert sub.applier.stats.malformed == 2
    assert sub.applier.stats.unknown_events == 1
    raw.close(0)
    sub.close()


def payload(*events) -> bytes:
    return msgspec.msgpack.encode(batch(*events))


def test_a_restarted_ranks_new_stream_is_followed_not_discarded_as_duplicates():
    """Host-free: the applier alone. Rank 0 publishes 0..2, restarts (numbers from 0 again,
    its cache empty), publishes a new prefix: the mirror follows the new stream."""
    tree = GlobalTree(2, page_size=1)
    applier = EventApplier(tree, replay_available=True)
    for seq, (h, parent, tok) in enumerate([(1, None, 40), (2, 1, 41), (3, 2, 42)]):
        assert not applier.on_live(0, seq, payload(stored([h], parent, [tok])), now_s=0.0)
    assert tree.match([40, 41, 42]) == [3, 0]
    assert not applier.on_live(0, 0, payload(stored([9], None, [70])), now_s=1.0)
    assert tree.match([40, 41, 42]) == [0, 0]  # the old cache died with the process
    assert tree.match([70]) == [1, 0]
    assert not applier.on_live(0, 1, payload(stored([10], 9, [71])), now_s=1.1)
    assert tree.match([70, 71]) == [2, 0]
    assert applier.stats.restarts == 1 and applier.stats.gaps == 0


def test_a_restart_seen_late_is_a_gap_in_the_new_stream():
    tree = GlobalTree(1, page_size=1)
    applier = EventApplier(tree, replay_available=True)
    for seq in range(3):
        applier.on_live(0, seq, payload(stored([seq + 1], seq or None, [40 + seq])), now_s=0.0)
    # The new publisher's batch 0 was lost: its batch 1 asks for a replay from 0.
    assert applier.on_live(0, 1, payload(stored([8], 7, [81])), now_s=1.0)
    assert applier.state(0).expected_seq == 0 and tree.is_uncertain(0)
    assert applier.stats.restarts == 1 and applier.stats.gaps == 1


def test_a_replayed_batch_seen_again_live_is_still_a_duplicate():
    tree = GlobalTree(1, page_size=1)
    applier = EventApplier(tree, replay_available=True)
    assert applier.on_live(0, 2, payload(stored([3], 2, [42])), now_s=0.0)  # late join: gap from 0
    for seq, (h, parent, tok) in enumerate([(1, None, 40), (2, 1, 41), (3, 2, 42)]):
        applier.on_replayed(0, seq, payload(stored([h], parent, [tok])))
    applier.on_replayed(0, 3, payload(stored([4], 3, [43])))  # the replay ran ahead of the live stream
    applier.on_replay_end(0)
    assert not applier.on_live(0, 3, payload(stored([4], 3, [43])), now_s=0.1)
    assert applier.stats.restarts == 0 and tree.match([40, 41, 42, 43]) == [4]
