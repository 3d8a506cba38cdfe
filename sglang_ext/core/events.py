"""Apply SGLang's KV-cache event batches to the global mirror: sequence tracking, gaps,
replay and resync, without sockets (the controller's `kv_events.KVEventSubscriber` and the
cluster simulator both feed it).

A payload is a msgpack array `[ts, events, attn_dp_rank]` (SGLang 0.5.23, `KVEventBatch`),
each event a map tagged by `type`: `BlockStored`, `BlockRemoved`, `AllBlocksCleared`.
We decode payloads generically (plain msgpack, then dispatch on the tag) rather than
with SGLang's typed union, so an event type we do not know is skipped with a log line
instead of failing its whole batch. Events of a non-GPU `medium` (the host-memory tier of
hierarchical caching) are ignored: only device-resident pages save prefill. A
`BlockStored` under a cache salt or a named LoRA adapter goes to that namespace's part
of the mirror (`namespaces.py`).

Restarts: a publisher numbers its batches from 0 when it is created (SGLang 0.5.23,
`ZmqEventPublisher._seq_gen = count()`), and one live stream never repeats or reorders a
number. So a live batch numbered at or below the last *live* one seen from that rank
means the rank's publisher started over (the scheduler restarted, its cache empty): the
mirror of that rank is cleared and the new stream followed from its first batch. (A
number merely below `expected_seq` but above the last live one is a true duplicate: a
replay delivered it first.)

Gaps: each rank's sequence numbers must be consecutive. On a gap the rank is marked
uncertain in the tree (the router then trusts none of its matches), later live batches
are held back, and the missed range is asked for on the replay endpoint when there is
one. When the replay ends (or there is no replay endpoint, or the replay cannot cover
the gap) the rank is *resynced*: its mirror is cleared and rebuilt from the live stream
from then on. Under-reporting a cache is safe; trusting a stale one sends requests to a
worker that no longer holds their prefix.

Silence: a feed that stops altogether shows no gap until it resumes. The host reports each
finished request (`on_work_done`); a rank that finished requests for a while with no
batch arriving is marked uncertain until its next batch (`feed_watch.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import msgspec

from sglang_ext.core.feed_watch import FeedWatch, FeedWatchConfig
from sglang_ext.core.global_tree import GlobalTree
from sglang_ext.core.namespaces import event_namespace

logger = logging.getLogger(__name__)

GPU_MEDIA = (None, "GPU", "gpu")
REPLAY_TIMEOUT_S = 2.0


class FeedStats(msgspec.Struct):
    batches: int = 0
    stored_pages: int = 0
    removed_pages: int = 0
    cleared: int = 0
    gaps: int = 0
    restarts: int = 0
    replays: int = 0
    resyncs: int = 0
    malformed: int = 0
    unknown_events: int = 0
    silent_feeds: int = 0  # times a rank's feed went quiet while the rank kept finishing requests


@dataclass
class _RankState:
    expected_seq: int | None = None  # None until the first batch
    last_live_seq: int | None = None  # the newest number seen on the live stream
    replaying: bool = False
    replay_deadline_s: float = 0.0
    held: dict[int, bytes] = field(default_factory=dict)  # seq -> payload, during a gap


class EventApplier:
    """Socket-free core: sequence tracking, gap handling and event application.

    `on_live(rank, seq, payload, now_s)` returns True when the caller should request a
    replay from `state(rank).expected_seq`.
    """

    def __init__(self, tree: GlobalTree, replay_available: bool, watch: FeedWatchConfig = FeedWatchConfig()):
        self.tree = tree
        self.replay_available = replay_available
        self.ranks = [_RankState() for _ in range(tree.num_workers)]
        self.watch = FeedWatch(tree.num_workers, watch)
        self.stats = FeedStats()
        self._warned_unknown: set[str] = set()

    def state(self, rank: int) -> _RankState:
        return self.ranks[rank]

    def on_live(self, rank: int, seq: int, payload: bytes, now_s: float) -> bool:
        if self.watch.on_batch(rank, now_s):
            logger.warning("kv-events: rank %d feed is back (batch %d)", rank, seq)
            replay = self._on_live(rank, seq, payload, now_s)
            if not self.ranks[rank].replaying:  # else the replay's end decides
                self.tree.mark_uncertain(rank, False)
            return replay
        return self._on_live(rank, seq, payload, now_s)

    def on_work_done(self, rank: int, now_s: float) -> None:
        """A request finished on `rank`: evidence that its cache changed."""
        self.watch.on_finished(rank, now_s)

    def _on_live(self, rank: int, seq: int, payload: bytes, now_s: float) -> bool:
        st = self.ranks[rank]
        if st.last_live_seq is not None and seq <= st.last_live_seq:
            st = self._restart(rank, seq)
        st.last_live_seq = seq
        if st.expected_seq is None:
            # First batch seen. A late subscriber (ZMQ's slow joiner) may have missed
            # the first ones: treat a non-zero start as a gap from 0.
            st.expected_seq = 0
        if st.replaying:
            st.held[seq] = payload
            return False
        if seq == st.expected_seq:
            self._apply(rank, payload)
            st.expected_seq = seq + 1
            return False
        if seq < st.expected_seq:
            return False  # a duplicate (already applied from a replay)
        self.stats.gaps += 1
        logger.warning("kv-events: rank %d sequence gap (expected %d, got %d)", rank, st.expected_seq, seq)
        st.held[seq] = payload
        if self.replay_available:
            st.replaying = True
            st.replay_deadline_s = now_s + REPLAY_TIMEOUT_S
            self.tree.mark_uncertain(rank)
            self.stats.replays += 1
            return True
        self._resync(rank)
        return False

    def on_replayed(self, rank: int, seq: int, payload: bytes) -> None:
        st = self.ranks[rank]
        if seq == st.expected_seq:
            self._apply(rank, payload)
            st.expected_seq = seq + 1

    def on_replay_end(self, rank: int) -> None:
        """The replay finished (or timed out): catch up from held batches, else resync."""
        st = self.ranks[rank]
        st.replaying = False
        for seq in [s for s in st.held if s < st.expected_seq]:
            del st.held[seq]  # the replay already covered it
        while st.expected_seq in st.held:
            self._apply(rank, st.held.pop(st.expected_seq))
            st.expected_seq += 1
        if st.held:
            self._resync(rank)
        else:
            self.tree.mark_uncertain(rank, False)
            logger.info("kv-events: rank %d gap repaired from the replay buffer", rank)

    def check_timeouts(self, now_s: float) -> None:
        for rank, st in enumerate(self.ranks):
            if st.replaying and now_s >= st.replay_deadline_s:
                logger.warning("kv-events: rank %d replay timed out", rank)
                self.on_replay_end(rank)
        for rank in self.watch.check(now_s):
            self.stats.silent_feeds += 1
            self.tree.mark_uncertain(rank)
            logger.warning("kv-events: rank %d finished %d request(s) over %.1f s with no event batch: its "
                           "feed is silent; routing treats it as uncached until a batch arrives", rank,
                           self.watch.ranks[rank].finishes, now_s - self.watch.ranks[rank].first_finish_s)

    def _restart(self, rank: int, seq: int) -> _RankState:
        """The rank's publisher started over: its old cache is gone, its numbers begin
        again at 0. Returns the rank's fresh state."""
        self.stats.restarts += 1
        logger.warning("kv-events: rank %d restarted its event stream (seq %d after %d); mirror cleared",
                       rank, seq, self.ranks[rank].last_live_seq)
        self.ranks[rank] = _RankState()
        self.tree.apply_cleared(rank)
        self.tree.mark_uncertain(rank, False)
        return self.ranks[rank]

    def _resync(self, rank: int) -> None:
        """Forget the rank's mirror and follow its live stream from the newest batch."""
        st = self.ranks[rank]
        self.stats.resyncs += 1
        self.tree.apply_cleared(rank)
        newest = max(st.held) if st.held else None
        if newest is not None:
            self._apply(rank, st.held[newest])
            st.expected_seq = newest + 1
        st.held.clear()
        self.tree.mark_uncertain(rank, False)
        logger.warning("kv-events: rank %d resynced: mirror cleared, following the live stream", rank)

    def _apply(self, rank: int, payload: bytes) -> None:
        try:
            batch = msgspec.msgpack.decode(payload)
            events = batch[1]
        except (msgspec.DecodeError, IndexError, TypeError, KeyError) as exc:
            self.stats.malformed += 1
            logger.error("kv-events: rank %d: skipped a malformed batch: %s", rank, exc)
            return
        self.stats.batches += 1
        tree = self.tree
        for event in events:
            try:
                kind = event.get("type") if isinstance(event, dict) else None
                if event.get("medium") not in GPU_MEDIA:
                    continue
                if kind == "BlockStored":
                    hashes = event["block_hashes"]
                    # Pages stored under a cache salt or a named LoRA adapter are another
                    # namespace's (`namespaces.py`: what the events say about it).
                    salt, lora = event.get("cache_salt"), event.get("lora_name")
                    namespace = None if salt is None and lora is None else event_namespace(lora, salt)
                    tree.apply_stored(rank, hashes, event.get("parent_block_hash"), event["token_ids"], namespace)
                    self.stats.stored_pages += len(hashes)
                elif kind == "BlockRemoved":
                    hashes = event["block_hashes"]
                    tree.apply_removed(rank, hashes)
                    self.stats.removed_pages += len(hashes)
                elif kind == "AllBlocksCleared":
                    tree.apply_cleared(rank)
                    self.stats.cleared += 1
                else:
                    self.stats.unknown_events += 1
                    if str(kind) not in self._warned_unknown:
                        self._warned_unknown.add(str(kind))
                        logger.warning("kv-events: rank %d: skipping unknown event type %r", rank, kind)
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
                self.stats.malformed += 1
                logger.error("kv-events: rank %d: skipped a malformed event: %s", rank, exc)
