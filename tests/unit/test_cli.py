"""The command line's own behaviour: usage errors, exit codes, one-line messages."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from migrator import __version__
from migrator.cli import app

runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def run_copy(args, tmp_path):
    """`migrator copy ARGS` in a process of its own, with its journal under ``tmp_path``."""
    return subprocess.run(
        [sys.executable, "-m", "migrator", "copy", *args, "--state", str(tmp_path / "j")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["imaps://alice:hunter2@h", "mbox:/tmp/x"], "password in the URL is refused"),
        (["ftp://alice@h", "mbox:/tmp/x"], "unknown scheme"),
        (["nosuch:alice@example.com", "imaps://b@h"], "unknown profile 'nosuch'"),
        (["imaps://a@h", "imaps://b@h", "--since", "yesterday"], "--since"),
        (["imaps://a@h", "imaps://b@h", "--max-size", "big"], "--max-size"),
        (["imaps://a@h", "imaps://b@h", "--map", "nothing"], "--map"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args, needle, tmp_path):
    result = run_copy(args, tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr + result.stdout


def test_no_password_anywhere_is_a_usage_error(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "migrator",
            "copy",
            "imaps://a@127.0.0.1:1",
            "imaps://b@127.0.0.1:2",
            "--state",
            str(tmp_path / "j"),
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "no password; set MIGRATOR_SOURCE_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_password_file_and_command_are_used_in_order(tmp_path):
    from migrator.credentials import SecretSources, secret_provider

    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    env = {"MIGRATOR_SOURCE_PASSWORD": "from-env"}
    assert secret_provider(SecretSources("source", pw, "echo cmd"), "x", "u", env, False)() == (
        "from-env"
    )
    assert secret_provider(SecretSources("source", pw, "echo cmd"), "x", "u", {}, False)() == (
        "from-file"
    )
    assert secret_provider(
        SecretSources("source", None, "echo from-cmd"), "x", "u", {}, False
    )() == ("from-cmd")


def test_help_has_an_example_for_copy():
    result = runner.invoke(app, ["copy", "--help"])
    assert result.exit_code == 0 and "Example: migrator copy" in result.output


def test_flag_names():
    from migrator.errors import ConfigError
    from tests.unit.account_helpers import flag_names as _flag_names

    assert _flag_names(["seen", "Flagged", "$Forwarded"]) == {"\\Seen", "\\Flagged", "$Forwarded"}
    with pytest.raises(ConfigError):
        _flag_names(["no spaces allowed"])


def test_sync_takes_copys_options_and_max_delete_copy_does_not():
    sync = runner.invoke(app, ["sync", "--help"], terminal_width=200)
    copy = runner.invoke(app, ["copy", "--help"], terminal_width=200)
    assert sync.exit_code == copy.exit_code == 0
    assert "--max-delete" in sync.output and "--max-delete" not in copy.output
    for option in ("--folder", "--map", "--dry-run", "--json", "--state", "--workers"):
        assert option in sync.output and option in copy.output
    result = runner.invoke(app, ["copy", "mbox:/nonexistent", "mbox:/tmp/x", "--max-delete", "3"])
    assert result.exit_code == 2


def test_sync_to_an_mbox_archive_is_refused_with_one_line(tmp_path):
    (tmp_path / "in.mbox").write_bytes(b"From a@b Mon Jan  1 00:00:00 2018\nSubject: x\n\nhi\n")
    argv = [sys.executable, "-m", "migrator", "sync", f"mbox:{tmp_path / 'in.mbox'}"]
    argv += [f"mbox:{tmp_path / 'out'}", "--state", str(tmp_path / "j")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "append-only" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
