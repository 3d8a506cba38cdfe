"""The controller's dispatch path and event loop without SGLang's processes: no request
is dropped silently, no bad moment ends the loop, drains are capped per round.

`Harness` builds a `PrefixAwareController` without its launch (the stock constructor
spawns schedulers): the stock attributes its methods read are set by hand, and real
ZeroMQ sockets stand in for the processes around it: a PUSH for the tokenizer manager's
requests, one PULL per scheduler, a PULL for the tokenizer manager's replies.
"""

from __future__ import annotations

import time
import uuid
from array import array
from http import HTTPStatus
from types import SimpleNamespace

import pytest
import zmq

pytest.importorskip("sglang")
from sglang.srt.managers.io_struct import (  # noqa: E402
    AbortReq,
    ActiveRanksOutput,
    BatchTokenizedGenerateReqInput,
    TokenizedGenerateReqInput,
    sock_recv,
    sock_send,
)
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

from sglang_ext import completions  # noqa: E402
from sglang_ext.bench.dispatch_harness import bare_controller  # noqa: E402
from sglang_ext.controller import MAX_DRAIN_PER_ROUND, ErrorReplies  # noqa: E402
from sglang_ext.core.policies import LengthSource  # noqa: E402
from sglang_ext.core.router import RouterConfig  # noqa: E402
from sglang_ext.length_source import PredictedLengths  # noqa: E402
from sglang_ext.status import StatusWriter  # noqa: E402


def tokenized(rid: str, prompt: list[int] | None = None, max_new_tokens: int = 8, routed_dp_rank=None,
              input_text: str | None = None) -> TokenizedGenerateReqInput:
    return TokenizedGenerateReqInput(
        rid=rid, http_worker_ipc="ipc:///tmp/http-worker-7", input_text=input_text,
        input_ids=array("q", prompt or [5, 6, 7, 8]), input_embeds=None, mm_inputs=None, token_type_ids=None,
        sampling_params=SamplingParams(max_new_tokens=max_new_tokens), return_logprob=False,
        logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False,
        routed_dp_rank=routed_dp_rank,
    )


