"""The command line's errors reach the user intact: never read as rich markup, never wrapped.

A path or message may hold ``[x]`` or ``[/``: read as markup, the first is swallowed and the second raises
a MarkupError traceback in place of the message. Off a terminal (CI logs, a pipe) rich is 80 columns wide,
and a wrapped path cannot be copied or grepped: one error is one line.
"""

from pathlib import Path

import pytest

from fl_metamorphosis.environment import DEBUG_ENV
from metamorphosis_cli import main as cli
from metamorphosis_cli.main import main


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "MarkupError" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) >= 1 and lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("odd", ["[/x]", "[bold]x", "[red]x[/red]", ":smile:"])
def test_a_config_error_naming_an_odd_path_is_printed_intact_on_one_line(tmp_path, capsys, odd):
    config = tmp_path / "runs" / odd / ("a-long-folder-name-" * 8) / "c.toml"  # far past 80 columns
    assert main(["central", "--config", str(config)]) == 2
    stderr = capsys.readouterr().err
    line = _one_error_line(stderr)
    assert str(config) in line and len(line) > 200
    assert stderr.strip() == line  # nothing else, no continuation lines


def test_an_unexpected_error_with_markup_in_its_message_is_printed_intact(monkeypatch, capsys):
    message = "cannot open runs/[/x]/[y]/" + "z" * 150 + "/state: [Errno 2] no such file"

    def boom(args):
        raise RuntimeError(message)

    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(cli, "_central", boom)
    assert main(["central"]) == 1
    stderr = capsys.readouterr().err
    assert _one_error_line(stderr) == f"error: RuntimeError: {message}"
    assert "METAMORPHOSIS_DEBUG=1" in stderr


def test_progress_lines_with_brackets_are_printed_as_they_are(capsys):
    cli.say("  [metamorphosis] epoch 1/2 in runs/[/x]/" + "y" * 120, "bold")
    cli.say_error("simulation failed:", "round [3] of runs/[/x]")
    assert capsys.readouterr().err.splitlines() == [
        "  [metamorphosis] epoch 1/2 in runs/[/x]/" + "y" * 120,
        "simulation failed: round [3] of runs/[/x]",
    ]


def test_the_path_in_a_missing_config_error_is_the_one_given(tmp_path, capsys):
    config = Path("runs/[x]/c.toml")
    assert main(["central", "--config", str(config)]) == 2
    assert str(config) in _one_error_line(capsys.readouterr().err)
