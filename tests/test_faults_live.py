"""Faults against real SGLang (CPU, dp=2, tiny model, KV events with replay, loopback):
malformed frames on the sockets the controller reads, one rank's KV-event feed cut and
restored, a burst at ten times the rate, and (last) one rank's scheduler process killed.

One server for the module (`prefix_length_aware`, the launcher's loopback event feed:
PUB ports base, base + 1 and replay ROUTERs base + 2, base + 3 for dp=2, see
`launch_server.loopback_kv_events_config`).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
import urllib.error
import uuid
from concurrent.futures import ThreadPoolExecutor

import msgspec
import psutil
import pytest
import zmq

from conftest import generate, sglang_server

pytestmark = pytest.mark.sglang


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sglang_server(tmp_path_factory, load_balance_method="prefix_length_aware") as srv:
        yield srv


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(10, 1000) for _ in range(n)]


def log_since(server, offset: int) -> str:
    with open(server.log_file, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def log_size(server) -> int:
    return server.log_file.stat().st_size


def decided(status: dict, rid: str) -> dict | None:
    return next((d for d in status["recent_decisions"] if d["rid"] == rid), None)


def probe(server, input_ids: list[int]) -> dict:
    """Send one routed request; returns the controller's decision record for it (worker
    and the cached tokens per worker it saw)."""
    rid = f"probe-{uuid.uuid4().hex[:8]}"
    generate(server.url, input_ids=input_ids, max_new_tokens=2, rid=rid)
    status = server.wait_status(lambda s: decided(s, rid) is not None)
    record = decided(status, rid)
    assert record is not None, f"no decision recorded for {rid}"
    return record


class Pusher:
    """A PUSH socket connected to the given ipc paths; IMMEDIATE queues messages only on
    connections whose ZMTP handshake succeeded, i.e. to PULL peers."""

    def __init__(self, paths: list[str]):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PUSH)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.setsockopt(zmq.LINGER, 2000)
        for path in paths:
            self.sock.connect(f"ipc://{path}")

    def send(self, frame: bytes, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:  # until a handshake completed (no peer yet: EAGAIN)
            try:
                self.sock.send(frame, zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise TimeoutError("no PULL peer accepted the connection") from None
                time.sleep(0.02)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


def controller_ipc_paths(server) -> list[str]:
    """The unix socket paths the controller process bound (ZMQ ipc binds listen there)."""
    pid = server.controller_pid()
    assert pid is not None, "no controller process"
    return sorted({c.laddr for c in psutil.Process(pid).net_connections(kind="unix")
                   if isinstance(c.laddr, str) and c.laddr})


def test_malformed_frames_and_requests_are_counted_logged_and_survived(server):
    """Garbage and wrongly typed msgpack on our completion-report socket (the one socket
    the controller binds for others to write to): one clear log line each, counted in
    the status file, no traceback; requests pinned to ranks that do not exist get an
    HTTP error naming the rank (SGLang's HTTP server refuses them with 400 before they
    reach the controller); the same controller process keeps serving both ranks.

    The controller's other inputs cannot be written to from outside: it connects its
    tokenizer PULL to the tokenizer manager's bound PUSH (`data_parallel_controller.py`:
    `get_zmq_socket(..., zmq.PULL, port_args.scheduler_input_ipc_name, False)`) and its
    KV-event SUBs to the schedulers' PUBs. `tests/test_kv_events.py` sends malformed
    frames through SGLang's own publisher into our subscriber."""
    pid = server.controller_pid()
    paths = controller_ipc_paths(server)
    reports = [p for p in paths if p.startswith(server.runtime_dir + "/sglang_ext_reports_")]
    assert len(reports) == 1, paths
    before = server.wait_status(lambda s: True)
    offset = log_size(server)

    bad_reports = [
        b"\xc1 not msgpack at all",
        msgspec.msgpack.encode({"dp_rank": 1, "reports": []}),  # a map, not the array-like struct
        msgspec.msgpack.encode([1, "reports"]),  # reports is not a list
        msgspec.msgpack.encode([1, [["one", "rid", 1, 10, 0, 5]]]),  # kind is a str
        msgspec.msgpack.encode([1, [[1, "rid", 1, 10, 0]]]),  # a report one field short
    ]
    unknown_rid = msgspec.msgpack.encode([0, [[0, "no-such-request", 0, 10, 0, 0]]])  # well formed
    to_reports = Pusher(reports)
    try:
        for frame in bad_reports + [unknown_rid]:
            to_reports.send(frame)
        status = server.wait_status(lambda s: s["bad_reports"] >= before["bad_reports"] + len(bad_reports))
    finally:
        to_reports.close()
    assert status["bad_reports"] == before["bad_reports"] + len(bad_reports)
    assert status["housekeeping_errors"] == before["housekeeping_errors"]

    rng = random.Random(3)
    for rank in (2, -1):
        with pytest.raises(urllib.error.HTTPError) as err:
            generate(server.url, input_ids=ids(rng, 20), max_new_tokens=2, routed_dp_rank=rank, timeout_s=60)
        message = err.value.read().decode(errors="replace")
        assert 400 <= err.value.code < 600 and str(rank) in message, (err.value.code, message)

    assert server.controller_pid() == pid and psutil.Process(pid).is_running()
    for rank in (0, 1):
        reply = generate(server.url, input_ids=ids(rng, 20), max_new_tokens=3, routed_dp_rank=rank)
        assert reply["meta_info"]["dp_rank"] == rank and reply["meta_info"]["completion_tokens"] == 3
    assert generate(server.url, input_ids=ids(rng, 20), max_new_tokens=3)["meta_info"]["completion_tokens"] == 3

    log = log_since(server, offset)
    assert log.count("skipped a malformed worker report") == len(bad_reports), log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def ss_kill_works() -> bool:
    """`ss -K` destroys sockets (needs CAP_NET_ADMIN and a kernel with sock_destroy)."""
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        peer, _ = srv.accept()
        try:
            subprocess.run(cut_command(port), capture_output=True, timeout=10)
            try:
                client.send(b"x")
                client.recv(1)
                return False
            except OSError:
                return True
        except (OSError, subprocess.SubprocessError):
            return False
        finally:
            client.close()
            peer.close()


