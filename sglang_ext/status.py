"""A JSON status file the controller keeps current: what it believes about the cluster.

Operators and tests read it to see the ledger, the mirror and the feeds without
attaching to the controller process. Written atomically (a temp file beside it, then a
rename), at most every `min_interval_s`, only when something changed. Enabled by
SGLANG_EXT_STATUS_FILE.

The temp file gets a fresh random name, created exclusively (`tempfile.mkstemp`:
`O_CREAT | O_EXCL`, mode 0600): a fixed name such as `status.json.tmp` in a shared
folder could be a symlink planted by another user, and opening it would write through.

Encoded by `msgspec.json` (one encoder, built once): dataclasses and msgspec structs (the
feed counters) encode natively as JSON objects, anything else as its `str`. The output
is compact JSON (no spaces after separators); a float that is not finite becomes null.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections import deque

import msgspec

ENV_STATUS_FILE = "SGLANG_EXT_STATUS_FILE"


class StatusWriter:
    def __init__(self, path: str, min_interval_s: float = 0.2, recent: int = 512):
        self.path = path
        self.min_interval_s = min_interval_s
        self.decisions: deque[dict] = deque(maxlen=recent)
        self._dirty = True
        self._last_write_s = float("-inf")

    def record_decision(self, rid: str, worker: int, cached_tokens: list[int], now_s: float) -> None:
        self.decisions.append({"rid": rid, "worker": worker, "cached_tokens": list(cached_tokens), "t": now_s})
        self._dirty = True

    def mark_dirty(self) -> None:
        self._dirty = True

    def maybe_write(self, now_s: float, snapshot) -> None:
        """`snapshot()` builds the dict; called only when a write is due."""
        if not self._dirty or now_s - self._last_write_s < self.min_interval_s:
            return
        body = snapshot()
        body["recent_decisions"] = list(self.decisions)
        folder, name = os.path.split(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_ENCODER.encode(body))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        self._dirty = False
        self._last_write_s = now_s


def _plain(obj):
    """What msgspec cannot encode itself (a numpy scalar, a deque...): its text."""
    return str(obj)


_ENCODER = msgspec.json.Encoder(enc_hook=_plain)
