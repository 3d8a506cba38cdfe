"""Silent-feed detection: a rank whose KV events stopped while it kept working.

A sequence gap shows lost events only once a later batch arrives (`events.py`); a feed
that stops altogether (the subscriber's connection dropped and not re-established, the
publisher stuck) shows nothing, and the mirror of that rank silently goes stale. The
worker's own reports keep coming over another channel, though: our completion reports
(`sglang_ext/completions.py`). Every request a worker finishes is inserted into its radix
cache, and an insert that adds pages publishes `BlockStored` (SGLang 0.5.23,
`srt/mem_cache/radix_cache.py`: `cache_finished_req` calls `insert`, whose new nodes go
through `_record_store_event`). So finished requests with no event batch after them mean
the feed cannot be trusted: the rank is marked silent, and the caller marks it uncertain
in the mirror (routing then counts it as uncached: under-reporting a cache is safe,
trusting a stale one is not) until its next batch arrives.

One finish is no evidence (a request whose whole sequence was cached already stores no
page, and a batch may lag its completion report by a scheduler step): a rank is silent
once `min_finishes` requests finished on it, the first of them `silence_s` ago or more,
with no batch since. Times are passed in (host clock), so the rule is tested by hand.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeedWatchConfig:
    silence_s: float = 3.0  # how long finished work may go without an event batch
    min_finishes: int = 3  # finished requests needed as evidence


@dataclass
class _RankWatch:
    finishes: int = 0  # finished requests since the last batch
    first_finish_s: float = 0.0  # when the first of them was reported
    silent: bool = False


class FeedWatch:
    def __init__(self, num_workers: int, config: FeedWatchConfig = FeedWatchConfig()):
        if config.min_finishes < 1 or config.silence_s < 0:
            raise ValueError(f"feed watch needs min_finishes >= 1 and silence_s >= 0, got {config}")
        self.config = config
        self.ranks = [_RankWatch() for _ in range(num_workers)]
        self.detected = 0  # times a rank was found silent

    def on_batch(self, rank: int, now_s: float) -> bool:
        """An event batch from `rank` arrived; returns True when the rank was silent
        (the caller may trust it again)."""
        w = self.ranks[rank]
        was_silent = w.silent
        self.ranks[rank] = _RankWatch()
        return was_silent

    def on_finished(self, rank: int, now_s: float) -> None:
        """A request finished on `rank` (its completion report arrived)."""
        if not 0 <= rank < len(self.ranks):
            return  # a report for a rank we do not watch: no evidence either way
        w = self.ranks[rank]
        if w.finishes == 0:
            w.first_finish_s = now_s
        w.finishes += 1

    def check(self, now_s: float) -> list[int]:
        """Ranks found silent by this check (each reported once until its next batch)."""
        found = []
        for rank, w in enumerate(self.ranks):
            if (not w.silent and w.finishes >= self.config.min_finishes
                    and now_s - w.first_finish_s >= self.config.silence_s):
                w.silent = True
                self.detected += 1
                found.append(rank)
        return found

    def silent(self, rank: int) -> bool:
        return self.ranks[rank].silent
