"""The command-line habits people bring from other tools: short options, "did you mean", shell
completion, examples in help, and a terminal that cannot move its cursor."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator import __version__
from migrator.cli import app
from tests.integration.jobs import run_in_pty
from tests.unit.test_cli import run_copy

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "examples" / "sample.mbox"
runner = CliRunner()


@pytest.mark.parametrize("args", [["-V"], ["--version"]])
def test_short_and_long_version(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0 and result.output.strip() == f"migrator {__version__}"


@pytest.mark.parametrize("where", [[], ["copy"], ["profiles"], ["profiles", "show"], ["auth"]])
def test_dash_h_is_help_everywhere(where: list[str]) -> None:
    short, long = runner.invoke(app, [*where, "-h"]), runner.invoke(app, [*where, "--help"])
    assert short.exit_code == 0 and short.output == long.output
    assert "Usage: migrator" in short.output


@pytest.mark.parametrize(
    "where, example",
    [
        ([], "migrator copy imaps://alice@old.example.org imaps://alice@new.example.org"),
        (["profiles"], "Example: migrator profiles show gmail"),
        (["auth"], "Example: migrator auth login gmail:alice@gmail.com"),
    ],
)
def test_help_pages_show_an_example(where: list[str], example: str) -> None:
    result = runner.invoke(app, [*where, "--help"])
    assert result.exit_code == 0 and example in result.output


@pytest.mark.parametrize(
    "args, suggestion",
    [(["cpy"], "'copy'"), (["verfy"], "'verify'"), (["profiles", "shwo"], "'show'")],
)
def test_a_mistyped_command_gets_a_suggestion(args: list[str], suggestion: str) -> None:
    result = runner.invoke(app, [*args, "x"])
    assert result.exit_code == 2
    assert f"No such command {args[-1]!r} (did you mean {suggestion}?)" in result.output


def test_a_command_nothing_resembles_gets_no_guess() -> None:
    result = runner.invoke(app, ["zzzz"])
    assert result.exit_code == 2 and "No such command 'zzzz'." in result.output


@pytest.mark.parametrize(
    "endpoint, needle",
    [
        ("mboxx:examples/sample.mbox", "unknown scheme 'mboxx' (did you mean 'mbox:'?)"),
        ("maildirr:/tmp/x", "unknown scheme 'maildirr' (did you mean 'maildir:'?)"),
        ("imapss://a@h", "unknown scheme 'imapss' (did you mean 'imaps://'?)"),
        ("ftp://a@h", "unknown scheme 'ftp';"),
        ("gmial:alice@example.com", "unknown profile 'gmial' (did you mean 'gmail'?)"),
    ],
)
def test_a_mistyped_endpoint_names_the_schemes(endpoint: str, needle: str, tmp_path: Path) -> None:
    result = run_copy([endpoint, f"maildir:{tmp_path}/t"], tmp_path)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert needle in line
    if "scheme" in needle:
        assert "imaps://, imap://, pop3s://, pop3://, mbox:, maildir:" in line
    else:
        assert "`migrator profiles list`" in line


def test_a_mistyped_profile_name_gets_a_suggestion() -> None:
    result = runner.invoke(app, ["profiles", "show", "outlok"])
    assert result.exit_code == 2
    assert "unknown profile 'outlok' (did you mean 'outlook'?)" in result.output


def complete(words: str) -> list[str]:
    """What bash completion offers for the last of ``words`` (click's completion protocol)."""
    env = {
        **os.environ,
        "_MIGRATOR_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    out = subprocess.run(
        [sys.executable, "-m", "migrator"], env=env, capture_output=True, text=True, timeout=60
    )
    return [line.split(",", 1)[-1] for line in out.stdout.splitlines()]


def test_completion_offers_profiles_schemes_and_mechanisms() -> None:
    assert {"gmail:", "gmx:"} <= set(complete("migrator copy gm"))
    assert set(complete("migrator copy ma")) >= {"maildir:", "mailbox.org:"}
    assert "imaps://" in complete("migrator verify x im")
    assert complete("migrator copy a b --source-auth xo") == ["xoauth2"]
    assert set(complete("migrator copy a b --target-auth ")) >= {"plain", "oauthbearer"}
    assert complete("migrator profiles show outl") == ["outlook"]


def copy_in_pty(tmp_path: Path, term: str) -> str:
    env = {**os.environ, "TERM": term, "HOME": str(tmp_path)}
    out = run_in_pty(
        [
            sys.executable,
            "-m",
            "migrator",
            "copy",
            f"mbox:{SAMPLE}",
            f"maildir:{tmp_path}/md",
            "--state",
            str(tmp_path / "journal"),
        ],
        env,
    )
    return out.decode("utf-8", "replace")


def test_a_dumb_terminal_gets_lines_not_cursor_movement(tmp_path: Path) -> None:
    out = copy_in_pty(tmp_path, "dumb")
    assert "\x1b[" not in out and "\r" not in out.replace("\r\n", "\n")
    assert "INBOX" in out and "12" in out


def test_the_bytes_bar_ends_at_100_percent_with_the_messages_bar(tmp_path: Path) -> None:
    # The sample's listed sizes are not what is written (LF line ends kept, bodies converted):
    # the bar must count what was written once the folder is done.
    out = copy_in_pty(tmp_path, "xterm")
    frames = re.split(r"[\r\n]", out)
    messages = [f for f in frames if f.startswith("messages:")]
    nbytes = [f for f in frames if f.startswith("bytes   :")]
    assert "100%" in messages[-1] and "12/12" in messages[-1]
    assert "100%" in nbytes[-1], nbytes[-1]