def cut_command(port: int) -> list[str]:
    """Destroy the established TCP connections to or from `port` (not its listener)."""
    return ["ss", "-K", "-t", "-n", "state", "established",
            "(", "sport", "=", f":{port}", "or", "dport", "=", f":{port}", ")"]


class FeedCut:
    """Keeps one TCP port's connections cut: ZeroMQ reconnects a dropped SUB every
    100 ms (its default `ZMQ_RECONNECT_IVL`), and each new connection is destroyed
    again at once; what the PUB sends while no subscriber is connected is lost."""

    def __init__(self, port: int):
        self.port, self._stop = port, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            subprocess.run(cut_command(self.port), capture_output=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def event_ports(server) -> list[int]:
    pid = server.controller_pid()
    ports = sorted({c.raddr.port for c in psutil.Process(pid).net_connections(kind="tcp")
                    if c.raddr and c.raddr.ip == "127.0.0.1" and c.status == psutil.CONN_ESTABLISHED
                    and 10000 <= c.raddr.port < 22000})
    assert len(ports) == 4 and ports == list(range(ports[0], ports[0] + 4)), ports
    return ports  # PUB rank 0, PUB rank 1, replay rank 0, replay rank 1


def test_a_cut_event_feed_counts_the_rank_as_uncached_until_it_is_restored_and_repaired(server):
    """Rank 1's PUB connection to the controller is destroyed for real (kernel socket
    destroy, `ss -K`) and kept down while rank 1 serves requests. The controller hears
    rank 1 finish requests with no event batch: the feed is silent, and a prefix the
    mirror holds on rank 1 counts as uncached there. Restored, the next batch shows the
    gap, the replay endpoint (not cut) repairs it, and prefixes rank 1 cached during the
    cut are in the mirror."""
    if not ss_kill_works():
        pytest.skip("ss -K cannot destroy sockets here (needs CAP_NET_ADMIN, kernel sock_destroy)")
    pub_rank1 = event_ports(server)[1]
    rng = random.Random(11)
    prefix_a = ids(rng, 64)
    generate(server.url, input_ids=prefix_a + ids(rng, 4), max_new_tokens=2, routed_dp_rank=1)
    seen = probe(server, prefix_a + ids(rng, 4))
    assert seen["cached_tokens"][1] >= 64, seen  # the control: the mirror knows rank 1 holds it

    before = server.wait_status(lambda s: True)["kv_events"]

    def silent(s: dict) -> bool:
        # Noticed as silent, not merely uncertain: a batch that slips through between
        # two destroyed connections shows a gap, and the rank is uncertain for the
        # moment its replay takes, with or without silent-feed detection.
        return s["kv_events"].get("silent_feeds", 0) > before.get("silent_feeds", 0) \
            and bool(s["tree"]["uncertain_mask"] & 2)

    during_cut: list[list[int]] = []
    with FeedCut(pub_rank1):
        deadline = time.monotonic() + 30
        status = None
        while time.monotonic() < deadline:
            prompt = ids(rng, 64)
            during_cut.append(prompt)
            generate(server.url, input_ids=prompt + ids(rng, 4), max_new_tokens=2, routed_dp_rank=1)
            status = server.wait_status(silent, timeout_s=0.5)
            if silent(status):
                break
        assert silent(status), f"rank 1's silent feed went unnoticed: {status['kv_events']}"
        meanwhile = probe(server, prefix_a + ids(rng, 4))
        assert meanwhile["cached_tokens"][1] == 0, meanwhile  # rank 1 is not trusted while silent

    # Restored: rank 1's next batches show the gap, which the replay repairs.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        generate(server.url, input_ids=ids(rng, 64), max_new_tokens=2, routed_dp_rank=1)
        status = server.wait_status(lambda s: not s["tree"]["uncertain_mask"] & 2
                                    and s["kv_events"]["gaps"] > before["gaps"], timeout_s=1.0)
        if not status["tree"]["uncertain_mask"] & 2 and status["kv_events"]["gaps"] > before["gaps"]:
            break
    feed = status["kv_events"]
    assert not status["tree"]["uncertain_mask"] & 2 and feed["gaps"] > before["gaps"], feed
    assert feed["replays"] > before["replays"] and feed["resyncs"] == before["resyncs"], feed
    after = probe(server, during_cut[0] + ids(rng, 4))
    assert after["cached_tokens"][1] >= 64, after  # learnt from the replay


def test_a_burst_at_ten_times_the_rate_is_answered_or_refused_with_bounded_memory(server):
    """Ten times the live Locust test's 2 requests/s: 20/s for 10 s (200 requests, open
    loop: each sent on schedule whether or not earlier ones were answered). Every one is
    answered or refused with an HTTP error that says why (none hangs or is dropped), the
    ledger drains, and the controller's resident memory grows by less than 64 MiB."""
    rate_rps, duration_s = 20.0, 10.0
    pid = server.controller_pid()
    proc = psutil.Process(pid)
    rss_before = proc.memory_info().rss
    rng = random.Random(5)
    prompts = [ids(rng, 48) for _ in range(int(rate_rps * duration_s))]

    def send(i: int):
        time.sleep(max(0.0, start + i / rate_rps - time.monotonic()))
        try:
            reply = generate(server.url, input_ids=prompts[i], max_new_tokens=8, timeout_s=120)
            return "answered" if reply["meta_info"]["completion_tokens"] == 8 else f"short reply {reply}"
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            return "refused" if body.strip() else f"HTTP {err.code} without a message"
        except Exception as exc:  # a timeout or a dropped connection: the failure this test is for
            return f"lost: {exc!r}"

    peak = [rss_before]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    with ThreadPoolExecutor(len(prompts)) as pool:
        outcomes = list(pool.map(send, range(len(prompts))))
    elapsed = time.monotonic() - start
    stop.set()
    sampler.join()
    status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=30)
    rss_after = proc.memory_info().rss

    bad = [o for o in outcomes if o not in ("answered", "refused")]
    assert not bad, bad[:5]
    assert outcomes.count("answered") > 0
    assert status["in_flight"] == 0 and all(ld["requests"] == 0 for ld in status["loads"])
    assert server.controller_pid() == pid
    growth_mib = (rss_after - rss_before) / 2 ** 20
    assert growth_mib < 64, f"controller RSS grew {growth_mib:.1f} MiB over the burst"
    print(f"burst: {outcomes.count('answered')} answered, {outcomes.count('refused')} refused in "
          f"{elapsed:.1f} s; controller RSS {rss_before / 2 ** 20:.1f} -> peak {peak[0] / 2 ** 20:.1f} -> "
          f"{rss_after / 2 ** 20:.1f} MiB")


