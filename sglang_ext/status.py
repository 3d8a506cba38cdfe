"""A JSON status file the controller keeps current: what it believes about the cluster.

Operators and tests read it to see the ledger, the mirror and the feeds without
attaching to the controller process. Written atomically (a temp file beside it, then a
rename), at most every `min_interval_s`, only when something changed. Enabled by
SGLANG_EXT_STATUS_FILE.

The temp file gets a fresh random name, created exclusively (`tempfile.mkstemp`:
`O_CREAT | O_EXCL`, mode 0600): a fixed name such as `status.json.tmp` in a shared
folder could be a symlink planted by another user, and opening it would write through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from collections import deque

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
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, default=_plain)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
        self._dirty = False
        self._last_write_s = now_s


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if hasattr(obj, "__struct_fields__"):
        return {f: getattr(obj, f) for f in obj.__struct_fields__}
    return str(obj)
