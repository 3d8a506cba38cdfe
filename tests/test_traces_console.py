"""Terminal tables through rich (traces/console.py)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from traces.console import print_table


def _render(*args, width: int = 40, **kwargs) -> str:
    out = io.StringIO()
    print_table(*args, console=Console(file=out, width=width, force_terminal=False, color_system=None), **kwargs)
    return out.getvalue()


def test_a_wide_table_off_a_terminal_is_not_folded_and_cells_are_text():
    rows = [["prefix_length_aware", "0.91 [0.85-0.97]", None], ["round_robin", "1.00 [1.00-1.00]", 12.5]]
    text = _render(rows, ["policy", "e2e mean / RR", "value"], title="results [seeds]")
    lines = text.splitlines()
    assert any("prefix_length_aware" in line and "0.91 [0.85-0.97]" in line for line in lines)
    assert max(len(line) for line in lines) > 40   # wider than the 40 columns the console started with
    assert "results [seeds]" in text               # brackets are not eaten as rich markup
    row = next(line for line in lines if "prefix_length_aware" in line)
    assert row.rstrip().rstrip("│|").strip().endswith("-")  # None shows as "-"


def test_figures_are_right_aligned_and_labels_left():
    text = _render([["a", "1"], ["bbbbbb", "22222"]], ["name", "value"], width=80)
    row = next(line for line in text.splitlines() if " a " in line)
    cells = [c for c in row.split("│") if c.strip()]
    assert cells[0].startswith(" a ") and cells[1].endswith(" 1 ")


def test_header_count_must_match_the_rows():
    with pytest.raises(ValueError, match="2 headers for rows of 3 cells"):
        _render([[1, 2, 3]], ["a", "b"])


def test_the_simulator_table_prints_every_row(monkeypatch):
    import traces.console as console_mod
    from cluster.cli import print_table as print_run

    summary = {"succeeded": 9, "requests": 10, "ttft_s": {"mean": 0.1, "p99": 0.5}, "e2e_s": {"mean": 1.0, "p99": 2.0},
               "norm_latency_s_per_token": {"mean": 0.01}, "prefix_hit_rate": 0.5, "throughput_rps": 3.0,
               "throughput_output_tokens_per_s": 100.0, "decision_time_us": {"mean": 12.0, "p99": 40.0},
               "simulator": {}, "host_dependent": False}
    out = io.StringIO()
    monkeypatch.setattr(console_mod, "Console", lambda: Console(file=out, width=60, force_terminal=False))
    print_run(summary, 1.5, "run")
    text = out.getvalue()
    assert "9 / 10" in text and "12.0 / 40.0" in text and "wall time (s)" in text


def test_left_aligned_columns_by_index():
    text = _render([["1", "short"], ["22222", "a longer text"]], ["n", "text"], left_columns=[1], width=80)
    row = next(line for line in text.splitlines() if "short" in line)
    cells = [c for c in row.split("│") if c.strip()]
    assert cells[0].endswith(" 1 ") and cells[1].startswith(" short ")