def scheduler_process(server, rank: int) -> psutil.Process:
    """Rank `rank`'s scheduler (SGLang titles it `sglang::scheduler_DP<rank>`)."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if child.cmdline() and child.cmdline()[0].split()[0] == f"sglang::scheduler_DP{rank}":
                return child
        except psutil.Error:
            continue
    raise AssertionError(f"no scheduler process for DP rank {rank}")


def test_zz_a_killed_rank_fails_its_requests_with_an_error_and_the_other_rank_serves_on(server):
    """Runs last: it leaves rank 1 dead. A scheduler process killed mid-run (SIGKILL, as
    an out-of-memory kill would): the requests in flight on it get an HTTP error within
    seconds (SGLang alone would leave them waiting forever), those on rank 0 finish, and
    every later request is served by rank 0."""
    rng = random.Random(12)
    victim = scheduler_process(server, 1)

    def send(prompt):
        try:
            reply = generate(server.url, input_ids=prompt, max_new_tokens=3000, timeout_s=300)
            return ("answered", reply["meta_info"]["dp_rank"])
        except urllib.error.HTTPError as err:
            return ("error", err.code, err.read().decode(errors="replace"), time.monotonic())
        except Exception as exc:
            return ("lost", repr(exc))

    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(send, ids(rng, 24)) for _ in range(6)]
        status = server.wait_status(lambda s: s["in_flight"] == 6, timeout_s=60)
        assert status["loads"][1]["requests"] >= 1 and status["loads"][0]["requests"] >= 1, status["loads"]
        on_rank_1 = status["loads"][1]["requests"]
        victim.kill()
        killed_at = time.monotonic()
        outcomes = [f.result() for f in futures]
    errors = [o for o in outcomes if o[0] == "error"]
    assert not [o for o in outcomes if o[0] == "lost"], outcomes
    assert len(errors) == on_rank_1, outcomes
    assert all(code == 503 and "DP rank 1" in body and "exited" in body for _, code, body, _ in errors), errors
    assert max(at for *_, at in errors) - killed_at < 15  # within seconds, not at a client timeout
    assert {o[1] for o in outcomes if o[0] == "answered"} == {0}
    status = server.wait_status(lambda s: "1" in s.get("dead_ranks", {}), timeout_s=10)
    assert not status["loads"][1]["alive"] and status["unroutable"]["failed_in_flight"] == on_rank_1
    replies = [generate(server.url, input_ids=ids(rng, 24), max_new_tokens=4) for _ in range(4)]
    assert [r["meta_info"]["dp_rank"] for r in replies] == [0, 0, 0, 0]
    status = server.wait_status(lambda s: s["in_flight"] == 0, timeout_s=30)
    assert status["in_flight"] == 0 and status["loads"][0]["requests"] == 0
