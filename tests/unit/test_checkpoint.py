import os
import sqlite3
import stat
import threading
import time

import pytest

from migrator.checkpoint import Commit, Journal, lock_path
from migrator.errors import JournalError
from migrator.model import MessageRef

SRC, DST = ("Archive", "2023"), ("Archive", "2023")


def refs(*ids):
    return [MessageRef(i, 10, key=f"mid:<{i}>:10") for i in ids]


def test_created_0600_and_directory_0700(tmp_path):
    path = tmp_path / "state" / "job.sqlite"
    journal = Journal.open(path)
    journal.begin(SRC, "1", DST, refs("1"))
    journal.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    for extra in ("-wal", "-shm", ".lock"):
        p = f"{path}{extra}"
        if os.path.exists(p):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_second_run_of_the_same_job_is_refused(tmp_path):
    first = Journal.open(tmp_path / "j")
    with pytest.raises(JournalError, match="another migrator run"):
        Journal.open(tmp_path / "j")
    first.close()
    Journal.open(tmp_path / "j").close()


def test_read_only_directory_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/migrator-cannot-write-here/j"
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = str(ro / "j")
    with pytest.raises(JournalError, match="cannot create the journal"):
        Journal.open(__import__("pathlib").Path(target))


def test_pending_then_commit_and_done_ids(tmp_path):
    j = Journal.open(tmp_path / "j")
    assert j.open_folder(SRC, "7", DST) is False
    j.reconcile(SRC, "7", DST, [])
    assert j.open_folder(SRC, "7", DST) is True
    j.begin(SRC, "7", DST, refs("1", "2", "3"))
    assert j.open_folder(SRC, "7", DST) is False  # an append in doubt
    j.record(
        Commit(
            SRC,
            "7",
            DST,
            [(refs("1")[0], "9:1"), (refs("2")[0], None)],
            [(refs("3")[0], "too big")],
        )
    )
    assert j.done_ids(SRC, "7", DST) == {"1", "2"}
    assert j.open_folder(SRC, "7", DST) is True
    [failure] = j.failures()
    assert failure.error == "too big" and failure.attempts == 1
    assert j.done_keys(DST) == {"mid:<1>:10": 1, "mid:<2>:10": 1}


def test_new_validity_forgets_done_ids_but_keeps_history(tmp_path):
    j = Journal.open(tmp_path / "j")
    j.open_folder(SRC, "7", DST)
    j.begin(SRC, "7", DST, refs("1"))
    j.record(Commit(SRC, "7", DST, [(refs("1")[0], None)], []))
    assert j.open_folder(SRC, "8", DST) is False
    assert j.done_ids(SRC, "8", DST) == set()
    assert j.done_keys(DST) == {}


def test_in_memory_copy_leaves_the_file_alone(tmp_path):
    j = Journal.open(tmp_path / "j")
    j.open_folder(SRC, "7", DST)
    j.close()
    before = (tmp_path / "j").read_bytes()
    mem = Journal.in_memory(tmp_path / "j")
    assert mem.open_folder(SRC, "7", DST) is False
    mem.begin(SRC, "7", DST, refs("1"))
    mem.close()
    assert (tmp_path / "j").read_bytes() == before


def test_deleted_marking(tmp_path):
    j = Journal.open(tmp_path / "j")
    j.open_folder(SRC, "7", DST)
    j.begin(SRC, "7", DST, refs("1", "2"))
    j.record(Commit(SRC, "7", DST, [(refs("1")[0], None)], [(refs("2")[0], "no")]))
    assert j.undeleted(SRC, "7") == ["1"]
    j.mark_deleted(SRC, "7", ["1"])
    assert j.undeleted(SRC, "7") == []


