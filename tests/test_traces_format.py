"""The trace format: round trip, versioning, and one-line errors for invalid traces."""

from __future__ import annotations

import subprocess
import sys

import pytest

from traces.cli import main
from traces.format import FORMAT_VERSION, TraceError, TraceHeader, TraceRequest, encode_line, read_trace, write_trace
from tests.conftest import ROOT


def make_requests(n: int = 4) -> list[TraceRequest]:
    return [TraceRequest(id=f"r{i}", arrival_s=0.5 * i, max_new_tokens=16, output_tokens=4, prompt=f"hello {i}",
                         prefix_group="g0", session=f"s{i // 2}", episode=i // 2, turn=i % 2) for i in range(n)]


def write(path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "t.jsonl"
    reqs = make_requests() + [TraceRequest(id="ids", arrival_s=9.0, max_new_tokens=8, output_tokens=8, input_ids=[1, 2, 3])]
    write_trace(path, TraceHeader(generator="test", seed=1, config={"a": 1}), reqs)
    trace = read_trace(path)
    assert trace.header.version == FORMAT_VERSION and trace.header.config == {"a": 1}
    assert trace.requests == reqs


def lines_with(bad: bytes, at: int = 3) -> list[bytes]:
    lines = [encode_line(TraceHeader(generator="test", seed=0))] + [encode_line(r) for r in make_requests()]
    lines.insert(at - 1, bad)
    return lines


@pytest.mark.parametrize("bad, words", [
    (b'{"kind":"request","id":"x","arrival_s":1.0\n', "malformed"),
    (b'{"kind":"request","id":"x","arrival_s":"soon","max_new_tokens":4,"output_tokens":1,"prompt":"a"}\n', "arrival_s"),
    (b'{"kind":"request","id":"x","arrival_s":0.6,"max_new_tokens":4,"output_tokens":9,"prompt":"a"}\n', "exceeds"),
    (b'{"kind":"request","id":"x","arrival_s":0.6,"max_new_tokens":4,"output_tokens":1}\n', "prompt"),
    (b'{"kind":"banana"}\n', "kind"),
])
def test_malformed_line_names_its_line_number_and_lenient_mode_keeps_the_rest(tmp_path, bad, words):
    path = tmp_path / "t.jsonl"
    write(path, lines_with(bad, at=3))
    with pytest.raises(TraceError) as err:
        read_trace(path)
    message = str(err.value)
    assert f"{path}:3:" in message and "\n" not in message
    assert words.lower() in message.lower() or words == "malformed"
    trace = read_trace(path, strict=False)
    assert [r.id for r in trace.requests] == [r.id for r in make_requests()]
    assert len(trace.skipped_lines) == 1 and ":3:" in trace.skipped_lines[0]


def test_out_of_order_and_duplicate_requests_are_rejected(tmp_path):
    path = tmp_path / "t.jsonl"
    reqs = make_requests()
    write(path, [encode_line(TraceHeader(generator="t", seed=0))] + [encode_line(r) for r in reqs] + [encode_line(reqs[0])])
    with pytest.raises(TraceError, match=r":6: .*(earlier|duplicate)"):
        read_trace(path)


def test_header_problems(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, [encode_line(r) for r in make_requests()])
    with pytest.raises(TraceError, match=":1: the first line must be a trace header"):
        read_trace(path)
    write(path, [encode_line(TraceHeader(generator="t", seed=0, version=FORMAT_VERSION + 1))])
    with pytest.raises(TraceError, match="newer than this reader"):
        read_trace(path)
    write(path, [])
    with pytest.raises(TraceError, match="empty"):
        read_trace(path)
    with pytest.raises(TraceError, match="no such trace"):
        read_trace(tmp_path / "missing.jsonl")


def test_cli_reports_bad_trace_in_one_line_with_exit_2(tmp_path):
    path = tmp_path / "t.jsonl"
    write(path, lines_with(b"not json\n", at=4))
    proc = subprocess.run([sys.executable, "-m", "traces", "stats", str(path)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"{path}:4:" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "traces", "stats", str(path), "--skip-bad-lines"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and '"requests": 4' in proc.stdout and ":4:" in proc.stderr


@pytest.mark.parametrize("argv, words", [
    (["generate", "react", "--out", "X", "--output-lengths", "1:0.5,abc"], "bad length distribution"),
    (["generate", "react", "--out", "X", "--output-lengths", "600:1", "--max-new-tokens", "512"], "exceeds --max-new-tokens"),
    (["generate", "react", "--out", "X", "--steps", "4"], "bad step"),
    (["generate", "react", "--out", "X", "--rate-rps", "-1"], "rate"),
    (["generate", "react", "--out", "X", "--examples", "9"], "--examples"),
    (["generate", "toolbench", "--out", "X", "--tools", "0"], "--tools"),
    (["generate", "react", "--out", "X", "--arrival", "weibull"], "invalid choice"),
    (["generate", "react"], "required"),
    (["replay", "T", "--simulate"], "no such trace file"),
    (["replay", "T", "--simulate", "--gpus", "0"], "--gpus must be"),
    (["replay", "T", "--rate-scale", "0"], "--rate-scale"),
])
def test_bad_options_give_one_line_and_exit_2(tmp_path, capsys, argv, words):
    argv = [str(tmp_path / a) if a in ("X", "T") else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err


def test_replay_to_unreachable_server_is_one_line_exit_1(tmp_path, capsys):
    from sglang_ext.server import free_port

    path = tmp_path / "t.jsonl"
    write_trace(path, TraceHeader(generator="t", seed=0), make_requests())
    code = main(["replay", str(path), "--url", f"http://127.0.0.1:{free_port()}", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "cannot reach SGLang" in err


def test_stats_writes_json_and_histograms(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    assert main(["generate", "toolbench", "--out", str(path), "--duration-s", "5", "--tools", "5"]) == 0
    assert main(["stats", str(path), "--out", str(tmp_path / "s")]) == 0
    for name in ("stats.json", "histograms.png", "config.json"):
        assert (tmp_path / "s" / name).stat().st_size > 0
    import json

    stats = json.loads((tmp_path / "s" / "stats.json").read_text())
    assert stats["prefix_groups"] <= 5 and 0 < stats["ideal_prefix_hit_rate"] < 1
