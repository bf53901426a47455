"""Issue 3, "What it must show" 4 and 5: archiving old mail with --delete-source, and damaged
archives, through the CLI as users run it from cron."""

from __future__ import annotations

import mailbox
import os
from datetime import UTC, datetime, timedelta

import pytest

from tests.corpus import make_message, snapshot_imap
from tests.integration.jobs import Job, base_env


def _days_ago(days: float) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days)).replace(microsecond=0)


def test_older_than_with_delete_source_archives_only_old_mail_then_what_has_aged(
    account, dovecot_source, dovecot_tmp
):
    src = account(dovecot_source)
    client = src.client()
    client.create_folder("Projects")
    ages = {1: 800, 2: 400, 3: 366, 4: 364.5, 5: 100, 6: 2}
    for i, days in ages.items():
        folder = "INBOX" if i % 2 else "Projects"
        client.append(folder, make_message(5000 + i), flags=["\\Seen"], msg_time=_days_ago(days))
    archive = dovecot_tmp / "archive"
    job = Job(
        src.url("imaps"),
        f"mbox:{archive}",
        dovecot_tmp / "j.sqlite",
        env=base_env(MIGRATOR_SOURCE_PASSWORD=src.password),
        args=["--source-ca-file", str(src.server.ca_file)],
    )

    first = job.run("--older-than", "365d", "--delete-source")
    assert first.returncode == 0, first.stderr
    assert "\r" not in first.stderr and "%|" not in first.stderr  # no bars under cron
    assert "INBOX -> INBOX: 2 copied" in first.stderr  # one log line per folder
    left = snapshot_imap(src.client())
    assert len(left["INBOX"]) + len(left["Projects"]) == 3  # 364.5, 100 and 2 days old stay
    archived = _archived(archive)
    assert len(archived) == 3
    assert {b.split(b"X-Corpus-Index: ")[1][:4] for b in archived} == {b"5001", b"5002", b"5003"}
    for path in archive.rglob("*.mbox"):
        assert oct(path.stat().st_mode & 0o777) == "0o600"

    # "A day later": with the cut-off one day earlier, only the message that aged since moves.
    second = job.run("--older-than", "364d", "--delete-source")
    assert second.returncode == 0, second.stderr
    archived = _archived(archive)
    assert len(archived) == 4 and len(set(archived)) == 4
    left = snapshot_imap(src.client())
    assert len(left["INBOX"]) + len(left["Projects"]) == 2


def _archived(root) -> list[bytes]:
    out = []
    for path in sorted(root.rglob("*.mbox")):
        box = mailbox.mbox(str(path), create=False)
        out.extend(bytes(m) for m in box)
        box.close()
    return out


@pytest.fixture
def imap_target(account, dovecot_target):
    dst = account(dovecot_target)
    return dst


def _job_from(path, dst, state) -> Job:
    return Job(
        f"mbox:{path}",
        dst.url("imaps"),
        state,
        env=base_env(MIGRATOR_TARGET_PASSWORD=dst.password),
        args=["--target-ca-file", str(dst.server.ca_file)],
    )


def _one_clear_line(result) -> None:
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line or "failed" in line]
    assert errors and all(len(line) < 400 for line in errors)


def test_truncated_mbox_copies_the_whole_messages_and_fails_the_torn_one(imap_target, dovecot_tmp):
    good = [make_message(6000 + i).replace(b"\r\n", b"\n") for i in range(3)]
    text = b"".join(b"From MAILER-DAEMON Mon Jan  1 00:00:00 2018\n" + m + b"\n" for m in good)
    path = dovecot_tmp / "cut.mbox"
    path.write_bytes(text[: len(text) - 40])  # the last message loses its end
    result = _job_from(path, imap_target, dovecot_tmp / "j.sqlite").run()
    assert result.returncode == 1, result.stderr
    _one_clear_line(result)
    assert "failed: INBOX" in result.stdout
    assert len(snapshot_imap(imap_target.client())["INBOX"]) == 2
    assert path.read_bytes() == text[: len(text) - 40]  # the source is never touched


def test_mbox_without_from_line_first_is_a_clear_error(imap_target, dovecot_tmp):
    path = dovecot_tmp / "notmbox.mbox"
    path.write_bytes(b"Subject: hello\n\nthis is not an mbox\n")
    result = _job_from(path, imap_target, dovecot_tmp / "j.sqlite").run()
    assert result.returncode == 1, result.stderr
    _one_clear_line(result)
    assert "From" in result.stderr + result.stdout


def test_unreadable_mbox_is_a_clear_error(imap_target, dovecot_tmp):
    if os.geteuid() == 0:
        pytest.skip("root reads every file; the permission check is covered by the unit tests")
    path = dovecot_tmp / "secret.mbox"
    path.write_bytes(b"From a Mon Jan  1 00:00:00 2018\nSubject: x\n\nx\n")
    path.chmod(0)
    result = _job_from(path, imap_target, dovecot_tmp / "j.sqlite").run()
    assert result.returncode in (1, 2) and "permission" in result.stderr


def test_maildir_with_stray_files_copies_the_mail_and_leaves_the_strays(imap_target, dovecot_tmp):
    root = dovecot_tmp / "md"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        (root / "cur" / f"100{i}.M1P1.host:2,S").write_bytes(
            make_message(7000 + i).replace(b"\r\n", b"\n")
        )
    (root / "cur" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cur" / "notes").mkdir()
    (root / "stray.txt").write_text("hello")
    (root / "dovecot.index.log").write_bytes(b"\1\2\3")
    job = Job(
        f"maildir:{root}",
        imap_target.url("imaps"),
        dovecot_tmp / "j.sqlite",
        env=base_env(MIGRATOR_TARGET_PASSWORD=imap_target.password),
        args=["--target-ca-file", str(imap_target.server.ca_file)],
    )
    result = job.run()
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 1), result.stderr
    inbox = snapshot_imap(imap_target.client())["INBOX"]
    assert len(inbox) == 3 and all("\\Seen" in m.flags for m in inbox)
    assert (root / "stray.txt").exists() and (root / "cur" / ".DS_Store").exists()
