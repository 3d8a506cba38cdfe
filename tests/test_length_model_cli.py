"""length_model CLI: exit codes and one-line errors."""

from __future__ import annotations

import pytest

from length_model.cli import build_parser, main


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert "python -m length_model train" in capsys.readouterr().out


def test_bad_input_exit_2(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert main(["train", "--work-dir", str(tmp_path)]) == 2  # no cached features
    assert main(["predict"]) == 2


def test_unknown_choice_is_usage_error():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["train", "--head", "bogus"])
    assert info.value.code == 2
