"""Subscribe to SGLang's KV-cache events (one ZMQ PUB per DP rank) and hand each batch
to the socket-free `core.events.EventApplier`.

Wire format (SGLang 0.5.23, `--kv-events-config '{"publisher": "zmq", ...}'`): frames
`[topic, seq (8 bytes big-endian), payload]`; rank r publishes on the base port + r (on
its own node's feed host in SGLang's Ray actors, where each rank advertises the
endpoints it bound: `feeds.py`). A
replay endpoint (a ROUTER per rank) answers `[b"", start seq]` with the buffered batches
from there and an end marker (seq -1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

import zmq

from sglang_ext.core.events import EventApplier
from sglang_ext.core.global_tree import GlobalTree

logger = logging.getLogger(__name__)

END_SEQ = -1


@dataclass(frozen=True)
class EventFeedConfig:
    """Where rank r publishes: the base endpoint with its port offset by r."""

    endpoint: str
    replay_endpoint: str | None = None
    topic: str = ""
    # (pub, replay) per rank as the ranks advertised them; when set they replace the
    # port-offset scheme, which assumes every rank publishes on the configured host.
    advertised: tuple[tuple[str, str | None], ...] = ()

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

    def at_advertised(self, rank_feeds: dict) -> EventFeedConfig:
        """This feed at the endpoints each rank advertised (`feeds.RankFeeds` by rank)."""
        ranks = []
        for rank in range(len(rank_feeds)):
            feeds = rank_feeds[rank]
            if feeds.kv_events is None or (self.replay_endpoint is not None and feeds.kv_replay is None):
                raise ValueError(f"KV events are on, but dp rank {rank} advertised no "
                                 f"{'publisher' if feeds.kv_events is None else 'replay'} endpoint")
            ranks.append((feeds.kv_events, feeds.kv_replay if self.replay_endpoint is not None else None))
        return dataclasses.replace(self, advertised=tuple(ranks))

    def pub_endpoint(self, rank: int) -> str:
        return self.advertised[rank][0] if self.advertised else self.rank_endpoint(self.endpoint, rank)

    def replay_endpoint_of(self, rank: int) -> str | None:
        if self.advertised:
            return self.advertised[rank][1]
        return self.rank_endpoint(self.replay_endpoint, rank) if self.replay_endpoint else None

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
            sub.connect(config.pub_endpoint(rank))
            self.subs.append(sub)
            self._rank_of[sub] = rank
            replay = None
            replay_endpoint = config.replay_endpoint_of(rank)
            if replay_endpoint:
                replay = self.context.socket(zmq.DEALER)
                replay.setsockopt(zmq.LINGER, 0)
                replay.connect(replay_endpoint)
                self._rank_of[replay] = rank
            self.replays.append(replay)
        logger.info("kv-events: subscribed to %d rank(s) at %s (replay: %s)", tree.num_workers,
                    config.endpoint, config.replay_endpoint or "none")

    def sockets(self) -> list[zmq.Socket]:
        return self.subs + [r for r in self.replays if r is not None]

    def handle(self, socket: zmq.Socket, now_s: float, max_frames: int | None = None) -> int:
        """Drain one ready socket, at most `max_frames` frame sets (the rest stay queued
        for the caller's next poll round); returns how many were taken."""
        rank = self._rank_of[socket]
        is_replay = socket is self.replays[rank]
        taken = 0
        while max_frames is None or taken < max_frames:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            taken += 1
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
        return taken

    def close(self) -> None:
        for s in self.sockets():
            s.close(0)
