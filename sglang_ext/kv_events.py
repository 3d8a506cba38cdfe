"""Feed the global mirror from SGLang's KV-cache events (one ZMQ PUB per DP rank).

Wire format (SGLang 0.5.23, `--kv-events-config '{"publisher": "zmq", ...}'`): frames
`[topic, seq (8 bytes big-endian), payload]`, payload a msgpack array
`[ts, events, attn_dp_rank]`, each event a map tagged by `type`: `BlockStored`,
`BlockRemoved`, `AllBlocksCleared`. Rank r publishes on the base port + r.

We decode payloads generically (plain msgpack, then dispatch on the tag) rather than
with SGLang's typed union, so an event type we do not know is skipped with a log line
instead of failing its whole batch. Events of a non-GPU `medium` (the host-memory tier of
hierarchical caching) are ignored: only device-resident pages save prefill.

Gaps: each rank's sequence numbers must be consecutive. On a gap the rank is marked
uncertain in the tree (the router then trusts none of its matches), later live batches
are held back, and the missed range is asked for on the replay endpoint when there is
one. When the replay ends (or there is no replay endpoint, or the replay cannot cover
the gap) the rank is *resynced*: its mirror is cleared and rebuilt from the live stream
from then on. Under-reporting a cache is safe; trusting a stale one sends requests to a
worker that no longer holds their prefix.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import msgspec
import zmq

from sglang_ext.global_tree import GlobalTree

logger = logging.getLogger(__name__)

END_SEQ = -1
GPU_MEDIA = (None, "GPU", "gpu")
REPLAY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class EventFeedConfig:
    """Where rank r publishes: the base endpoint with its port offset by r."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""

    @classmethod
    def from_server_args(cls, kv_events_config: str | None) -> EventFeedConfig | None:
        """Parse SGLang's `--kv-events-config` JSON; None when events are off."""
        if not kv_events_config:
            return None
        try:
            cfg = json.loads(kv_events_config)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--kv-events-config is not valid JSON: {exc}") from None
        if cfg.get("publisher", "null") != "zmq":
            return None
        endpoint = cfg.get("endpoint", "tcp://*:5557")
        return cls(_connectable(endpoint), _connectable(cfg.get("replay_endpoint")), cfg.get("topic", ""))

    def rank_endpoint(self, endpoint: str, rank: int) -> str:
        if rank == 0 or not endpoint.startswith("tcp://"):
            return endpoint if rank == 0 else f"{endpoint}_dp{rank}"
        host, port = endpoint.rsplit(":", 1)
        return f"{host}:{int(port) + rank}"


def _connectable(endpoint: str | None) -> str | None:
    """A subscriber connects to loopback where the publisher bound a wildcard."""
    if endpoint is None:
        return None
    for wildcard in ("tcp://*:", "tcp://0.0.0.0:"):
        if endpoint.startswith(wildcard):
            return "tcp://127.0.0.1:" + endpoint[len(wildcard):]
    return endpoint


class FeedStats(msgspec.Struct):
    batches: int = 0
    stored_pages: int = 0
    removed_pages: int = 0
    cleared: int = 0
    gaps: int = 0
    replays: int = 0
    resyncs: int = 0
    malformed: int = 0
    unknown_events: int = 0


@dataclass
class _RankState:
    expected_seq: int | None = None  # None until the first batch
    replaying: bool = False
    replay_deadline_s: float = 0.0
    held: dict[int, bytes] = field(default_factory=dict)  # seq -> payload, during a gap


class EventApplier:
    """Socket-free core: sequence tracking, gap handling and event application.

    `on_live(rank, seq, payload, now_s)` returns True when the caller should request a
    replay from `state(rank).expected_seq`.
    """

    def __init__(self, tree: GlobalTree, replay_available: bool):
        self.tree = tree
        self.replay_available = replay_available
        self.ranks = [_RankState() for _ in range(tree.num_workers)]
        self.stats = FeedStats()
        self._warned_unknown: set[str] = set()

    def state(self, rank: int) -> _RankState:
        return self.ranks[rank]

    def on_live(self, rank: int, seq: int, payload: bytes, now_s: float) -> bool:
        st = self.ranks[rank]
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
                    tree.apply_stored(rank, hashes, event.get("parent_block_hash"), event["token_ids"])
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


class KVEventSubscriber:
    """The ZMQ side: one SUB (and, with replay, one DEALER) per rank, polled by the
    controller's event loop."""

    def __init__(self, config: EventFeedConfig, tree: GlobalTree, context: zmq.Context | None = None):
        self.config = config
        self.applier = EventApplier(tree, replay_available=config.replay_endpoint is not None)
        self.context = context or zmq.Context.instance()
        self.subs: list[zmq.Socket] = []
        self.replays: list[zmq.Socket | None] = []
        self._rank_of: dict[zmq.Socket, int] = {}
        for rank in range(tree.num_workers):
            sub = self.context.socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, config.topic.encode())
            sub.connect(config.rank_endpoint(config.endpoint, rank))
            self.subs.append(sub)
            self._rank_of[sub] = rank
            replay = None
            if config.replay_endpoint:
                replay = self.context.socket(zmq.DEALER)
                replay.setsockopt(zmq.LINGER, 0)
                replay.connect(config.rank_endpoint(config.replay_endpoint, rank))
                self._rank_of[replay] = rank
            self.replays.append(replay)
        logger.info("kv-events: subscribed to %d rank(s) at %s (replay: %s)", tree.num_workers,
                    config.endpoint, config.replay_endpoint or "none")

    def sockets(self) -> list[zmq.Socket]:
        return self.subs + [r for r in self.replays if r is not None]

    def handle(self, socket: zmq.Socket, now_s: float) -> None:
        """Drain one ready socket."""
        rank = self._rank_of[socket]
        is_replay = socket is self.replays[rank]
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if is_replay:
                frames = frames[1:]  # the DEALER sees the empty delimiter first
            if len(frames) != 3 or len(frames[1]) != 8:
                self.applier.stats.malformed += 1
                logger.error("kv-events: rank %d: skipped a frame set of unexpected shape (%d parts)", rank, len(frames))
                continue
            seq = int.from_bytes(frames[1], "big", signed=True)
            if is_replay:
                if seq == END_SEQ:
                    self.applier.on_replay_end(rank)
                else:
                    self.applier.on_replayed(rank, seq, frames[2])
            elif self.applier.on_live(rank, seq, frames[2], now_s):
                start = self.applier.state(rank).expected_seq
                self.replays[rank].send_multipart([b"", start.to_bytes(8, "big")])

    def close(self) -> None:
        for s in self.sockets():
            s.close(0)
