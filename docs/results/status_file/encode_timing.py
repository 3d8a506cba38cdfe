"""Time the status file's encoding: msgspec (sglang_ext/status.py today) against the
json.dumps(default=...) it replaced, on a snapshot shaped like the controller's (per-worker
loads, the decision-time histogram, 512 recent decisions), at 2 and 128 workers.

    .venv/bin/python docs/results/status_file/encode_timing.py
"""

from __future__ import annotations

import json
import timeit

from sglang_ext.core.events import FeedStats
from sglang_ext.status import _ENCODER


def snapshot(workers: int) -> dict:
    load = dict(requests=3, queued_requests=1, queued_prefill_tokens=812, pending_decode_tokens=300,
                kv_tokens_used=12000, kv_tokens_committed=13000, kv_capacity_tokens=16384, alive=True)
    return {"policy": "prefix_length_aware", "loads": [dict(load) for _ in range(workers)],
            "tree": {"tokens_held": [12000] * workers}, "kv_events": FeedStats(),
            "decision_time": {"counts": [0] * 192, "count": 10}, "dispatched_by_worker": [100] * workers,
            "recent_decisions": [{"rid": f"{i:032x}", "worker": i % workers, "cached_tokens": [512] * workers,
                                  "t": i * 0.01} for i in range(512)]}


def old_encode(body: dict) -> str:
    def plain(obj):
        if hasattr(obj, "__struct_fields__"):
            return {f: getattr(obj, f) for f in obj.__struct_fields__}
        return str(obj)

    return json.dumps(body, default=plain)


def main() -> None:
    for workers, number in ((2, 200), (128, 20)):
        body = snapshot(workers)
        old = min(timeit.repeat(lambda: old_encode(body), number=number, repeat=5)) / number
        new = min(timeit.repeat(lambda: _ENCODER.encode(body), number=number, repeat=5)) / number
        print(f"{workers:>3} workers: json.dumps {old * 1e3:.3f} ms, msgspec {new * 1e3:.3f} ms "
              f"({old / new:.1f}x), {len(_ENCODER.encode(body)):,} vs {len(old_encode(body)):,} bytes")


if __name__ == "__main__":
    main()
