"""Journal: the parts of the journal on one connection, and the ways to open it (locked for a run,
in memory for a dry run, read-only and unlocked for a batch's client)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from pathlib import Path

from migrator.checkpoint import schema
from migrator.checkpoint.convergence import ConvergenceState
from migrator.checkpoint.history import RunHistory
from migrator.checkpoint.ledger import CopyLedger
from migrator.checkpoint.records import JournalSummary
from migrator.errors import JournalError

#: Beside the journal ``PATH``, the file ``PATH.lock`` whose flock keeps a second run off it.
LOCK_SUFFIX = ".lock"
#: The journal and its lock file are the user's alone (they name accounts and folders), and so
#: is the directory they are created in.
_FILE_MODE = 0o600
_DIR_MODE = 0o700
#: How often wait_unlocked() tries the lock again, in seconds: short beside the time a stopping
#: run takes to commit its last batch.
_LOCK_POLL = 0.2
#: How long a write waits for another connection's (a batch client's read), in milliseconds.
_BUSY_TIMEOUT_MS = 10000
#: How long a read-only look (peek) waits for the writer, in seconds.
_PEEK_TIMEOUT = 5


def lock_path(path: Path) -> str:
    """The lock file of the journal at ``path``."""
    return f"{path}{LOCK_SUFFIX}"


def _open_lock_file(path: Path) -> int:
    """The journal's lock file, opened (created, with its directory, where missing)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
    return os.open(lock_path(path), os.O_CREAT | os.O_RDWR, _FILE_MODE)


def _lock(path: Path) -> int:
    """Create the journal where missing (0600, with its directory) and take its lock, held
    through the returned descriptor: a second run of the job is refused."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=_DIR_MODE)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, _FILE_MODE))
        lock_fd = _open_lock_file(path)
    except OSError as exc:
        verb = "open" if path.exists() else "create"
        raise JournalError(
            f"cannot {verb} the journal {path}: {exc.strerror}; choose another with --state"
        ) from None
    if not _try_lock(lock_fd):
        os.close(lock_fd)
        raise JournalError(
            f"another migrator run is using the journal {path}; wait for it to finish"
        )
    return lock_fd


def _try_lock(fd: int) -> bool:
    """Take the exclusive lock on ``fd`` if no process holds it (never waits)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _connect(path: Path) -> sqlite3.Connection:
    """The journal's connection for a run: refused for another program's database (nothing is
    written to it), then durable (WAL, fsync on every commit)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    if (foreign := schema.foreign_tables(db)) is not None:
        db.close()
        raise JournalError(
            f"{path} is an SQLite database but not a migrator journal (it holds "
            f"{foreign}); nothing was written to it: choose another file with --state"
        )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    return db


class Journal(ConvergenceState, CopyLedger, RunHistory):
    """One journal per (source, target) pair; thread-safe (workers share it through a lock).

    The copy ledger (ledger.py), what later passes keep (convergence.py) and the history of
    runs (history.py) share one connection (base.py); the tables are in schema.py.
    """

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating, mode 0600) and lock the journal; a second run of the job is refused."""
        lock_fd = _lock(path)
        try:
            journal = cls(_connect(path), path, lock_fd)
            journal._migrate()
        except sqlite3.Error as exc:
            os.close(lock_fd)
            raise JournalError(f"cannot use the journal {path}: {exc}") from None
        except JournalError:
            os.close(lock_fd)
            raise
        return journal

    @classmethod
    def in_memory(cls, copy_of: Path | None = None) -> Journal:
        """A journal that writes nothing to disk (dry runs): empty, or a copy of ``copy_of``."""
        db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        if copy_of is not None and copy_of.exists():
            try:
                source = sqlite3.connect(f"file:{copy_of}?mode=ro", uri=True)
                source.backup(db)
                source.close()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot read the journal {copy_of}: {exc}") from None
        journal = cls(db, None, None)
        journal._migrate()
        return journal

    def _migrate(self) -> None:
        if (foreign := schema.foreign_tables(self._db)) is not None:
            raise JournalError(f"{self.path or 'the journal'} is not a migrator journal: {foreign}")
        schema.create(self._db)
        version = schema.stored_version(self._db)
        if version is not None and version > schema.SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} was written by a newer migrator; upgrade migrator"
            )
        if version == schema.SCHEMA_VERSION:
            return
        # One transaction: a crash in the middle leaves the journal as it was.
        with self._tx() as db:
            schema.upgrade(db, version)

    # -- one account of a batch (migrator.batch) -----------------------------------------------

    @classmethod
    def peek(cls, path: Path) -> Journal | None:
        """Open read-only, without the lock (a batch's client looking at the journal an account
        writes, or wrote, on a worker); None when there is no journal to read."""
        if not path.exists():
            return None
        try:
            db = sqlite3.connect(
                f"file:{path}?mode=ro",
                uri=True,
                timeout=_PEEK_TIMEOUT,
                check_same_thread=False,
                isolation_level=None,
            )
            db.execute("PRAGMA query_only=1")
            db.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # a journal, not another file
        except sqlite3.Error:
            return None
        return cls(db, path, None)

    @classmethod
    def summary(cls, path: Path, tag: str | None = None) -> JournalSummary | None:
        """A read-only look at the journal at ``path`` (see peek: no lock taken, nothing
        written): its last run's status and, with ``tag``, what reached the target during that
        batch run. None when there is no journal there."""
        journal = cls.peek(path)
        if journal is None:
            return None
        try:
            return journal.summarize(tag)
        finally:
            journal.close()

    @staticmethod
    def wait_unlocked(path: Path, timeout: float, stop: threading.Event) -> None:
        """Wait until no process holds the journal's lock (a run that was told to stop and is
        committing its last batch), for at most ``timeout`` seconds or until ``stop``; open()
        then says if it is still held."""
        deadline = time.monotonic() + timeout
        while True:
            fd = _open_lock_file(path)
            try:
                free = _try_lock(fd)  # closing the file lets go of the lock again
            finally:
                os.close(fd)
            if free or time.monotonic() >= deadline or stop.wait(_LOCK_POLL):
                return