class Harness:
    """A controller wired to real sockets; `step()` runs one event-loop round."""

    def __init__(self, num_workers: int = 2, policy: str = "round_robin", status_path: str | None = None,
                 predictor=None):
        self.ctx = zmq.Context()
        tag = uuid.uuid4().hex[:8]
        ctl = bare_controller(num_workers)  # what the stock constructor would have set
        self.workers_in = []
        for w in range(num_workers):
            pull = self.ctx.socket(zmq.PULL)
            pull.bind(f"inproc://worker{w}-{tag}")
            push = self.ctx.socket(zmq.PUSH)
            push.connect(f"inproc://worker{w}-{tag}")
            self.workers_in.append(pull)
            ctl.workers.append(push)
        self.tokenizer_out = self.ctx.socket(zmq.PUSH)  # the tokenizer manager binds it
        self.tokenizer_out.bind(f"inproc://scheduler-input-{tag}")
        ctl.recv_from_tokenizer = self.ctx.socket(zmq.PULL)
        ctl.recv_from_tokenizer.connect(f"inproc://scheduler-input-{tag}")
        self.replies_in = self.ctx.socket(zmq.PULL)  # the tokenizer manager's reply socket
        self.replies_in.bind(f"inproc://tokenizer-{tag}")
        ctl.recv_reports = self.ctx.socket(zmq.PULL)
        ctl.recv_reports.bind(f"inproc://reports-{tag}")
        self.reports_out = self.ctx.socket(zmq.PUSH)
        self.reports_out.connect(f"inproc://reports-{tag}")
        ctl._reports_context = self.ctx
        ctl.init_dispatcher()
        source = LengthSource.PREDICTED if predictor is not None else LengthSource.MAX_NEW_TOKENS
        lengths = PredictedLengths(None, 10_000, self.ctx, None, predictor=predictor) if predictor else None
        ctl._init_ours(SimpleNamespace(kv_events_config=None), ErrorReplies(self.ctx, f"inproc://tokenizer-{tag}"),
                       RouterConfig(policy=policy, num_workers=num_workers, length_source=source), lengths)
        if status_path is not None:
            ctl.status_writer = StatusWriter(status_path, min_interval_s=0.0)
        self.ctl = ctl
        self.poller = ctl._make_poller()

    def send(self, message) -> None:
        sock_send(self.tokenizer_out, message)

    def step(self, timeout_ms: int = 200) -> None:
        self.ctl.run_once(self.poller, timeout_ms)

    def run_until(self, predicate, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate() and time.monotonic() < deadline:
            self.step(20)

    @staticmethod
    def drain(sock) -> list:
        out = []
        while True:
            try:
                out.append(sock_recv(sock, flags=zmq.NOBLOCK))
            except zmq.Again:
                return out

    def received(self) -> list[list]:
        """Messages each worker got so far."""
        return [self.drain(s) for s in self.workers_in]

    def report_finished(self, rid: str, worker: int, output_tokens: int = 4) -> None:
        report = completions.WorkerReport(completions.FINISHED, rid, worker, 4, 0, output_tokens)
        self.reports_out.send(completions.encode_batch(completions.ReportBatch(worker, [report])))

    def close(self) -> None:
        if self.ctl.lengths is not None:
            self.ctl.lengths.close()
        self.ctx.destroy(linger=0)


@pytest.fixture(scope="session")
def sglang_config():
    """SGLang's stock `update_active_ranks` reads the published server config, as in
    the controller process (`run_data_parallel_controller_process` publishes it)."""
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    from conftest import tiny_model

    publish(ServerArgs(model_path=tiny_model(), device="cpu", dp_size=2), role="dp_controller")


@pytest.fixture
def harness(sglang_config):
    made = []

    def make(**kwargs) -> Harness:
        made.append(Harness(**kwargs))
        return made[-1]

    yield make
    for h in made:
        h.close()


def replies_until(h: Harness, n: int) -> list[AbortReq]:
    got: list = []
    h.run_until(lambda: len(got) < n and not got.extend(h.drain(h.replies_in)) and len(got) >= n)
    got += h.drain(h.replies_in)
    return got


def test_a_request_pinned_to_a_dead_rank_gets_an_error_reply_and_the_next_is_served(harness):
    h = harness()
    h.send(ActiveRanksOutput(status=[True, False]))  # rank 1 went down
    h.run_until(lambda: not h.ctl.router.ledger.loads[1].alive)
    h.send(tokenized("pinned", routed_dp_rank=1))
    [reply] = replies_until(h, 1)
    assert isinstance(reply, AbortReq) and reply.rid == "pinned"
    assert reply.http_worker_ipc == "ipc:///tmp/http-worker-7"  # back to the client's HTTP worker
    assert reply.finished_reason["type"] == "abort"
    assert reply.finished_reason["status_code"] == HTTPStatus.SERVICE_UNAVAILABLE
    assert "routed_dp_rank=1" in reply.finished_reason["message"]
    assert h.received() == [[], []] and len(h.ctl.router.ledger) == 0
    assert h.ctl.status_snapshot()["unroutable"]["error_replies"] == 1
    h.send(tokenized("next"))
    h.run_until(lambda: len(h.ctl.router.ledger) == 1)
    got = h.received()
    assert [m.rid for m in got[0]] == ["next"] and got[1] == []


def test_a_rank_outside_the_server_gets_an_error_reply(harness):
    h = harness()
    h.send(tokenized("far", routed_dp_rank=5))
    [reply] = replies_until(h, 1)
    assert reply.rid == "far" and "not a DP rank" in reply.finished_reason["message"]


def test_with_no_worker_alive_every_request_of_a_batch_gets_its_error_reply(harness):
    h = harness()
    h.send(ActiveRanksOutput(status=[False, False]))
    h.send(BatchTokenizedGenerateReqInput(batch=[tokenized(f"b{i}") for i in range(3)]))
    replies = replies_until(h, 3)
    assert sorted(r.rid for r in replies) == ["b0", "b1", "b2"]
    assert all("no DP worker is alive" in r.finished_reason["message"] for r in replies)
    assert h.ctl.unroutable == 3 and len(h.ctl.router.ledger) == 0


def test_a_routing_error_sends_the_request_to_a_fallback_worker(harness):
    h = harness()

    def broken(request, now_s):
        raise ZeroDivisionError("policy bug")

    h.ctl.router.route = broken  # fault injection: the policy raises
    h.send(tokenized("fb"))
    h.run_until(lambda: h.ctl.fallback_routed == 1 and len(h.ctl.router.ledger) == 1)
    got = h.received()
    assert sum(len(g) for g in got) == 1
    worker = next(w for w, g in enumerate(got) if g)
    assert h.ctl.router.ledger.worker_of("fb") == worker
    assert h.drain(h.replies_in) == []


def test_a_failed_send_is_not_booked_and_the_client_hears_of_it(harness):
    h = harness()
    h.ctl.workers[0].close(0)  # round robin picks rank 0 first; sending to it now raises
    h.send(tokenized("lost"))
    [reply] = replies_until(h, 1)
    assert reply.rid == "lost" and "send to rank 0 failed" in reply.finished_reason["message"]
    assert len(h.ctl.router.ledger) == 0
    assert all(ld.requests == 0 and ld.queued_prefill_tokens == 0 for ld in h.ctl.router.ledger.loads)


def test_a_failing_status_write_or_expiry_does_not_end_the_loop(harness, tmp_path):
    h = harness(status_path=str(tmp_path / "no-such-dir" / "status.json"))  # every write fails

    def expire_fails(now_s):
        raise RuntimeError("expiry bug")

    h.ctl.router.expire = expire_fails
    for i in range(3):
        h.send(tokenized(f"r{i}"))
        h.step()
    h.run_until(lambda: len(h.ctl.router.ledger) == 3)
    assert len(h.ctl.router.ledger) == 3
    assert h.ctl.housekeeping_errors >= 2 * 3  # both steps failed in every round, and the loop ran on


def test_a_flood_of_requests_does_not_starve_the_worker_reports(harness):
    h = harness()
    h.send(tokenized("first"))
    h.run_until(lambda: len(h.ctl.router.ledger) == 1)
    flood = MAX_DRAIN_PER_ROUND * 2 + 10
    for i in range(flood):
        h.send(tokenized(f"f{i}"))
    h.report_finished("first", h.ctl.router.ledger.worker_of("first"))
    time.sleep(0.05)  # inproc delivery is immediate; this only lets the report land
    h.step()
    # One round took one cap of requests and still handled the report.
    assert sum(h.ctl.dispatched_by_worker) == 1 + MAX_DRAIN_PER_ROUND
    assert "first" not in h.ctl.router.ledger
    h.run_until(lambda: sum(h.ctl.dispatched_by_worker) == 1 + flood)
    assert sum(h.ctl.dispatched_by_worker) == 1 + flood


class _Answers:
    """A stand-in length predictor: the first call raises, later ones answer 33."""

    def __init__(self):
        self.calls = 0

    def predict(self, texts):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("transient")
        return [33] * len(texts)


def test_predicted_lengths_weigh_the_ledger_and_a_failed_prediction_still_dispatches(harness):
    h = harness(predictor=_Answers())
    h.send(tokenized("first", max_new_tokens=500, input_text="hello"))  # its prediction fails
    h.run_until(lambda: "first" in h.ctl.router.ledger)
    h.send(tokenized("second", max_new_tokens=500, input_text="hello again"))
    h.run_until(lambda: "second" in h.ctl.router.ledger)
    loads = h.ctl.router.ledger.loads
    assert sorted(ld.pending_decode_tokens for ld in loads) == [33, 500]  # fallback, prediction
    assert sum(len(g) for g in h.received()) == 2
    stats = h.ctl.status_snapshot()["length_predictions"]
    assert stats["failed"] == 1 and stats["predicted_in_time"] == 1 and stats["unavailable"] is None


def _idle_scheduler(title: str) -> None:
    """Stands in for SGLang's `run_scheduler_process`: takes its title, then idles."""
    import setproctitle

    setproctitle.setproctitle(title)
    time.sleep(120)


def test_a_rank_whose_scheduler_process_exits_is_unroutable_and_its_requests_get_errors(harness):
    import multiprocessing

    from sglang_ext.controller import _rank_processes

    h = harness()
    fork = multiprocessing.get_context("fork")  # a sleeping child touches no inherited lock
    # Titles as SGLang 0.5.23's schedulers set them; started by concurrent threads there,
    # so list order is not rank order. A process of another kind is not watched.
    procs = [fork.Process(target=_idle_scheduler, args=(title,), daemon=True)
             for title in ("sglang::scheduler_DP1", "sglang::scheduler_DP0_TP0", "sglang::detokenizer")]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_rank_processes(procs)) < 2:
            time.sleep(0.05)  # until the children have taken their titles
        h.ctl.rank_processes = _rank_processes(procs)
        assert {r: [p.pid for p in ps] for r, ps in h.ctl.rank_processes.items()} == \
            {1: [procs[0].pid], 0: [procs[1].pid]}
        for i in range(4):
            h.send(tokenized(f"r{i}"))
        h.run_until(lambda: len(h.ctl.router.ledger) == 4)
        on_rank_1 = sorted(h.ctl.router.ledger.rids_on(1))
        assert len(on_rank_1) == 2
        h.step()
        assert h.ctl.dead_ranks == {} and h.drain(h.replies_in) == []  # alive processes: nothing happens
        procs[0].kill()
        procs[0].join(10)
        h.ctl._last_process_check_s = float("-inf")  # check at the next round, not a second later
        replies = replies_until(h, 2)
        assert sorted(r.rid for r in replies) == on_rank_1
        assert all("DP rank 1" in r.finished_reason["message"] and "exited" in r.finished_reason["message"]
                   for r in replies)
        assert not h.ctl.router.ledger.loads[1].alive and h.ctl.router.ledger.rids_on(1) == []
        status = h.ctl.status_snapshot()
        assert status["unroutable"]["failed_in_flight"] == 2 and "1" in status["dead_ranks"]
        h.received()
        for i in range(3):
            h.send(tokenized(f"after{i}"))
        h.run_until(lambda: len(h.ctl.router.ledger.rids_on(0)) == 5)
        got = h.received()
        assert sorted(m.rid for m in got[0]) == ["after0", "after1", "after2"] and got[1] == []
    finally:
        for p in procs:
            p.kill()
            p.join(10)
