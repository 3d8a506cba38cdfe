"""Feeds that ranks advertise (SGLang's Ray path), without Ray: real ZeroMQ over TCP
between processes.

Two child processes stand in for two ranks on two nodes: each is in advertise mode
with its own feed host (127.0.0.2 and 127.0.0.3: two addresses, as two machines would
have), loads SGLang's plugins (so our hooks are the ones SGLang's classes run), builds
SGLang's own KV-event publisher through SGLang's factory from one shared
`--kv-events-config` that names 127.0.0.1, and answers what its `get_init_info` hook
advertises. The parent is the controller side: it connects to what was advertised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import zmq

from sglang_ext.feeds import BadAdvertisement, RankFeeds, advertised_feeds, with_host

pytest.importorskip("sglang")


def _info(rank, reports="tcp://10.0.0.5:4000", kv="tcp://10.0.0.5:5000", replay="tcp://10.0.0.5:5100"):
    return {"status": "ready", "sglang_ext_feeds": {"dp_rank": rank, "reports": reports,
                                                   "kv_events": kv, "kv_replay": replay}}


def test_advertised_feeds_are_keyed_by_rank_and_absent_on_the_local_path():
    infos = [_info(1, kv="tcp://10.0.0.6:5001"), _info(0)]
    feeds = advertised_feeds(infos, 2)
    assert feeds[0] == RankFeeds(0, "tcp://10.0.0.5:4000", "tcp://10.0.0.5:5000", "tcp://10.0.0.5:5100")
    assert feeds[1].kv_events == "tcp://10.0.0.6:5001"
    assert advertised_feeds([{"status": "ready"}, {"status": "ready"}], 2) == {}


@pytest.mark.parametrize("infos, message", [
    ([_info(0), _info(2)], "outside 0..1"),
    ([_info(0), _info(0, reports="tcp://10.0.0.9:1")], "different feeds for dp_rank 0"),
    ([_info(0), {"status": "ready"}], r"dp rank\(s\) \[1\] advertised no feeds"),
    ([_info(0), _info(1, reports="10.0.0.5:4000")], "reports is not a tcp:// or ipc:// endpoint"),
    ([_info("0"), _info(1)], "dp_rank must be an integer"),
])
def test_a_bad_advertisement_is_refused_with_a_one_line_reason(infos, message):
    with pytest.raises(BadAdvertisement, match=message):
        advertised_feeds(infos, 2)


def test_with_host_keeps_the_port_and_brackets_ipv6():
    assert with_host("tcp://127.0.0.1:5557", "10.1.2.3") == "tcp://10.1.2.3:5557"
    assert with_host("tcp://*:5557", "fd00::2") == "tcp://[fd00::2]:5557"
    assert with_host("ipc:///tmp/x", "10.1.2.3") == "ipc:///tmp/x"


# One rank: advertise mode, SGLang's plugins, SGLang's publisher factory; then, per line
# "go" on stdin, one KV-event batch and one finished-request report.
RANK = r"""
import json, sys, time
from types import SimpleNamespace
rank, config = int(sys.argv[1]), sys.argv[2]
from sglang_ext import ray_actors
ray_actors.setup_worker()   # what Ray runs in each actor: advertise mode + load_plugins
from sglang.srt.runtime_context import SpawnRanks, publish
from sglang.srt.server_args import ServerArgs
publish(ServerArgs(model_path=sys.argv[3], device="cpu", dp_size=2), role="scheduler",
        ranks=SpawnRanks(world_rank=0, dp_rank=rank, gpu_id=0))
from sglang.srt.disaggregation.kv_events import BlockStored, EventPublisherFactory, KVEventBatch
from sglang.srt.managers.scheduler import Scheduler
from sglang_ext import completions
pub = EventPublisherFactory.create(config, attn_dp_rank=rank)
component = SimpleNamespace(local_kv_event_sources=lambda size: [pub.describe_local_source(size)])
scheduler = SimpleNamespace(kv_events_publisher=component)
print(json.dumps(Scheduler.get_init_info(SimpleNamespace(
    **vars(scheduler), max_total_num_tokens=1, max_req_input_len=1, startup_time=None,
    _hicache_l3_layout=lambda: None))), flush=True)
n = 0
for line in sys.stdin:
    if line.strip() != "go":
        break
    n += 1
    token = 100 * (rank + 1) + n
    pub.publish(KVEventBatch(ts=time.time(), events=[BlockStored(
        block_hashes=[token], parent_block_hash=None, token_ids=[token], block_size=1, lora_id=None, medium="GPU")]))
    req = SimpleNamespace(rid=f"r{rank}-{n}", finished=lambda: True, output_ids=[1, 2], origin_input_ids=[token],
                          cached_tokens=0, finished_output=False)
    completions.stream_output_hook(None, [req], False)
