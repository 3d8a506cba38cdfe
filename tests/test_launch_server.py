"""The launcher's argument handling and start-up errors (no server is started)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sglang_ext.settings import ENV_LENGTH_SOURCE, ENV_POLICY
from sglang_ext.launch_server import UsageError, loopback_kv_events_config, translate_args
from sglang_ext.core.policies import POLICIES


def test_our_policy_reaches_the_controller_and_sglang_sees_a_stock_value():
    env = {}
    argv = translate_args(["--model-path", "m", "--load-balance-method", "prefix_length_aware",
                           "--length-source", "oracle", "--dp-size", "2"], env)
    assert env[ENV_POLICY] == "prefix_length_aware" and env[ENV_LENGTH_SOURCE] == "oracle"
    assert argv[argv.index("--load-balance-method") + 1] == "round_robin"
    assert "--length-source" not in argv
    kv = json.loads(argv[argv.index("--kv-events-config") + 1])
    assert kv["endpoint"].startswith("tcp://127.0.0.1:") and kv["bind"] is True


def test_equals_form_and_approximate_mirror():
    env = {}
    argv = translate_args(["--load-balance-method=total_tokens", "--kv-mirror", "approximate"], env)
    assert env[ENV_POLICY] == "total_tokens"
    assert "--kv-events-config" not in argv


def test_user_kv_events_config_on_loopback_is_kept():
    cfg = '{"publisher": "zmq", "endpoint": "tcp://127.0.0.1:6000", "replay_endpoint": "tcp://[::1]:6100"}'
    argv = translate_args(["--kv-events-config", cfg], {})
    assert argv.count("--kv-events-config") == 1 and argv[argv.index("--kv-events-config") + 1] == cfg


@pytest.mark.parametrize("cfg", [
    '{"publisher": "zmq"}',  # SGLang's default endpoint: tcp://*:5557, every interface
    '{"publisher": "zmq", "endpoint": "tcp://0.0.0.0:6000"}',
    '{"publisher": "zmq", "endpoint": "tcp://10.1.2.3:6000", "bind": false}',  # pushed to another host
    '{"publisher": "zmq", "endpoint": "tcp://127.0.0.1:6000", "replay_endpoint": "tcp://*:6100"}',
    '{"publisher": "zmq", "endpoint": "tcp://eth0:6000"}',
])
def test_a_kv_event_feed_beyond_loopback_is_refused_unless_allowed(cfg, capsys):
    with pytest.raises(UsageError, match="carries prompt token ids.*--kv-events-allow-remote"):
        translate_args(["--kv-events-config", cfg], {})
    argv = translate_args([f"--kv-events-config={cfg}", "--kv-events-allow-remote"], {})
    assert "--kv-events-allow-remote" not in argv  # ours, not SGLang's
    assert "warning" in capsys.readouterr().err


@pytest.mark.parametrize("cfg", ['{"publisher": "null", "endpoint": "tcp://*:1"}',
                                 '{"publisher": "zmq", "endpoint": "ipc:///tmp/feed"}'])
def test_feeds_that_reach_no_other_host_need_no_flag(cfg):
    translate_args(["--kv-events-config", cfg], {})


def test_a_kv_events_config_that_is_no_json_object_is_a_usage_error():
    for cfg in ("{not json", "[1]"):
        with pytest.raises(UsageError, match="--kv-events-config"):
            translate_args(["--kv-events-config", cfg], {})


def test_plugin_is_added_to_a_user_whitelist():
    env = {"SGLANG_PLUGINS": "other"}
    translate_args([], env)
    assert env["SGLANG_PLUGINS"] == "other,prefix_length_dp"


@pytest.mark.parametrize("flag", ["--load-balance-method", "--length-source", "--kv-mirror"])
def test_bad_values_are_usage_errors(flag):
    with pytest.raises(UsageError):
        translate_args([flag, "bogus"], {})


def test_unknown_method_exits_at_once_with_one_line_listing_valid_values():
    proc = subprocess.run([sys.executable, "-m", "sglang_ext.launch_server", "--model-path", "x",
                           "--load-balance-method", "fastest"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "fastest" in lines[0]
    assert all(name in lines[0] for name in POLICIES)


def test_wrong_sglang_version_is_one_clear_line(monkeypatch):
    import sglang

    from sglang_ext.compat import IncompatibleSGLang, check_sglang

    monkeypatch.setattr(sglang, "__version__", "0.5.9")
    with pytest.raises(IncompatibleSGLang, match=r"SGLang 0\.5\.9 .* sglang==0\.5\.23"):
        check_sglang()


def test_kv_ports_are_consecutive_per_rank():
    import random

    cfg = loopback_kv_events_config(4, random.Random(0))
    pub = int(cfg["endpoint"].rsplit(":", 1)[1])
    replay = int(cfg["replay_endpoint"].rsplit(":", 1)[1])
    assert replay == pub + 4


def test_cpu_device_sets_the_cpu_engine_and_one_thread_per_core_and_rank():
    env = {}
    translate_args(["--model-path", "m", "--device", "cpu", "--dp-size", "2"], env)
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert env["OMP_NUM_THREADS"] == str(max(1, (__import__("os").cpu_count() or 1) // 2))
    user = {"OMP_NUM_THREADS": "3"}
    translate_args(["--device=cpu"], user)
    assert user["OMP_NUM_THREADS"] == "3"  # the user's choice is kept
    gpu = {}
    translate_args(["--model-path", "m", "--dp-size", "2"], gpu)
    assert "OMP_NUM_THREADS" not in gpu and "SGLANG_USE_CPU_ENGINE" not in gpu


@pytest.mark.parametrize("value", ["two", "0"])
def test_a_bad_dp_size_is_a_usage_error(value):
    with pytest.raises(UsageError, match="--dp-size must be"):
        translate_args(["--dp-size", value], {})


def test_cost_model_is_checked_at_launch_and_handed_to_the_controller():
    from sglang_ext.settings import ENV_COST_MODEL

    env = {}
    translate_args(["--cost-model", "online:a100-llama3.1-8b"], env)
    assert env[ENV_COST_MODEL] == "online:a100-llama3.1-8b"
    with pytest.raises(UsageError, match="--cost-model: no cost model 'nope'"):
        translate_args(["--cost-model", "nope"], {})


def test_prefix_holds_flag_is_checked_and_handed_to_the_controller():
    from sglang_ext.settings import ENV_PREFIX_HOLDS

    env = {}
    assert "--prefix-holds" not in translate_args(["--prefix-holds", "off"], env)
    assert env[ENV_PREFIX_HOLDS] == "off"
    with pytest.raises(UsageError, match="--prefix-holds must be on or off"):
        translate_args(["--prefix-holds", "maybe"], {})


def test_kv_mirror_events_refuses_to_start_without_a_feed_where_auto_settles_for_approximate(monkeypatch, capsys):
    import sglang_ext.launch_server as launcher

    no_feed = '{"publisher": "null"}'
    argv = translate_args(["--kv-mirror", "auto", "--kv-events-config", no_feed], {})
    assert argv[argv.index("--kv-events-config") + 1] == no_feed
    with pytest.raises(UsageError, match="--kv-mirror events needs a ZeroMQ KV-event feed"):
        translate_args(["--kv-mirror", "events", "--kv-events-config", no_feed], {})
    monkeypatch.setattr(launcher, "_ports_free", lambda ports: False)  # every loopback port taken
    assert "--kv-events-config" not in translate_args(["--kv-mirror", "auto"], {})
    assert "approximate mirror" in capsys.readouterr().err
    with pytest.raises(UsageError, match="no free loopback ports"):
        translate_args(["--kv-mirror", "events"], {})


@pytest.mark.parametrize("form", ["space", "equals"])
def test_each_of_our_flags_is_taken_in_both_forms_and_never_reaches_sglang(form):
    from sglang_ext.settings import ENV_COST_MODEL, ENV_LENGTH_MODEL, ENV_PREDICT_WAIT_MS, ENV_PREFIX_HOLDS

    ours = {"--load-balance-method": "lmetric", "--length-source": "predicted", "--length-model": "some/dir",
            "--predict-wait-ms": "5", "--cost-model": "online", "--prefix-holds": "off", "--kv-mirror": "approximate"}
    argv = []
    for flag, value in ours.items():
        argv += [flag, value] if form == "space" else [f"{flag}={value}"]
    env = {}
    out = translate_args(["--model-path", "m", *argv, "--dp-size", "2"], env)
    assert out == ["--model-path", "m", "--dp-size", "2", "--load-balance-method", "round_robin"]
    assert (env[ENV_POLICY], env[ENV_LENGTH_SOURCE], env[ENV_LENGTH_MODEL], env[ENV_PREDICT_WAIT_MS],
            env[ENV_COST_MODEL], env[ENV_PREFIX_HOLDS]) == ("lmetric", "predicted", "some/dir", "5", "online", "off")


def test_sglang_flags_pass_through_in_order_with_their_values():
    sglang = ["--model-path", "m", "--random-seed", "-1", "--skip-tokenizer-init", "--served-model-name", "a b",
              "--json-model-override-args", '{"x": 1}', "--chat-template=-weird", "--help"]
    assert translate_args([*sglang[:4], "--kv-mirror", "approximate", *sglang[4:]], {}) == sglang


def test_a_repeated_flag_is_read_as_sglang_reads_it_the_last_one_wins():
    env = {}
    argv = translate_args(["--dp-size", "3", "--dp-size", "4", "--length-source", "oracle",
                           "--length-source", "max_new_tokens"], env)
    assert env[ENV_LENGTH_SOURCE] == "max_new_tokens"
    kv = json.loads(argv[argv.index("--kv-events-config") + 1])
    pub, replay = (int(kv[k].rsplit(":", 1)[1]) for k in ("endpoint", "replay_endpoint"))
    assert replay == pub + 4  # the feed is sized for the 4 ranks SGLang will start


@pytest.mark.parametrize("argv, message", [
    (["--cost-model"], "--cost-model: expected one argument"),
    (["--kv-events-allow-remote=yes"], "--kv-events-allow-remote: ignored explicit argument"),
    (["--predict-wait-ms", "-1"], "--predict-wait-ms must be a number >= 0"),
    (["--predict-wait-ms=nan"], "--predict-wait-ms must be a number >= 0"),
])
def test_malformed_flags_are_one_line_usage_errors(argv, message):
    with pytest.raises(UsageError, match=message) as err:
        translate_args(argv, {})
    assert "\n" not in str(err.value)


def test_abbreviations_of_our_flags_are_left_to_sglang():
    env = {}
    assert translate_args(["--length-sourc", "oracle", "--kv-mirror", "approximate"], env) == \
        ["--length-sourc", "oracle"]
    assert ENV_LENGTH_SOURCE not in env