def test_batches_larger_than_one_statement(tmp_path):
    """A batch's rows go in multi-row statements of a bounded size: every row of a batch several
    statements long is written, updated and marked, once each."""
    j = Journal.open(tmp_path / "j")
    j.open_folder(SRC, "7", DST)
    ids = [str(n) for n in range(1, 451)]
    batch = refs(*ids)
    j.reconcile(SRC, "7", DST, refs(*[str(n) for n in range(1001, 1201)]))
    j.begin(SRC, "7", DST, batch)
    assert len(j.pending(SRC, "7", DST)) == 450
    j.record(
        Commit(
            SRC, "7", DST, [(r, f"d{r.id}") for r in batch[:400]], [(r, "no") for r in batch[400:]]
        )
    )
    assert j.pending(SRC, "7", DST) == []
    assert j.done_ids(SRC, "7", DST) == set(ids[:400]) | {str(n) for n in range(1001, 1201)}
    answers = dict(j._query("SELECT src_id, dst_id FROM messages WHERE state='done'"))
    assert answers == {i: f"d{i}" for i in ids[:400]}
    assert len(j.failures()) == 50
    j.begin(SRC, "7", DST, batch[400:])  # retried: 'pending' again, attempts kept
    j.record(Commit(SRC, "7", DST, [], [(r, "still no") for r in batch[400:]]))
    assert {f.attempts for f in j.failures()} == {2}
    j.mark_deleted(SRC, "7", ids[:350])
    assert sorted(j.undeleted(SRC, "7"), key=int) == ids[350:400] + [
        str(n) for n in range(1001, 1201)
    ]


def test_a_database_of_another_program_is_refused_and_left_as_it_was(tmp_path):
    import hashlib
    import sqlite3

    other = tmp_path / "places.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
        db.execute("INSERT INTO moz_places(url) VALUES ('https://example.org')")
    db.close()
    before = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(JournalError, match=r"not a migrator journal \(it holds the tables moz_pl"):
        Journal.open(other)
    with pytest.raises(JournalError, match="not a migrator journal"):
        Journal.in_memory(copy_of=other)
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    assert not (tmp_path / "places.sqlite-wal").exists()
    # a journal of ours, and an empty file, still open
    Journal.open(tmp_path / "ours.sqlite").close()
    Journal.open(tmp_path / "ours.sqlite").close()
    (tmp_path / "empty.sqlite").touch()
    Journal.open(tmp_path / "empty.sqlite").close()


def test_a_journal_cut_off_before_its_schema_version_was_written_still_opens(tmp_path):
    import sqlite3

    from migrator.checkpoint import _SCHEMA

    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as db:  # a kill between creating the tables and the version row
        db.executescript(_SCHEMA)
    db.close()
    journal = Journal.open(path)
    try:
        assert journal._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    finally:
        journal.close()


# -- what a batch reads from an account's journal (Journal.summary) -----------------------------


def _finished(path, status="done"):
    """A journal whose one run ended with ``status``, left unlocked."""
    journal = Journal.open(path)
    run = journal.start_run("src", "dst")
    journal.finish_run(run, status, 1, 0, 0, 10)
    journal.close()


def _digest(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_summary_of_a_finished_journal(tmp_path):
    path = tmp_path / "j.sqlite"
    _finished(path)
    summary = Journal.summary(path)
    assert summary is not None and summary.finished and summary.last_run == "done"
    assert summary.copied is None  # no batch run asked about


@pytest.mark.parametrize("status", ["running", "partial", "interrupted", "failed"])
def test_summary_of_a_journal_whose_last_run_did_not_complete(tmp_path, status):
    path = tmp_path / "j.sqlite"
    _finished(path)  # an earlier run completed; the last one counts
    _finished(path, status)
    summary = Journal.summary(path)
    assert summary is not None and summary.last_run == status and not summary.finished


def test_summary_of_a_journal_without_runs(tmp_path):
    path = tmp_path / "j.sqlite"
    Journal.open(path).close()
    summary = Journal.summary(path, "b1")
    assert summary is not None
    assert summary.last_run is None and not summary.finished and summary.copied is None


def test_summary_of_a_missing_journal_creates_nothing(tmp_path):
    path = tmp_path / "state" / "j.sqlite"
    assert Journal.summary(path) is None
    assert Journal.summary(path, "b1") is None
    assert not path.parent.exists()


def test_summary_reads_a_journal_a_run_holds_locked_and_leaves_it_locked(tmp_path):
    path = tmp_path / "j.sqlite"
    _finished(path, "partial")
    running = Journal.open(path)  # the account runs on a worker: the lock is held
    try:
        running.begin_attempt("b1")
        running.open_folder(SRC, "7", DST)
        running.begin(SRC, "7", DST, refs("1", "2"))
        running.record(Commit(SRC, "7", DST, [(r, None) for r in refs("1", "2")], []))
        run = running.start_run("src", "dst")
        running.finish_run(run, "done", 2, 0, 0, 20)
        summary = Journal.summary(path, "b1")
        assert summary is not None and summary.finished
        assert summary.copied == (2, 20)
        with pytest.raises(JournalError, match="another migrator run"):
            Journal.open(path)  # the look took nothing from the run holding it
        running.begin(SRC, "7", DST, refs("3"))  # and the run still writes
    finally:
        running.close()


def test_summary_counts_only_the_batch_run_asked_about(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path)
    journal.open_folder(SRC, "7", DST)
    journal.begin(SRC, "7", DST, refs("1"))
    journal.record(Commit(SRC, "7", DST, [(refs("1")[0], None)], []))  # before the batch
    time.sleep(0.01)
    journal.begin_attempt("b1")
    journal.begin(SRC, "7", DST, refs("2", "3"))
    journal.record(Commit(SRC, "7", DST, [(r, None) for r in refs("2", "3")], []))
    journal.close()
    summary = Journal.summary(path, "b1")
    assert summary is not None and summary.copied == (2, 20)
    other = Journal.summary(path, "b2")
    assert other is not None and other.copied is None


def test_summary_of_a_damaged_attempt_note_is_unknown_not_an_error(tmp_path):
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path)
    journal.begin_attempt("b1")
    journal.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value='{\"tag\": \"b1\"}' WHERE key='batch_attempt'")
    db.close()
    summary = Journal.summary(path, "b1")
    assert summary is not None and summary.copied is None


