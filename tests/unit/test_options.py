"""A copy job's options, declared once (migrator/options.py): what the commands, the manifest
and the job's selection derive from the declaration."""

from __future__ import annotations

import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from migrator import batch, options
from migrator.cli import app
from migrator.options import CopyJob, RunSettings, SecretRecipe, declared, job_from_values

runner = CliRunner()
BOTH_SIDES = [f"--{side}-{name}" for side in ("source", "target") for name in ("auth", "profile")]
TOKEN_CMDS = ["--source-oauth2-token-cmd", "--target-oauth2-token-cmd"]


def help_of(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def test_the_manifest_columns_keep_their_names_and_order():
    assert list(batch.COLUMNS) == [
        "name",
        "source",
        "target",
        *(
            f"{side}_{what}"
            for side in ("source", "target")
            for what in (
                "password_env",
                "password_file",
                "password_cmd",
                "oauth2_token_cmd",
                "keyring",
                "ca_file",
            )
        ),
        "folder",
        "exclude",
        "map",
        "into",
        "to_folder",
        "since",
        "before",
        "older_than",
        "max_size",
        "flags",
        "delete_source",
    ]
    assert batch.COLUMNS["folder"] == "list" and batch.COLUMNS["delete_source"] == "bool"
    assert batch.COLUMNS["source_keyring"] == "bool" and batch.COLUMNS["source_ca_file"] == "text"


def test_the_selection_is_every_selecting_option_and_include_shared_only_when_set():
    job = CopyJob("mbox:/a", "maildir:/b", folder=("INBOX",), max_size="5M", dry_run=True)
    chosen = job.selection()
    assert chosen == {
        "source": "mbox:/a",
        "target": "maildir:/b",
        "folder": ["INBOX"],
        "exclude": [],
        "map": [],
        "into": None,
        "to_folder": None,
        "since": None,
        "before": None,
        "older_than": None,
        "max_size": "5M",
        "flags": [],
        "delete_source": False,
    }
    shared = CopyJob("mbox:/a", "maildir:/b", include_shared=True).selection()
    assert shared["include_shared"] is True


def test_every_command_lists_the_job_options_it_takes_with_their_help():
    for command, groups in options.COMMAND_GROUPS.items():
        shown = help_of(command)
        for name, opt in (*declared(CopyJob), *declared(RunSettings)):
            flag = "--" + name.replace("_", "-")
            if opt.group in groups:
                assert flag in shown, (command, flag)
                assert opt.help.split()[0] in shown, (command, flag)
            elif command != "batch":  # batch's own --refresh etc. are no job options
                assert f"{flag} " not in shown, (command, flag)


def test_verify_and_folders_take_the_credential_options_copy_takes():
    for command in ("copy", "sync", "verify"):
        shown = help_of(command)
        assert all(flag in shown for flag in [*BOTH_SIDES, *TOKEN_CMDS]), command
    shown = help_of("folders")
    for flag in ("--oauth2-token-cmd", "--auth", "--profile", "--password-file"):
        assert flag in shown
    for flag in ("--target-oauth2-token-cmd", "--target-auth", "--target-profile"):
        assert flag in shown
    assert "--source-auth" not in shown  # folders' endpoint takes its options unprefixed


def test_one_default_worker_count():
    assert RunSettings().workers == options.DEFAULT_WORKERS
    for command in ("copy", "sync", "batch"):
        assert f"[default: {options.DEFAULT_WORKERS}; 1<=x<=32]" in help_of(command)


def test_values_named_as_options_make_the_job():
    job, settings = job_from_values(
        "imaps://a@h",
        "maildir:/m",
        {
            "folder": ["INBOX", "Sent"],
            "source_password_file": Path("/run/pw"),
            "source_oauth2_token_cmd": "tok a",
            "target_auth": "plain",
            "source_profile": "gmail",
            "target_ca_file": Path("/etc/ca.pem"),
            "insecure": True,
            "workers": 7,
            "since": None,
        },
    )
    assert job.folder == ("INBOX", "Sent") and job.insecure and job.since is None
    assert job.source_secret == SecretRecipe(file="/run/pw", oauth2_token_cmd="tok a")
    assert job.target_secret == SecretRecipe(auth="plain")
    assert job.source_profile == "gmail" and job.target_ca_file == "/etc/ca.pem"
    assert settings == RunSettings(workers=7)


def test_every_manifest_column_of_the_job_is_read_by_its_kind(tmp_path):
    """A manifest row with every job column set gives a job with each of them."""
    values = {
        "folder": "INBOX;Sent",
        "exclude": "Junk",
        "map": "Sent=Sent Items",
        "into": "Old",
        "to_folder": "Inbox",
        "since": "2020-01-01",
        "before": "2024-01-01",
        "older_than": "90d",
        "max_size": "25M",
        "flags": "seen",
        "delete_source": "yes",
    }
    assert set(values) == {n for n, o in declared(CopyJob) if o.column}
    path = tmp_path / "m.csv"
    path.write_text(
        ",".join(["source", "target", *values])
        + "\n"
        + ",".join([f"mbox:{tmp_path}/a.mbox", f"maildir:{tmp_path}/b", *values.values()])
        + "\n"
    )
    (account,) = batch.load_manifest(path).accounts
    job = account.job
    assert job.folder == ("INBOX", "Sent") and job.map == ("Sent=Sent Items",)
    assert job.delete_source is True and job.older_than == "90d" and job.flags == ("seen",)
    defaults = {f.name: f.default for f in fields(CopyJob)}
    assert all(getattr(job, name) != defaults[name] for name in values)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        ("verify", "--source-oauth2-token-cmd"),
        ("folders", "--oauth2-token-cmd"),
        ("check", "--oauth2-token-cmd"),
    ],
)
def test_a_token_command_given_to_verify_folders_or_check_is_the_login(tmp_path, command, flag):
    """The token command runs before any connection (the login is chosen then), and the token
    it prints is never shown; the server (nobody listening) is where it stops."""
    marker = tmp_path / "ran"
    script = tmp_path / "token.sh"
    script.write_text(f"echo ran > {marker}\necho ya29.token-never-shown\n")
    server = f"imaps://alice@127.0.0.1:{_closed_port()}"
    argv = [command, server] + ([f"maildir:{tmp_path}/m"] if command == "verify" else [])
    argv += [flag, f"sh {script}", "--timeout", "5"]
    result = subprocess.run(
        [sys.executable, "-m", "migrator", *argv],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert marker.read_text().strip() == "ran", result.stderr
    assert result.returncode not in (0, 2), result.stderr
    assert "token-never-shown" not in result.stdout + result.stderr


def test_verify_honours_the_auth_and_profile_of_each_side(tmp_path):
    """--target-auth reaches the login of verify's target (read as a source), and
    --source-profile the source's provider profile."""
    args = [
        "verify",
        f"imaps://a@127.0.0.1:{_closed_port()}",
        f"imaps://b@127.0.0.1:{_closed_port()}",
    ]
    wrong_auth = runner.invoke(app, [*args, "--target-auth", "nonsense"])
    assert wrong_auth.exit_code == 2 and "--target-auth 'nonsense'" in wrong_auth.output
    no_profile = runner.invoke(app, [*args, "--source-profile", "nosuchprofile"])
    assert no_profile.exit_code == 2 and "nosuchprofile" in no_profile.output
