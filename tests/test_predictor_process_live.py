"""`--length-source predicted` in a live controller (real SGLang dp=2, CPU, tiny model):
the predictor runs in a child of the controller process, requests are dispatched with
their predictions, and the child goes with the server."""

from __future__ import annotations

import contextlib

import psutil
import pytest

from conftest import generate, sglang_server

pytestmark = pytest.mark.sglang


def predictor_children(server) -> list[psutil.Process]:
    controller = psutil.Process(server.controller_pid())
    found = []
    for child in controller.children():
        with contextlib.suppress(psutil.Error):
            if "sglang_ext.predictor_process" in " ".join(child.cmdline()):
                found.append(child)
    return found


def test_requests_are_predicted_in_a_child_process_that_goes_with_the_server(tmp_path_factory):
    # A generous wait: on a loaded 2-core host the first predictions can take a while.
    with sglang_server(tmp_path_factory, load_balance_method="prefix_length_aware",
                       extra_args=["--length-source", "predicted", "--predict-wait-ms", "2000"]) as server:
        [child] = predictor_children(server)
        for text in ["Hi!", "Write a long essay about the history of rivers in Europe.", "List three primes."]:
            reply = generate(server.url, text, max_new_tokens=4)
            assert reply["meta_info"]["completion_tokens"] == 4
        status = server.wait_status(lambda s: (s["length_predictions"] or {}).get("predicted_in_time", 0) >= 3)
        stats = status["length_predictions"]
        assert stats["host"] == "process" and stats["unavailable"] is None
        assert stats["predicted_in_time"] >= 3 and stats["failed"] == 0
    with contextlib.suppress(psutil.NoSuchProcess):
        child.wait(timeout=15)
    assert not psutil.pid_exists(child.pid) or psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
