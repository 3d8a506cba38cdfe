"""Per-rank feed endpoints, advertised by the ranks themselves (SGLang's Ray path).

On the local path the controller binds the report socket on an `ipc://` path and the
KV-event ports follow SGLang's scheme (rank r publishes on the configured base port + r,
on the configured host): everything is on one machine. In Ray actors (see
`ray_actors.py`) a rank may run on another node, so neither an IPC path nor "the front
end's host" reaches it. There each rank, in advertise mode:

- binds its KV-event PUB and replay ROUTER on its own feed host, keeping SGLang's
  per-rank port (`kv_event_endpoint_hook`, a BEFORE hook on `ZmqEventPublisher.__init__`,
  `sglang/srt/disaggregation/kv_events.py`, whose `offset_endpoint_port` adds the rank);
- binds its report PUSH there on a port the kernel picks (`completions.py`);
- puts the endpoints it actually bound into its `Scheduler.get_init_info()` reply under
  `ADVERTISED_KEY` (`init_info_hook`, an AFTER hook). SGLang's Ray controller collects
  every actor's reply (`ray.get(actor.get_info.remote())` in
  `sglang/srt/ray/data_parallel_controller.py: _launch_ray_tp_group`) into
  `_scheduler_init_infos` (`DataParallelController._record_scheduler_init_infos`), where
  our controller reads them (`advertised_feeds`) and connects.

What travels: the KV events carry the token ids of every cached prompt block; the
reports carry request ids and token counts. Both are unauthenticated ZeroMQ, so the feed
host must be a private interface (docs/multinode.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

ADVERTISED_KEY = "sglang_ext_feeds"


@dataclass(frozen=True)
class RankFeeds:
    """What one rank advertised: where to pull its reports and subscribe to its events."""

    dp_rank: int
    reports: str
    kv_events: str | None = None
    kv_replay: str | None = None

    def as_dict(self) -> dict:
        return {"dp_rank": self.dp_rank, "reports": self.reports,
                "kv_events": self.kv_events, "kv_replay": self.kv_replay}


class BadAdvertisement(ValueError):
    pass


def advertised_feeds(infos: list[dict], num_ranks: int) -> dict[int, RankFeeds]:
    """The feeds the ranks advertised, by DP rank; empty when none did (local path).

    Raises `BadAdvertisement` (one line) for a malformed entry, a rank outside
    0..num_ranks-1, or two entries for one rank with different endpoints (two ranks
    claiming one rank number would merge their feeds)."""
    found: dict[int, RankFeeds] = {}
    for info in infos:
        entry = info.get(ADVERTISED_KEY) if isinstance(info, dict) else None
        if entry is None:
            continue
        feeds = _parse(entry)
        if not 0 <= feeds.dp_rank < num_ranks:
            raise BadAdvertisement(f"a scheduler advertised feeds for dp_rank {feeds.dp_rank}, "
                                   f"outside 0..{num_ranks - 1}")
        if feeds.dp_rank in found and found[feeds.dp_rank] != feeds:
            raise BadAdvertisement(f"two schedulers advertised different feeds for dp_rank {feeds.dp_rank}")
        found[feeds.dp_rank] = feeds
    if found and len(found) != num_ranks:
        missing = sorted(set(range(num_ranks)) - set(found))
        raise BadAdvertisement(f"dp rank(s) {missing} advertised no feeds while others did")
    return found


def _parse(entry) -> RankFeeds:
    if not isinstance(entry, dict):
        raise BadAdvertisement(f"{ADVERTISED_KEY} must be a mapping, got {type(entry).__name__}")
    rank, reports = entry.get("dp_rank"), entry.get("reports")
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise BadAdvertisement(f"{ADVERTISED_KEY}.dp_rank must be an integer, got {rank!r}")
    endpoints = {k: entry.get(k) for k in ("kv_events", "kv_replay")}
    for key, value in [("reports", reports), *endpoints.items()]:
        if value is None and key != "reports":
            continue
        if not isinstance(value, str) or not value.startswith(("tcp://", "ipc://")):
            raise BadAdvertisement(f"rank {rank}: {ADVERTISED_KEY}.{key} is not a tcp:// or ipc:// endpoint: {value!r}")
    return RankFeeds(rank, reports, endpoints["kv_events"], endpoints["kv_replay"])


def tcp_endpoint(host: str, port: int | str) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


def with_host(endpoint: str | None, host: str) -> str | None:
    """The same tcp:// endpoint (port kept) on `host`; other schemes unchanged."""
    if not endpoint or not endpoint.startswith("tcp://"):
        return endpoint
    port = endpoint.rsplit(":", 1)[1]
    return tcp_endpoint(host, port)


# ------------------------------------------------------------ scheduler-side hooks


def kv_event_endpoint_hook(*args, **kwargs):
    """BEFORE hook on `ZmqEventPublisher.__init__(self, attn_dp_rank, endpoint=...,
    replay_endpoint=None, ..., bind=None)`: in advertise mode, bind on this node's feed
    host (SGLang's factory passes these by keyword: `EventPublisherFactory.create`)."""
    from sglang_ext import ray_actors

    if not ray_actors.advertise_mode():
        return None
    host = ray_actors.feed_host()
    for key in ("endpoint", "replay_endpoint"):
        if key in kwargs:
            kwargs[key] = with_host(kwargs[key], host)
    if kwargs.get("endpoint", "").startswith("tcp://"):
        kwargs["bind"] = True  # a specific host would otherwise be connected to, not bound
    return args, kwargs


def init_info_hook(result, scheduler, *args, **kwargs):
    """AFTER hook on `Scheduler.get_init_info(self)`: add this rank's feeds in advertise
    mode. Never raises into the scheduler's start-up: a rank that cannot advertise is
    logged and the controller then refuses the mixed set (`advertised_feeds`)."""
    from sglang_ext import completions, ray_actors

    if not ray_actors.advertise_mode() or not isinstance(result, dict):
        return None
    try:
        publisher = completions.ensure_publisher()
        if publisher is None:
            return None
        source = {}
        events = getattr(scheduler, "kv_events_publisher", None)
        if events is not None:
            sources = events.local_kv_event_sources(1)
            source = sources[0] if sources else {}
        result[ADVERTISED_KEY] = RankFeeds(
            publisher.dp_rank, publisher.endpoint, source.get("endpoint"), source.get("replay_endpoint"),
        ).as_dict()
    except Exception:
        logger.exception("feeds: this rank could not advertise its feeds")
    return None
