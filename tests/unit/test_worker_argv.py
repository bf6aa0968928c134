"""The worker's command line: the short path reads what argparse reads, or steps aside."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.__main__ import _parse_plain, _parse_with_argparse, parse_arguments

SUPERVISOR_LINES = [
    ["/plugins/echo"],
    ["/plugins/echo", "--parent-pid", "42", "--max-frame-size", "1024", "--sandbox", "off"],
    ["/plugins/echo", "--parent-pid", "42", "--max-frame-size", "1024", "--sandbox", "required",
     "--data-limit-mb", "3328", "--cpu-time-limit", "2.5", "--max-open-files", "1024", "--network", "--standby"],
    ["--sandbox", "on", "/plugins/echo", "--cpu-time-limit", "0.0"],
    ["/plugins/echo", "--parent-pid", "1", "--parent-pid", "2"],  # the last one wins, as in argparse
]


@pytest.mark.parametrize("argv", SUPERVISOR_LINES)
def test_the_short_path_reads_what_argparse_reads(argv: list[str]) -> None:
    plain = _parse_plain(argv)
    assert plain is not None
    assert vars(plain) == vars(_parse_with_argparse(argv))
    assert isinstance(plain.plugin_dir, Path)


@pytest.mark.parametrize(
    "argv",
    [
        ["/plugins/echo", "--sandbox=on"],            # the = form
        ["/plugins/echo", "--parent", "3"],           # an abbreviation
        ["/plugins/echo", "--cpu-time-limit", "-1"],  # a value that looks like an option
        ["/plugins/echo", "--parent-pid", "x"],       # not a number: argparse's error
        ["/plugins/echo", "--sandbox", "maybe"],      # not a choice: argparse's error
        ["/plugins/echo", "--parent-pid"],            # no value
        [],                                           # no plugin folder
        ["/a", "/b"],                                 # two
        ["--help"],
    ],
)
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    assert _parse_plain(argv) is None


def test_argparse_still_answers_the_rest(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["/plugins/echo", "--sandbox", "maybe"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert parse_arguments(["/plugins/echo", "--parent", "3"]).parent_pid == 3
