"""The gateway deployment's pure parts: its spec check, the worker label and the
Prometheus counters it reads (the live deployment is in test_gateway_live.py)."""

from __future__ import annotations

import pytest

from sglang_ext.gateway import GatewaySpec, parse_counters, worker_index

# A worker's /metrics page as SGLang 0.5.23 writes it (abridged): counters carry a
# `_total` sample and a `_created` one; cached tokens are split by cache source.
METRICS_PAGE = """\
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{model_name="m",is_streaming="true"} 5.0
sglang:num_requests_total{model_name="m",is_streaming="false"} 2.0
sglang:num_requests_created{model_name="m",is_streaming="true"} 1.7962e+09
# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="m",is_streaming="true"} 1360.0
sglang:prompt_tokens_total{model_name="m",is_streaming="false"} 40.0
# HELP sglang:cached_tokens_total Number of cached prompt tokens by source (device/host/storage).
# TYPE sglang:cached_tokens_total counter
sglang:cached_tokens_total{model_name="m",cache_source="device"} 1024.0
sglang:cached_tokens_total{model_name="m",cache_source="host"} 3.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="m",is_streaming="true"} 99.0
"""


def test_counters_are_summed_over_their_labels():
    assert parse_counters(METRICS_PAGE) == {"requests": 7, "prompt_tokens": 1400, "cached_tokens": 1027}


def test_a_fresh_worker_counts_zero():
    assert parse_counters("# nothing served yet\n") == {"requests": 0, "prompt_tokens": 0, "cached_tokens": 0}


@pytest.mark.parametrize(("label", "index"), [("worker-0", 0), ("worker-12", 12), ("default", None),
                                              ("worker-", None), ("worker-x", None), (None, None)])
def test_worker_label(label, index):
    assert worker_index(label) == index


@pytest.mark.parametrize(("fields", "message"), [
    ({"policy": "manual"}, "gateway policy must be one of"),
    ({"workers": 0}, "at least 1 worker"),
    ({"max_total_tokens": 0}, "max_total_tokens"),
])
def test_bad_spec_is_refused_in_one_line(fields, message):
    with pytest.raises(ValueError, match=message) as err:
        GatewaySpec(model_path="m", **fields).check()
    assert "\n" not in str(err.value)


def test_the_workers_are_stock_sglang_without_our_plugin(monkeypatch):
    from sglang.srt.plugins import GENERAL_PLUGINS_GROUP, load_plugins_by_group

    from sglang_ext.gateway import _worker_spec

    spec = _worker_spec(GatewaySpec(model_path="m"), index=0, core=0)
    assert spec.stock and spec.dp_size == 1 and "--weight-version" in spec.extra_args
    monkeypatch.delenv("SGLANG_PLUGINS", raising=False)
    assert "prefix_length_dp" in load_plugins_by_group(GENERAL_PLUGINS_GROUP)   # installed, found by default
    monkeypatch.setenv("SGLANG_PLUGINS", spec.env["SGLANG_PLUGINS"])
    assert load_plugins_by_group(GENERAL_PLUGINS_GROUP) == {}
