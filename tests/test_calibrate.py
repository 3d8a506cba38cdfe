"""`python -m cluster calibrate`: the fit, the error report and the host-load wait on
hand-made measurements; one short live calibration on the tiny model (marked sglang)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cluster.calibration.compare import compare, format_table
from cluster.calibration.fit import FitError, cost_model_file, fit_step_model
from cluster.calibration.hostload import LoadWait, wait_for_quiet
from cluster.calibration.probes import DecodeSample, PrefillSample
from cluster.cli import main

TRUE = {"c": 0.020, "d": 40e-6, "b0": 0.004, "b1": 90e-6, "b2": 500e-6}


def probes(noise: float = 0.0, seed: int = 0):
    """Prefill and decode probes generated from TRUE, fresh and cached-prefix prompts."""
    rng = np.random.default_rng(seed)
    jitter = lambda: 1.0 + noise * rng.standard_normal()  # noqa: E731
    pre = []
    for n in (16, 256, 1024, 2048, 3072):
        for uncached in ((n, 16) if n > 32 else (n,)):   # as the live probes: a tail only on long prompts
            y = TRUE["c"] + TRUE["d"] * n + TRUE["b0"] + TRUE["b1"] * uncached
            pre.append(PrefillSample("s", 0, n, n - uncached, y * jitter()))
    dec = [DecodeSample("s", 0, b, (TRUE["b0"] + TRUE["b2"] * b) * jitter(), 40) for b in (1, 2, 4, 8, 16)]
    return pre, dec


def test_fit_recovers_the_coefficients_that_made_exact_probes():
    fit = fit_step_model("s", *probes())
    got = (fit.overhead_s, fit.per_prompt_token_s, fit.step_base_s, fit.prefill_s_per_token,
           fit.decode_s_per_request)
    assert got == pytest.approx((TRUE["c"], TRUE["d"], TRUE["b0"], TRUE["b1"], TRUE["b2"]), rel=1e-6)
    assert fit.prefill_residuals["max_abs_rel"] < 1e-9 and fit.decode_residuals["max_abs_rel"] < 1e-9


def test_fit_under_noise_stays_close_and_reports_the_residuals():
    fit = fit_step_model("s", *probes(noise=0.03, seed=3))
    assert fit.prefill_s_per_token == pytest.approx(TRUE["b1"], rel=0.25)
    assert fit.decode_s_per_request == pytest.approx(TRUE["b2"], rel=0.25)
    # Residuals are reported, of the order of the noise put in (3 %), not zero.
    assert 0.001 < fit.prefill_residuals["rms_rel"] < 0.1
    assert 0.001 < fit.decode_residuals["rms_rel"] < 0.1


def test_fit_takes_the_median_of_repeats_so_one_noisy_repeat_does_not_move_it():
    pre, dec = probes()
    burst = [PrefillSample("s", 0, 2048, 0, 10.0), DecodeSample("s", 0, 8, 1.0, 40)]  # another process's burst
    fit = fit_step_model("s", pre + pre + [burst[0]], dec + dec + [burst[1]])
    assert fit.prefill_s_per_token == pytest.approx(TRUE["b1"], rel=1e-6)
    assert fit.decode_s_per_request == pytest.approx(TRUE["b2"], rel=1e-6)
    assert fit.prefill_rows == len(pre) and fit.decode_rows == len(dec)   # one row per probe shape


def test_fit_keeps_every_coefficient_non_negative():
    # Decode steps that shrink with the batch: plain least squares would give b2 < 0.
    pre, _ = probes()
    dec = [DecodeSample("s", 0, b, 0.010 - 0.0002 * b, 40) for b in (1, 4, 16)]
    fit = fit_step_model("s", pre, dec)
    assert min(fit.overhead_s, fit.per_prompt_token_s, fit.step_base_s, fit.prefill_s_per_token,
               fit.decode_s_per_request) >= 0
    assert fit.decode_s_per_request == 0.0


def test_fit_refuses_probes_that_cannot_identify_the_model():
    pre, dec = probes()
    with pytest.raises(FitError, match="two batch sizes"):
        fit_step_model("s", pre, [d for d in dec if d.batch == 4])
    with pytest.raises(FitError, match="two uncached lengths"):
        fit_step_model("s", [p for p in pre if p.uncached_tokens == 16], dec)
    bad = [PrefillSample("s", 0, 16, 0, float("nan")), *pre]
    with pytest.raises(FitError, match="must be > 0"):
        fit_step_model("s", bad, dec)


def test_cost_model_file_loads_as_a_cost_model_with_the_fitted_coefficients(tmp_path):
    from sglang_ext.core.cost_model import load_cost_model

    fit = fit_step_model("s", *probes())
    path = tmp_path / "cpu-test.json"
    path.write_text(json.dumps(cost_model_file(fit, name="cpu-test", model="m", hardware="h", engine="e",
                                               source="s", kv_capacity_tokens=65536)))
    model = load_cost_model(str(path))
    assert model.step_base_us == pytest.approx(TRUE["b0"] * 1e6, abs=0.1)
    assert model.prefill_us_per_token == pytest.approx(TRUE["b1"] * 1e6, abs=1e-3)
    assert model.decode_us_per_request == pytest.approx(TRUE["b2"] * 1e6, abs=1e-3)
    assert model.kv_capacity_tokens == 65536
    assert fit.request_delay_ms(1000) == pytest.approx((TRUE["c"] + TRUE["d"] * 1000) * 1e3)


def summary(e2e_mean, e2e_p90, ttft_mean, ttft_p90, per_rank, hit):
    return {"e2e_s": {"mean": e2e_mean, "p90": e2e_p90}, "ttft_s": {"mean": ttft_mean, "p90": ttft_p90},
            "per_worker": {str(r): {"requests": n} for r, n in enumerate(per_rank)}, "prefix_hit_rate": hit}


def test_compare_gives_the_error_and_verdict_of_every_row():
    live = summary(1.0, 2.0, 0.10, 0.20, [10, 10], 0.70)
    sim = summary(1.10, 2.5, 0.086, 0.20, [11, 9], 0.64)
    rows = {r.metric: r for r in compare(live, sim, ranks=2)}
    assert list(rows) == ["e2e_s mean", "e2e_s p90", "ttft_s mean", "ttft_s p90", "rank 0 request share",
                          "rank 1 request share", "prefix hit rate"]
    assert rows["e2e_s mean"].error == pytest.approx(0.10) and rows["e2e_s mean"].verdict == "PASS"
    assert rows["e2e_s p90"].error == pytest.approx(0.25) and rows["e2e_s p90"].verdict == "MISS"
    assert rows["ttft_s mean"].error == pytest.approx(0.14) and rows["ttft_s mean"].verdict == "PASS"
    assert rows["rank 0 request share"].error == pytest.approx(5.0) and rows["rank 0 request share"].passed
    assert rows["prefix hit rate"].error == pytest.approx(6.0) and rows["prefix hit rate"].verdict == "MISS"
    table = format_table("t", list(rows.values()))
    assert table.count("PASS") == 5 and table.count("MISS") == 2


def test_compare_counts_a_missing_figure_or_rank_as_a_miss():
    live = summary(1.0, None, 0.1, 0.2, [20, 0], 0.5)
    sim = summary(1.0, 2.0, 0.1, 0.2, [10], None)
    sim["per_worker"] = {"0": {"requests": 10}, "1": {"requests": 10}}
    rows = {r.metric: r for r in compare(live, sim, ranks=2)}
    assert rows["e2e_s p90"].verdict == "MISS" and rows["e2e_s p90"].error is None
    assert rows["prefix hit rate"].verdict == "MISS"
    assert rows["rank 1 request share"].error == pytest.approx(50.0)


class FakeHost:
    def __init__(self, loads):
        self.loads, self.now, self.sleeps = list(loads), 0.0, []

    def load(self):
        return self.loads.pop(0) if len(self.loads) > 1 else self.loads[0]

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def test_wait_for_quiet_polls_until_the_load_falls():
    host = FakeHost([2.0, 1.5, 0.5, 0.4])
    rec = wait_for_quiet("x", LoadWait(0.8, 10, 900), load_1m=host.load, clock=lambda: host.now, sleep=host.sleep)
    assert rec.quiet and rec.waited_s == 20 and rec.load_1m_first == 2.0 and rec.load_1m_at_start == 0.5
    assert host.sleeps == [10, 10]


def test_wait_for_quiet_gives_up_after_the_limit_and_says_so():
    host = FakeHost([3.0])
    said = []
    rec = wait_for_quiet("x", LoadWait(0.8, 10, 25), load_1m=host.load, clock=lambda: host.now, sleep=host.sleep,
                         say=said.append)
    assert not rec.quiet and rec.waited_s == 25 and host.sleeps == [10, 10, 5]
    assert "measuring anyway" in said[-1]


def test_sim_config_takes_the_live_servers_worker_settings():
    from cluster.calibrate import sim_config_for

    fit = fit_step_model("s", *probes())
    info = {"max_total_num_tokens": 65536, "chunked_prefill_size": 4096, "max_prefill_tokens": 16384, "page_size": 1,
            "schedule_policy": "fcfs", "decode_log_interval": 40, "effective_max_running_requests_per_dp": 2048}
    sim = sim_config_for("round_robin", "x.json", info, fit, 800.0, 8192, seed=5)
    assert (sim.gpus, sim.kv_capacity_tokens, sim.chunked_prefill_tokens, sim.page_size, sim.max_running_requests,
            sim.force_lengths) == (2, 65536, 4096, 1, 2048, True)
    assert sim.dispatch_delay_ms == pytest.approx((TRUE["c"] + TRUE["d"] * 800) * 1e3)


@pytest.mark.parametrize("args, message", [
    (["--prefill-lengths", "512"], "two distinct lengths"),
    (["--policies", "nope"], "unknown policy"),
    (["--decode-batches", "1,x"], "comma-separated list"),
    (["--max-load-wait-s", "-1"], "max-load-wait-s"),
])
def test_calibrate_rejects_bad_options_in_one_line_before_any_server(tmp_path, capsys, args, message):
    assert main(["calibrate", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "o").exists()


@pytest.mark.sglang
def test_live_calibration_on_the_tiny_model_fits_positive_coefficients_and_reports_every_row(tmp_path):
    from cluster.calibrate import CalibrateConfig, run_calibration
    from tests.conftest import tiny_model

    tiny_model()
    cfg = CalibrateConfig(model="tiny", policies=("round_robin",), dp1=False, prefill_lengths=(64, 1024, 2048),
                          # Batches far apart: the tiny model's cost per decode request (under 1 ms)
                          # must show above this shared host's noise (steps swing by 10 ms).
                          decode_batches=(1, 32), decode_output_tokens=32, groups=2, prompts_per_group=4,
                          prefix_tokens=256, question_tokens=16, output_tokens=8, rate_rps=4.0, max_load_wait_s=0)
    payload = run_calibration(cfg, tmp_path)
    fit = payload["fits"]["dp2"]
    assert fit["step_base_us"] > 0 and fit["prefill_us_per_token"] > 0 and fit["decode_us_per_request"] > 0
    rows = payload["runs"]["round_robin"]["rows"]
    assert [r["metric"] for r in rows] == ["e2e_s mean", "e2e_s p90", "ttft_s mean", "ttft_s p90",
                                           "rank 0 request share", "rank 1 request share", "prefix hit rate"]
    assert all(r["live"] is not None and r["sim"] is not None and r["verdict"] in ("PASS", "MISS") for r in rows)
    assert payload["runs"]["round_robin"]["live"]["succeeded"] == 8
    assert (tmp_path / "table.txt").read_text().count("request share") == 2
    assert math.isfinite(payload["host_load"][0]["load_1m_at_start"])


def test_decode_window_is_the_per_token_gap_while_every_request_decodes():
    from cluster.calibration.probes import TokenStream, decode_window

    # Request a: first token at 0.10, one every 10 ms; b: first token at 0.15 (a later
    # prefill), one every 10 ms. The window [0.15, end of a] sees both decode at 10 ms.
    a = TokenStream([0.10 + 0.01 * i for i in range(20)], list(range(1, 21)), {})
    b = TokenStream([0.15 + 0.01 * i for i in range(20)], list(range(1, 21)), {})
    step_s, tokens = decode_window([a, b])
    assert step_s == pytest.approx(0.01) and tokens == 14
    # c's first token comes after a has finished: no step of the full batch was seen.
    c = TokenStream([0.50 + 0.01 * i for i in range(5)], list(range(1, 6)), {})
    assert decode_window([a, c]) is None
    # Every chunk of the window read in one burst (same timestamp): no step measured.
    d = TokenStream([0.10] + [0.20] * 5, list(range(1, 7)), {})
    e = TokenStream([0.20] * 6, list(range(1, 7)), {})
    assert decode_window([d, e]) is None
