"""The connection every part of the journal shares: one SQLite connection, one lock around it,
and the one way to write (a transaction) and to read."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from migrator.errors import JournalError


class JournalBase:
    """The connection of a journal; the parts of Journal (ledger, convergence, history) build on
    it. Thread-safe: workers share it through one lock."""

    def __init__(self, db: sqlite3.Connection, path: Path | None, lock_fd: int | None) -> None:
        self._db = db
        self.path = path
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()

    def close(self) -> None:
        with self._mutex:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise JournalError(f"cannot write the journal {self.path}: {exc}") from None

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    # -- identity of the job ----------------------------------------------------------------

    def bind(self, source: str, target: str) -> None:
        """Remember which job this journal belongs to (shown by `status`)."""
        with self._tx() as db:
            for key, value in (("source", source), ("target", target)):
                db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0][0] if rows else None
