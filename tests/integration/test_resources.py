"""Issue 8: resource faults. A full disk under the mbox archive (a small tmpfs, and a file size
limit), a read-only journal directory, a second run of the same job, SIGTERM and SIGHUP: each
gives one clear line and the exit code SPEC.md names, and a rerun loses nothing."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from migrator.model import INBOX, to_crlf
from tests.corpus import Msg, make_message, message_date, seed_imap, snapshot_imap
from tests.faultproxy import FaultProxy
from tests.integration.jobs import Job
from tests.integration.test_faults import assert_exactly_once, small_corpus, url


def _one_error_line(stderr: str, *needles: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("migrator: error")]
    assert len(errors) == 1, stderr
    for needle in needles:
        assert needle in errors[0], stderr
    return errors[0]


@contextlib.contextmanager
def tmpfs(path: Path, size: str, *, ro: bool = False) -> Iterator[Path]:
    """A small tmpfs at ``path`` (we run as root); skipped where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if ro else "")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def _archive_bodies(archive: Path) -> Counter:
    from migrator.stores.mbox import MboxStore

    with MboxStore(archive, create=False) as store:
        refs = list(store.list_messages(INBOX))
        return Counter(to_crlf(d) for _, d in store.fetch(INBOX, refs) if isinstance(d, bytes))


@pytest.fixture
def inbox(account, dovecot_source):
    msgs = small_corpus(21, 240, ("INBOX",))
    src = account(dovecot_source)
    seed_imap(src.client(), msgs, "/")
    return src, msgs


def _to_mbox(src: Any, archive: Path, state: Path) -> Job:
    job = Job.between(src, f"mbox:{archive}", state)
    return job


def test_mbox_disk_full_is_one_line_and_a_rerun_with_room_finishes(inbox, tmp_path):
    src, msgs = inbox
    with tmpfs(tmp_path / "disk", "128k") as disk:
        archive = disk / "INBOX.mbox"
        job = _to_mbox(src, archive, tmp_path / "j.sqlite")
        full = job.run("--workers", "1")
        assert full.returncode == 1, full.stderr
        line = _one_error_line(full.stderr, "No space left on device", str(archive))
        print(f"\ndisk full: {line}")
        # nothing half-written counts: every record in the file is a whole message
        partial = _archive_bodies(archive)
        assert sum(partial.values()) < len(msgs)
        assert not partial - Counter(m.data for m in msgs)
        _remount(disk, "size=4m")
        again = job.run("--workers", "1")
        assert again.returncode == 0, again.stderr
        assert _archive_bodies(archive) == Counter(m.data for m in msgs)


def test_mbox_file_size_limit_is_one_line_and_nothing_is_lost(account, dovecot_source, tmp_path):
    """RLIMIT_FSIZE: the write fails with EFBIG (Python ignores SIGXFSZ). Messages of 10 kB, so
    that the archive reaches the limit long before the journal does."""
    msgs = [
        Msg("INBOX", make_message(21_000_000 + i, size=10_000), (), message_date(i))
        for i in range(150)
    ]
    src = account(dovecot_source)
    seed_imap(src.client(), msgs, "/")
    archive = tmp_path / "a" / "INBOX.mbox"
    job = _to_mbox(src, archive, tmp_path / "j.sqlite")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, 600_000))

    full = job.run("--workers", "1", preexec_fn=limit)
    assert full.returncode == 1, full.stderr
    line = _one_error_line(full.stderr, "File too large", str(archive))
    print(f"\nfile size limit: {line}")
    assert os.path.getsize(archive) <= 600_000
    partial = _archive_bodies(archive)
    assert 0 < sum(partial.values()) < len(msgs)
    again = job.run("--workers", "1")
    assert again.returncode == 0, again.stderr
    assert _archive_bodies(archive) == Counter(m.data for m in msgs)


def test_journal_in_a_read_only_directory_is_one_line_exit_2(
    inbox, account, dovecot_target, tmp_path
):
    src, msgs = inbox
    dst = account(dovecot_target)
    with tmpfs(tmp_path / "ro", "1m") as ro:
        # a new journal where nothing can be written
        _remount(ro, "ro")
        job = Job.between(src, dst, ro / "j.sqlite")
        result = job.run()
        assert result.returncode == 2, result.stderr
        line = _one_error_line(result.stderr, "cannot create the journal", "--state")
        print(f"\nread-only journal directory: {line}")
        assert snapshot_imap(dst.client()).get("INBOX") == []  # nothing was copied without it
        # an existing journal whose directory became read-only since
        _remount(ro, "rw")
        assert job.run().returncode == 0
        src.client().append("INBOX", b"Subject: new\r\nMessage-ID: <new@x>\r\n\r\nnew\r\n")
        _remount(ro, "ro")
        result = job.run()
        assert result.returncode == 2, result.stderr
        line = _one_error_line(result.stderr, "journal")
        print(f"read-only existing journal: {line}")
        _remount(ro, "rw")
        assert job.run().returncode == 0
    held = snapshot_imap(dst.client())["INBOX"]
    assert len(held) == len(msgs) + 1 and len({s.body for s in held}) == len(held)


def _done(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM messages WHERE state='done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def _slow_job(src: Any, dst: Any, state: Path, proxy: FaultProxy) -> Job:
    job = Job.between(src, dst, state)
    job.target = url(dst, proxy.port)
    return job


def _wait_done(job: Job, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _done(job.state) == 0 and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_second_run_of_the_same_job_refuses_with_one_line(
    inbox, account, dovecot_target, tmp_path
):
    src, msgs = inbox
    dst = account(dovecot_target)
    with FaultProxy(dst.server.imaps_port, lifetime=120) as tp:
        tp.throttle("up", 100_000)
        job = _slow_job(src, dst, tmp_path / "j.sqlite", tp)
        first = job.start("--workers", "1")
        _wait_done(job, first)
        second = job.run()
        assert first.poll() is None, "the first run ended too soon to test anything"
        assert second.returncode == 2, second.stderr
        line = _one_error_line(second.stderr, "another migrator run is using the journal")
        print(f"\nconcurrent run: {line}")
        tp.throttle("up", None)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    assert_exactly_once(msgs, dst)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_sigterm_and_sighup_stop_like_ctrl_c(inbox, account, dovecot_target, tmp_path, sig):
    src, msgs = inbox
    dst = account(dovecot_target)
    with FaultProxy(dst.server.imaps_port, lifetime=120) as tp:
        tp.throttle("up", 100_000)
        job = _slow_job(src, dst, tmp_path / "j.sqlite", tp)
        proc = job.start("--workers", "1")
        _wait_done(job, proc)
        assert proc.poll() is None
        proc.send_signal(sig)
        started = time.monotonic()
        _, err_bytes = proc.communicate(timeout=60)
        err = err_bytes.decode()
        print(f"\n{sig.name}: exit {proc.returncode} after {time.monotonic() - started:.1f}s")
        assert proc.returncode == 130, err
        assert "interrupted" in err and "run the same command" in err, err
        assert "Traceback" not in err
        tp.throttle("up", None)
        rerun = job.run()
    assert rerun.returncode == 0, rerun.stderr
    assert_exactly_once(msgs, dst)