pub.shutdown()
"""


@pytest.fixture
def two_ranks(tmp_path):
    from conftest import tiny_model
    from sglang_ext.launch_server import loopback_kv_events_config

    config = json.dumps(loopback_kv_events_config(2))
    procs = []
    for rank, host in enumerate(["127.0.0.2", "127.0.0.3"]):
        env = dict(os.environ, SGLANG_EXT_FEED_HOST=host, SGLANG_PLUGINS="prefix_length_dp",
                   SGLANG_EXT_REPORTS="ipc:///nonexistent/driver-path")  # must be ignored there
        procs.append(subprocess.Popen([sys.executable, "-c", RANK, str(rank), config, tiny_model()],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                      stderr=open(tmp_path / f"rank{rank}.log", "w")))
    try:
        yield config, procs
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


def test_two_ranks_on_two_addresses_feed_the_controller_over_tcp(two_ranks, tmp_path):
    from sglang_ext import completions
    from sglang_ext.core.global_tree import GlobalTree
    from sglang_ext.kv_events import EventFeedConfig, KVEventSubscriber

    config, procs = two_ranks
    infos = []
    for rank, p in enumerate(procs):
        line = p.stdout.readline()
        assert line, (tmp_path / f"rank{rank}.log").read_text()[-3000:]
        infos.append(json.loads(line))
    feeds = advertised_feeds(infos, 2)
    # Each rank bound on its own address, at SGLang's per-rank port, not where the
    # shared config (127.0.0.1) or a front end's host would put it.
    base = int(json.loads(config)["endpoint"].rsplit(":", 1)[1])
    assert feeds[0].kv_events == f"tcp://127.0.0.2:{base}"
    assert feeds[1].kv_events == f"tcp://127.0.0.3:{base + 1}"
    assert feeds[0].reports.startswith("tcp://127.0.0.2:") and feeds[1].reports.startswith("tcp://127.0.0.3:")

    ctx = zmq.Context()
    reports = ctx.socket(zmq.PULL)
    for f in feeds.values():
        reports.connect(f.reports)
    tree = GlobalTree(2, page_size=1)
    sub = KVEventSubscriber(EventFeedConfig.from_server_args(config).at_advertised(feeds), tree, ctx)
    poller = zmq.Poller()
    for s in [reports, *sub.sockets()]:
        poller.register(s, zmq.POLLIN)
    finished: dict[int, list[str]] = {0: [], 1: []}
    deadline = time.monotonic() + 60
    next_go = 0.0

    def done():
        return all(finished.values()) and tree.match([101])[0] == 1 and tree.match([201])[1] == 1

    while not done() and time.monotonic() < deadline:
        if time.monotonic() >= next_go:  # until both connections are up, sends may be lost
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            next_go = time.monotonic() + 0.5
        for sock, _ in poller.poll(50):
            if sock is reports:
                batch = completions.decode_batch(reports.recv())
                finished[batch.dp_rank] += [r.rid for r in batch.reports if r.kind == completions.FINISHED]
            else:
                sub.handle(sock, time.monotonic())
    assert done(), (finished, tree.match([101]), tree.match([201]))
    # Rank 0's events reached only worker 0's view, rank 1's only worker 1's.
    assert tree.match([101])[1] == 0 and tree.match([201])[0] == 0
    assert all(rid.startswith("r0-") for rid in finished[0]) and all(rid.startswith("r1-") for rid in finished[1])
    sub.close()
    ctx.destroy(linger=0)


def test_the_kv_event_hook_does_nothing_outside_advertise_mode(monkeypatch):
    from sglang_ext import feeds

    monkeypatch.delenv("SGLANG_EXT_ADVERTISE_FEEDS", raising=False)
    assert feeds.kv_event_endpoint_hook(SimpleNamespace(), attn_dp_rank=0, endpoint="tcp://127.0.0.1:5557") is None
    monkeypatch.setenv("SGLANG_EXT_ADVERTISE_FEEDS", "1")
    monkeypatch.setenv("SGLANG_EXT_FEED_HOST", "10.9.8.7")
    args, kwargs = feeds.kv_event_endpoint_hook(SimpleNamespace(), attn_dp_rank=1, endpoint="tcp://127.0.0.1:5557",
                                                replay_endpoint="tcp://127.0.0.1:5600")
    assert kwargs == {"attn_dp_rank": 1, "endpoint": "tcp://10.9.8.7:5557",
                      "replay_endpoint": "tcp://10.9.8.7:5600", "bind": True}
