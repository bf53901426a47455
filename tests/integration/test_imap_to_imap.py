"""Issue 2: IMAP to IMAP against two real Dovecot servers (source "/", target ".", TLS, test CA).

Every check compares full snapshots (bytes, flags, INTERNALDATE) of both accounts, so a message
copied twice, lost, altered or re-dated fails the test.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.corpus import make_corpus, make_message, seed_imap, snapshot_imap
from tests.dovecot import make_untrusted_ca
from tests.integration.jobs import Job, base_env, migrator_cmd


def total(snapshot: dict) -> int:
    return sum(len(v) for v in snapshot.values())


def assert_same(src, dst) -> None:
    a, b = snapshot_imap(src.client()), snapshot_imap(dst.client())
    assert set(a) <= set(b), sorted(set(a) - set(b))
    for folder, messages in a.items():
        assert b[folder] == messages, (
            f"{folder}: {len(messages)} in source, {len(b[folder])} in target"
        )
    extra = {f: len(v) for f, v in b.items() if f not in a and v}
    assert not extra, extra


@pytest.fixture
def seeded(account, dovecot_source, dovecot_target):
    """A source account with 300 messages in nested and non-ASCII folders, an empty target."""

    def make(n: int = 300, seed: int = 1):
        # LAYOUT=fs lets a source level hold '.', the target's delimiter.
        src = account(dovecot_source, mail="maildir:~/Maildir:LAYOUT=fs")
        dst = account(dovecot_target)
        seed_imap(src.client(), make_corpus(seed, n), "/")
        return src, dst

    return make


def test_full_copy_is_byte_identical_with_flags_dates_and_mapped_folders(seeded, tmp_path):
    src, dst = seeded(300)
    client = src.client()
    client.create_folder("Projects")
    client.create_folder("Projects/v1.2")
    client.append("Projects/v1.2", make_message(7001), flags=["\\Seen", "release"])
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    result = job.run("--workers", "3")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # '.' inside a level cannot exist on a '.' target: renamed and said so
    assert "Projects/v1.2 -> Projects/v1_2" in result.stderr
    a, b = snapshot_imap(src.client()), snapshot_imap(dst.client())
    assert b.pop("Projects/v1_2") == a.pop("Projects/v1.2")
    assert a == {k: v for k, v in b.items() if k in a} and set(a) == set(b)
    assert total(a) == 300
    # the target really uses '.', and the non-ASCII names are modified UTF-7 on the wire
    names = [name for _, _, name in dst.client().list_folders()]
    assert "Archive.2023.Q1" in names and "Перепи́ска.Ünïcødé" in names
    # the summary table names every folder
    assert "Перепи́ска/Ünïcødé" in result.stdout and "total" in result.stdout
    # APPENDUID target UIDs were recorded
    with sqlite3.connect(job.state) as db:
        ids = db.execute("SELECT count(*) FROM messages WHERE dst_id LIKE '%:%'").fetchone()[0]
    assert ids == 301


def test_rerun_copies_nothing_then_only_new_mail(seeded, tmp_path):
    src, dst = seeded(120, seed=2)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 120
    again = job.run_json()
    assert again["copied"] == 0 and again["skipped"] == 120
    client = src.client()
    client.append("INBOX", make_message(9001), flags=["\\Flagged"])
    client.append("Archive/2023", make_message(9002))
    third = job.run_json()
    assert third["copied"] == 2
    assert {f["source"]: f["copied"] for f in third["folders"] if f["copied"]} == {
        "INBOX": 1,
        "Archive/2023": 1,
    }
    assert_same(src, dst)


def test_lost_journal_adds_no_duplicates(seeded, tmp_path):
    src, dst = seeded(100, seed=3)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 100
    job.state.unlink()
    src.client().append("INBOX", make_message(9101))
    result = job.run_json()
    assert result["copied"] == 1 and result["skipped"] == 100
    assert_same(src, dst)


def test_new_uidvalidity_adds_no_duplicates(seeded, tmp_path):
    src, dst = seeded(100, seed=4)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 100
    before = src.uidvalidity("Archive/2023")
    src.set_uidvalidity("Archive/2023", renumber=True)
    assert src.uidvalidity("Archive/2023") != before
    result = job.run_json()
    assert result["copied"] == 0
    assert_same(src, dst)


def _journal_done(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM messages WHERE state='done'").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def _wait_for_progress(proc, state: Path, beyond: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _journal_done(state) > beyond:
            return
        time.sleep(0.02)


def test_sigkill_at_random_points_then_rerun_gives_exactly_once(seeded, tmp_path):
    src, dst = seeded(1200, seed=5)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    rng = random.Random(5)
    killed_mid_copy = 0
    for round_ in range(8):
        proc = job.start("--workers", str(1 + round_ % 2))
        _wait_for_progress(proc, job.state, _journal_done(job.state))
        time.sleep(rng.uniform(0, 0.2))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed_mid_copy += 1
        proc.communicate(timeout=60)
        assert total(snapshot_imap(dst.client())) <= 1200
    assert killed_mid_copy >= 3
    result = job.run()
    assert result.returncode == 0, result.stderr
    assert_same(src, dst)


def test_ctrl_c_stops_cleanly_with_130_and_rerun_finishes(seeded, tmp_path):
    src, dst = seeded(600, seed=6)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    proc = job.start("--workers", "1")
    _wait_for_progress(proc, job.state, 0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode != 0:  # it may have finished first on a fast machine
        assert proc.returncode == 130, err
        assert b"interrupted" in err and b"Traceback" not in err
    result = job.run()
    assert result.returncode == 0, result.stderr
    assert_same(src, dst)


def test_target_server_restart_mid_run(seeded, tmp_path, dovecot_target):
    src, dst = seeded(600, seed=7)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    proc = job.start("--workers", "2")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if total(snapshot_imap(dst.client(timeout=10))) > 0:
            break
        time.sleep(0.05)
    dovecot_target.restart()
    dst._clients.clear()  # their connections died with the server
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()
    assert_same(src, dst)


def test_dry_run_changes_nothing_and_reports(seeded, tmp_path):
    src, dst = seeded(50, seed=8)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    before = snapshot_imap(dst.client())
    result = job.run_json("--dry-run")
    assert result["copied"] == 50 and result["dry_run"] is True
    assert snapshot_imap(dst.client()) == before
    assert not job.state.exists()
    table = job.run("--dry-run")
    assert table.returncode == 0 and "would copy" in table.stdout


def test_json_summary_object(seeded, tmp_path):
    src, dst = seeded(30, seed=9)
    data = Job.between(src, dst, tmp_path / "j.sqlite").run_json()
    assert {"copied", "skipped", "failed", "bytes", "seconds", "folders"} <= set(data)
    assert data["copied"] == 30 and data["failed"] == 0 and data["bytes"] > 0
    for folder in data["folders"]:
        assert {"source", "target", "copied", "skipped", "failed", "bytes"} <= set(folder)
    assert sum(f["copied"] for f in data["folders"]) == 30


def test_selection_and_mapping_options(seeded, tmp_path):
    src, dst = seeded(80, seed=10)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    data = job.run_json(
        "--folder", "Archive*", "--exclude", "Archive/2023/Q1", "--map", "Archive=Old/Archive"
    )
    assert {f["source"]: f["target"] for f in data["folders"]} == {
        "Archive": "Old/Archive",
        "Archive/2023": "Old/Archive/2023",
    }
    a, b = snapshot_imap(src.client()), snapshot_imap(dst.client())
    assert b["Old/Archive/2023"] == a["Archive/2023"]
    assert "Archive/2023/Q1" not in b and "Old/Archive/2023/Q1" not in b

    into = Job.between(src, dst, tmp_path / "k.sqlite")
    data = into.run_json("--into", "Imported", "--folder", "INBOX")
    assert [f["target"] for f in data["folders"]] == ["Imported/INBOX"]


def test_date_and_size_filters(seeded, tmp_path):
    src, dst = seeded(150, seed=11)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    data = job.run_json("--since", "2010-01-01", "--before", "2015-01-01", "--max-size", "50K")
    a, b = snapshot_imap(src.client()), snapshot_imap(dst.client())
    from datetime import UTC, datetime

    lo, hi = datetime(2010, 1, 1, tzinfo=UTC), datetime(2015, 1, 1, tzinfo=UTC)
    expected = sorted(
        (s for v in a.values() for s in v if lo <= s.date < hi and len(s.body) <= 50 * 1024),
        key=lambda s: s.sort_key(),
    )
    got = sorted((s for v in b.values() for s in v), key=lambda s: s.sort_key())
    assert got == expected and data["copied"] == len(expected) > 0


# -- errors: one clear line, the right exit code, and never the password ---------------------


def _assert_one_line(result, code: int, needle: str, secret: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr


def test_wrong_password_exit_3(account, dovecot_source, dovecot_target, tmp_path):
    src, dst = account(dovecot_source), account(dovecot_target)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    job.env["MIGRATOR_SOURCE_PASSWORD"] = "wrong-Secret-4711"
    _assert_one_line(job.run(), 3, "login failed", "wrong-Secret-4711")
    # the password is nowhere on disk either
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"wrong-Secret-4711" not in path.read_bytes(), path
            assert src.password.encode() not in path.read_bytes()


def test_unknown_host_exit_3(account, dovecot_target, tmp_path):
    dst = account(dovecot_target)
    job = Job.between("imaps://nobody@no-such-host.invalid", dst, tmp_path / "j.sqlite")
    job.env.update(MIGRATOR_SOURCE_PASSWORD="x-Secret-1", MIGRATOR_TARGET_PASSWORD=dst.password)
    _assert_one_line(job.run(), 3, "unknown host", "x-Secret-1")


def test_untrusted_certificate_exit_3(account, dovecot_source, dovecot_target, tmp_path):
    src, dst = account(dovecot_source), account(dovecot_target)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    job.args[1] = str(make_untrusted_ca(tmp_path / "other-ca"))
    _assert_one_line(job.run(), 3, "certificate is not trusted", src.password)
    # without any CA option the system store does not know our test CA either
    job.args = job.args[2:]
    _assert_one_line(job.run(), 3, "certificate is not trusted", src.password)


def test_starttls_required_and_never_downgraded(account, dovecot_source, dovecot_target, tmp_path):
    src, dst = account(dovecot_source), account(dovecot_target)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    job.source = f"imap://{src.user}@127.0.0.1:{dovecot_source.imap_nostarttls_port}"
    _assert_one_line(job.run(), 3, "does not offer STARTTLS", src.password)
    # with STARTTLS offered, imap:// upgrades and works
    src.client().append("INBOX", make_message(9301))
    job.source = f"imap://{src.user}@127.0.0.1:{dovecot_source.imap_port}"
    assert job.run_json()["copied"] == 1


def test_usage_errors_exit_2(tmp_path):
    import subprocess

    for args, needle in (
        (["imaps://a:pw-Secret-9@127.0.0.1:1", "imaps://b@127.0.0.1:2"], "password in the URL"),
        (["smtp://a@127.0.0.1", "imaps://b@127.0.0.1:2"], "unknown scheme"),
    ):
        result = subprocess.run(
            migrator_cmd("copy", *args, "--state", str(tmp_path / "j")),
            env=base_env(),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        _assert_one_line(result, 2, needle, "pw-Secret-9")


def test_state_file_is_private(seeded, tmp_path):
    src, dst = seeded(5, seed=12)
    job = Job.between(src, dst, tmp_path / "deep" / "j.sqlite")
    assert job.run().returncode == 0
    assert oct(job.state.stat().st_mode & 0o777) == "0o600"
    assert oct(Path(job.state.parent).stat().st_mode & 0o777) == "0o700"


BARE_CAPABILITIES = "imap_capability = IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE NAMESPACE\n"


def test_server_without_literal_plus_multiappend_or_uidplus(
    account, dovecot_source, dovecot_tmp, tls_files
):
    """A plain IMAP4rev1 target: one APPEND per message, waiting for each '+', no APPENDUID."""
    from tests.dovecot import DovecotServer

    bare = DovecotServer(
        dovecot_tmp / "bare", separator=".", tls=tls_files, extra_conf=BARE_CAPABILITIES
    )
    bare.start()
    try:
        src, dst = account(dovecot_source), account(bare)
        seed_imap(src.client(), make_corpus(31, 40), "/")
        caps = {c.decode() for c in dst.client().capabilities()}
        assert not {"LITERAL+", "MULTIAPPEND", "UIDPLUS"} & caps
        job = Job.between(src, dst, dovecot_tmp / "j.sqlite")
        assert job.run_json()["copied"] == 40
        assert_same(src, dst)
        assert job.run_json()["copied"] == 0
        # without UIDPLUS an expunge could take other messages: deleting is refused
        back = Job.between(dst, account(dovecot_source), dovecot_tmp / "k.sqlite")
        result = back.run("--delete-source")
        assert result.returncode == 1 and "UIDPLUS" in result.stdout + result.stderr
        assert sum(len(v) for v in snapshot_imap(dst.client()).values()) == 40
    finally:
        bare.close()
