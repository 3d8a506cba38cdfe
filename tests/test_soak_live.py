"""`bench soak` end to end, briefly (20 s of Locust against real SGLang dp=2 on CPU): the
series are sampled and written, and the checks that do not depend on the host's speed
pass. The 10-minute run is the benchmark (docs/results/soak/)."""

from __future__ import annotations

import argparse
import json

import pytest

from sglang_ext.bench import soak

pytestmark = pytest.mark.sglang


def test_a_short_soak_samples_the_controller_and_locust_and_writes_its_outputs(tmp_path):
    parser = argparse.ArgumentParser()
    soak.add_arguments(parser)
    out = tmp_path / "soak"
    args = parser.parse_args(["--duration-s", "20", "--rate-rps", "2", "--sample-interval-s", "2",
                              "--warmup-s", "2", "--out", str(out)])
    soak.run(args)  # the exit code depends on latency and rate over 20 s on a shared host
    result = json.loads((out / "soak.json").read_text())
    series, checks = result["series"], {c["name"]: c for c in result["checks"]}
    assert len(series["controller"]) >= 5 and len(series["latency"]) >= 10
    assert all(s["rss_mib"] > 100 and s["kv_capacity_tokens"] == [16384, 16384] for s in series["controller"])
    assert max(max(s["tree_tokens"]) for s in series["controller"]) > 0  # the mirror saw the prompts
    for name in ("no failures", "mirror tokens <= worker KV capacity", "ledger in-flight bounded"):
        assert checks[name]["passed"], checks[name]
    assert series["in_flight_after_drain"] == 0
    assert (out / "soak.png").stat().st_size > 10_000 and "PASS" in (out / "table.txt").read_text()