def test_summary_of_another_programs_database_is_none_and_leaves_it_alone(tmp_path):
    other = tmp_path / "places.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    db.close()
    before = _digest(other)
    assert Journal.summary(other, "b1") is None
    assert _digest(other) == before
    # one with a table called meta gets past the first look, and still reads as no run
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    db.close()
    before = _digest(other)
    summary = Journal.summary(other, "b1")
    assert summary is not None and not summary.finished and summary.copied is None
    assert _digest(other) == before
    (tmp_path / "text").write_text("not a database at all")
    assert Journal.summary(tmp_path / "text") is None


def test_wait_unlocked_waits_for_the_run_holding_the_lock(tmp_path):
    path = tmp_path / "state" / "j.sqlite"
    stop = threading.Event()
    started = time.monotonic()
    Journal.wait_unlocked(path, 5, stop)  # nobody holds it: at once
    assert time.monotonic() - started < 1
    assert os.path.exists(lock_path(path))
    assert stat.S_IMODE(os.stat(lock_path(path)).st_mode) == 0o600
    running = Journal.open(path)
    try:
        started = time.monotonic()
        Journal.wait_unlocked(path, 0.5, stop)  # held all along: until the timeout
        assert 0.5 <= time.monotonic() - started < 3
        threading.Timer(0.3, running.close).start()  # the run commits and lets go
        started = time.monotonic()
        Journal.wait_unlocked(path, 10, stop)
        assert 0.3 <= time.monotonic() - started < 3
        Journal.open(path).close()
    finally:
        running.close()


def test_wait_unlocked_gives_up_when_told_to_stop(tmp_path):
    path = tmp_path / "j.sqlite"
    running = Journal.open(path)
    stop = threading.Event()
    try:
        threading.Timer(0.3, stop.set).start()
        started = time.monotonic()
        Journal.wait_unlocked(path, 30, stop)
        assert time.monotonic() - started < 3
    finally:
        running.close()


def test_batch_reads_journals_only_through_the_journal():
    """batch.py names none of the journal's tables nor its lock file: what it reads of an
    account's journal comes from Journal (summary, begin_attempt, wait_unlocked)."""
    import re
    from pathlib import Path

    import migrator.batch
    from migrator.checkpoint.schema import _OWN_TABLES

    source = Path(migrator.batch.__file__).read_text()
    for table in _OWN_TABLES - {"meta"}:  # the batch's own ledger has a meta table too
        assert not re.search(rf"\b(FROM|INTO|UPDATE|JOIN)\s+{table}\b", source), table
    assert "batch_attempt" not in source and "LOCK_SUFFIX" not in source
    assert not re.search(r"""f["'][^"']*\{[^}]*\}\.lock""", source)  # no f"{journal}.lock"
