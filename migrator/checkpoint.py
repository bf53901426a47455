"""The checkpoint journal: what happened to every source message, in SQLite.

The crash promise rests on one order of events, as in mbsync: a batch is written as 'pending'
(durably) before it is appended to the target, and marked 'done' once the target has confirmed
it. After a crash, 'pending' rows are the only doubt, and the engine settles it by looking in the
target. A folder is 'reconciled' once the engine has compared it with the target's contents; until
then (first run, lost journal, new UIDVALIDITY) nothing is appended without that comparison.

Rows are keyed by (source folder, UIDVALIDITY, source id, target folder). Folder paths are stored
as JSON lists of levels, so no delimiter can make two names collide. The journal never holds a
secret: endpoints are stored as the user wrote them, and URLs cannot carry a password.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from migrator.errors import JournalError
from migrator.model import UNCOPIED_FLAGS, FolderPath, MessageRef
from migrator.scrub import scrub

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS folders (
    src_folder TEXT NOT NULL,
    dst_folder TEXT NOT NULL,
    validity TEXT NOT NULL,
    reconciled INTEGER NOT NULL DEFAULT 0,
    -- messages the last run selected in the source folder (status: pending = selected - settled)
    selected INTEGER,
    -- what the last pass changed on messages copied before: flags updated, moved, removed
    flagged INTEGER NOT NULL DEFAULT 0,
    moved INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0,
    -- where the next pass's flag listing may start (a CONDSTORE mod-sequence), under validity
    flag_mark TEXT,
    PRIMARY KEY (src_folder, dst_folder)
);
CREATE TABLE IF NOT EXISTS messages (
    src_folder TEXT NOT NULL,
    validity TEXT NOT NULL,
    src_id TEXT NOT NULL,
    dst_folder TEXT NOT NULL,
    dst_id TEXT,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'skipped', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    deleted INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    -- the source's flags as copied or last applied to the target: the common base of the
    -- three-way comparison (NULL: not known, journals of version 1)
    flags TEXT,
    PRIMARY KEY (src_folder, validity, src_id, dst_folder)
);
CREATE INDEX IF NOT EXISTS messages_by_target ON messages (dst_folder, state);
CREATE TABLE IF NOT EXISTS targets (dst_folder TEXT PRIMARY KEY, resume_point TEXT);
-- the target folder chosen for each source folder on first use, kept on later passes
CREATE TABLE IF NOT EXISTS mapping (src_folder TEXT PRIMARY KEY, dst_folder TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    copied INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
"""

DONE_STATES = ("done", "skipped")


#: Rows written by one statement. Python's executemany steps SQLite once a row, letting go of the
#: GIL each time, and in a busy process each step then waits its turn to get it back from the
#: threads reading and converting messages. At most ten bound values a row: 90 rows stay within
#: 999, the limit of SQLite before 3.32.
_ROWS_PER_STATEMENT = 90

T = TypeVar("T")


def _statements(rows: Sequence[T]) -> Iterator[Sequence[T]]:
    """``rows`` in pieces of at most _ROWS_PER_STATEMENT, one piece a statement."""
    for start in range(0, len(rows), _ROWS_PER_STATEMENT):
        yield rows[start : start + _ROWS_PER_STATEMENT]


def _insert_rows(
    db: sqlite3.Connection, head: str, row: str, rows: Sequence[tuple[object, ...]], tail: str = ""
) -> None:
    """``head VALUES row, row, ... tail`` for all ``rows``, in as few statements as hold them."""
    for piece in _statements(rows):
        db.execute(
            f"{head} VALUES {', '.join([row] * len(piece))} {tail}",
            [value for values in piece for value in values],
        )


def folder_text(path: FolderPath) -> str:
    return json.dumps(list(path), ensure_ascii=False)


def folder_path(text: str) -> FolderPath:
    return tuple(json.loads(text))


def flags_text(flags: Iterable[str]) -> str:
    """Flags as the journal keeps them: sorted, space-separated (IMAP flags hold no space)."""
    return " ".join(sorted(set(flags) - UNCOPIED_FLAGS))


def parse_flags_text(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(text.split())


@dataclass(frozen=True)
class Copied:
    """A message the journal says the target holds: copied by this job ('done') or found there
    ('skipped'), with the flags last applied to the target (None: not known)."""

    src_id: str
    dst_id: str | None
    key: str
    size: int
    flags: frozenset[str] | None
    state: str
    #: Removed from the source by --delete-source (gone on purpose: not to mirror).
    deleted: bool = False


@dataclass(frozen=True)
class FolderCounts:
    src_folder: FolderPath
    dst_folder: FolderPath
    done: int
    skipped: int
    failed: int
    pending: int
    #: What the last pass changed in copies made before (see migrator.converge).
    flagged: int = 0
    moved: int = 0
    removed: int = 0


@dataclass(frozen=True)
class Failure:
    src_folder: FolderPath
    src_id: str
    error: str
    attempts: int


@dataclass(frozen=True)
class Commit:
    """The target's answers for one batch: what it took (with its ids), what it refused (with
    the reason), the folder's committed end, and the rate (bytes a second) it took the batch at,
    when measured (see append_rate())."""

    src: FolderPath
    validity: str
    dst: FolderPath
    done: Sequence[tuple[MessageRef, str | None]]
    failed: Sequence[tuple[MessageRef, str]]
    resume_point: str | None = None
    append_rate: float | None = None


#: The tables _SCHEMA creates: a database holding only these is a journal whose creation may
#: have been cut off before its schema version was written.
_OWN_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))


def _foreign_tables(db: sqlite3.Connection) -> str | None:
    """None for an empty database or a migrator journal; else a few of the tables it holds, for
    the message that refuses it (its tables are never added to another program's database)."""
    tables = [
        row[0]
        for row in db.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
    ]
    if not tables or set(tables) <= _OWN_TABLES:  # empty, or ours (perhaps cut off mid-creation)
        return None
    if "meta" in tables:
        try:
            ours = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        except sqlite3.Error:
            ours = None
        if ours is not None:
            return None
    shown = ", ".join(tables[:3]) + (f" and {len(tables) - 3} more" if len(tables) > 3 else "")
    return f"the tables {shown}"


class Journal:
    """One journal per (source, target) pair; thread-safe (workers share it through a lock)."""

    def __init__(self, db: sqlite3.Connection, path: Path | None, lock_fd: int | None) -> None:
        self._db = db
        self.path = path
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (creating, mode 0600) and lock the journal; a second run of the job is refused."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            lock_fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            verb = "open" if path.exists() else "create"
            raise JournalError(
                f"cannot {verb} the journal {path}: {exc.strerror}; choose another with --state"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise JournalError(
                f"another migrator run is using the journal {path}; wait for it to finish"
            ) from None
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            if (foreign := _foreign_tables(db)) is not None:
                db.close()
                raise JournalError(
                    f"{path} is an SQLite database but not a migrator journal (it holds "
                    f"{foreign}); nothing was written to it: choose another file with --state"
                )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=10000")
            journal = cls(db, path, lock_fd)
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
        if (foreign := _foreign_tables(self._db)) is not None:
            raise JournalError(f"{self.path or 'the journal'} is not a migrator journal: {foreign}")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None and int(row[0]) > SCHEMA_VERSION:
            raise JournalError(
                f"the journal {self.path} was written by a newer migrator; upgrade migrator"
            )
        if row is not None and int(row[0]) == SCHEMA_VERSION:
            return
        # One transaction: a crash in the middle leaves the journal as it was.
        with self._tx() as db:
            if row is not None and int(row[0]) < 2:
                self._to_version_2()
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def _to_version_2(self) -> None:
        """Version 1 kept no folder mapping: each source folder keeps the target folder that holds
        most of what was copied from it (two, after the special-use match changed, on Cyrus)."""
        for table, column in (
            ("messages", "flags TEXT"),
            ("folders", "flagged INTEGER NOT NULL DEFAULT 0"),
            ("folders", "moved INTEGER NOT NULL DEFAULT 0"),
            ("folders", "removed INTEGER NOT NULL DEFAULT 0"),
            ("folders", "flag_mark TEXT"),
        ):
            self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        self._db.execute(
            "INSERT OR IGNORE INTO mapping(src_folder, dst_folder) "
            "SELECT src_folder, dst_folder FROM messages WHERE state IN ('done', 'skipped') "
            "GROUP BY src_folder, dst_folder ORDER BY count(*) DESC"
        )

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

    # -- runs ------------------------------------------------------------------------------

    def start_run(self, source: str, target: str) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs(started, status, source, target) VALUES (?, 'running', ?, ?)",
                (time.time(), source, target),
            )
            return int(cur.lastrowid or 0)

    def finish_run(
        self, run_id: int, status: str, copied: int, skipped: int, failed: int, nbytes: int
    ) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET ended=?, status=?, copied=?, skipped=?, failed=?, bytes=? "
                "WHERE id=?",
                (time.time(), status, copied, skipped, failed, nbytes, run_id),
            )

    def runs(self) -> list[tuple]:
        return self._query(
            "SELECT id, started, ended, status, copied, skipped, failed, bytes FROM runs "
            "ORDER BY id"
        )

    # -- folders ---------------------------------------------------------------------------

    def open_folder(self, src: FolderPath, validity: str, dst: FolderPath) -> bool:
        """Record the folder's current validity; True when it is reconciled with the target
        (known, same validity, and no append left in doubt)."""
        s, d = folder_text(src), folder_text(dst)
        with self._tx() as db:
            row = db.execute(
                "SELECT validity, reconciled FROM folders WHERE src_folder=? AND dst_folder=?",
                (s, d),
            ).fetchone()
            if row is None or row[0] != validity:
                db.execute(
                    "INSERT OR REPLACE INTO folders(src_folder, dst_folder, validity, reconciled) "
                    "VALUES (?, ?, ?, 0)",
                    (s, d, validity),
                )
                return False
            if not row[1]:
                return False
            pending = db.execute(
                "SELECT 1 FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
                "AND state='pending' LIMIT 1",
                (s, validity, d),
            ).fetchone()
            return pending is None

    def folder_targets(self) -> dict[FolderPath, FolderPath]:
        """Source folder -> the target folder recorded for it on first use."""
        rows = self._query("SELECT src_folder, dst_folder FROM mapping")
        return {folder_path(s): folder_path(d) for s, d in rows}

    def record_targets(self, pairs: Iterable[tuple[FolderPath, FolderPath]]) -> None:
        """Record (or, for a mapping the user changed with --map, replace) each source folder's
        target folder."""
        with self._tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO mapping(src_folder, dst_folder) VALUES (?, ?)",
                [(folder_text(s), folder_text(d)) for s, d in pairs],
            )

    def set_selected(self, src: FolderPath, dst: FolderPath, count: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE folders SET selected=? WHERE src_folder=? AND dst_folder=?",
                (count, folder_text(src), folder_text(dst)),
            )

    def done_ids(self, src: FolderPath, validity: str, dst: FolderPath) -> set[str]:
        rows = self._query(
            "SELECT src_id FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
            "AND state IN ('done', 'skipped')",
            (folder_text(src), validity, folder_text(dst)),
        )
        return {r[0] for r in rows}

    def failed_reasons(self, src: FolderPath, validity: str, dst: FolderPath) -> dict[str, str]:
        """Source id -> recorded reason of the messages that failed (a size failure names the
        limit, so that a rerun can leave them alone until it changes)."""
        rows = self._query(
            "SELECT src_id, error FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
            "AND state='failed'",
            (folder_text(src), validity, folder_text(dst)),
        )
        return {r[0]: r[1] or "" for r in rows}

    def done_keys(self, dst: FolderPath) -> Counter[str]:
        """Identity keys of the messages this journal put (or found) in ``dst`` under the
        source folders' current validities: the target copies already accounted for."""
        rows = self._query(
            "SELECT m.key, count(*) FROM messages m JOIN folders f "
            "ON m.src_folder=f.src_folder AND m.dst_folder=f.dst_folder AND m.validity=f.validity "
            "WHERE m.dst_folder=? AND m.state IN ('done', 'skipped') GROUP BY m.key",
            (folder_text(dst),),
        )
        return Counter({key: count for key, count in rows})

    def reconcile(
        self, src: FolderPath, validity: str, dst: FolderPath, present: Sequence[MessageRef]
    ) -> None:
        """Record messages found already in the target, and mark the folder reconciled: both in
        one transaction, so a crash in between leaves the folder to be compared again."""
        s, d, now = folder_text(src), folder_text(dst), time.time()
        with self._tx() as db:
            _insert_rows(
                db,
                "INSERT OR REPLACE INTO messages(src_folder, validity, src_id, dst_folder, key, "
                "size, state, updated, flags)",
                "(?, ?, ?, ?, ?, ?, 'skipped', ?, ?)",
                [(s, validity, r.id, d, r.key, r.size, now, flags_text(r.flags)) for r in present],
            )
            db.execute(
                "UPDATE folders SET reconciled=1 "
                "WHERE src_folder=? AND dst_folder=? AND validity=?",
                (s, d, validity),
            )

    # -- messages --------------------------------------------------------------------------

    def begin(
        self,
        src: FolderPath,
        validity: str,
        dst: FolderPath,
        refs: Iterable[MessageRef],
        after: Commit | None = None,
    ) -> None:
        """Durably note the intent to append these messages, before appending them; ``after``,
        the answers for the batch before, go in the same transaction (one fsync, not two)."""
        s, d, now = folder_text(src), folder_text(dst), time.time()
        with self._tx() as db:
            if after is not None:
                self._record(db, after, now)
            self._pending(db, s, validity, d, refs, now)

    @staticmethod
    def _pending(
        db: sqlite3.Connection,
        s: str,
        validity: str,
        d: str,
        refs: Iterable[MessageRef],
        now: float,
    ) -> None:
        _insert_rows(
            db,
            "INSERT INTO messages(src_folder, validity, src_id, dst_folder, key, size, state, "
            "updated, flags)",
            "(?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
            [(s, validity, r.id, d, r.key, r.size, now, flags_text(r.flags)) for r in refs],
            "ON CONFLICT DO UPDATE SET state='pending', key=excluded.key, "
            "size=excluded.size, updated=excluded.updated, flags=excluded.flags",
        )

    def record(self, answers: Commit) -> None:
        """Record the target's answers for one batch, in one transaction (or with the next
        batch's 'pending' rows: see begin's ``after``)."""
        with self._tx() as db:
            self._record(db, answers, time.time())

    @staticmethod
    def _record(db: sqlite3.Connection, answers: Commit, now: float) -> None:
        s, d, validity = folder_text(answers.src), folder_text(answers.dst), answers.validity
        done, failed = answers.done, answers.failed
        resume_point, append_rate = answers.resume_point, answers.append_rate
        # The rows begin() wrote are there to update; writing them whole (an upsert) says so in
        # one statement for the batch.
        _insert_rows(
            db,
            "INSERT INTO messages(src_folder, validity, src_id, dst_folder, key, size, state, "
            "dst_id, updated, flags)",
            "(?, ?, ?, ?, ?, ?, 'done', ?, ?, ?)",
            [
                (s, validity, r.id, d, r.key, r.size, dst_id, now, flags_text(r.flags))
                for r, dst_id in done
            ],
            "ON CONFLICT DO UPDATE SET state='done', dst_id=excluded.dst_id, error=NULL, "
            "updated=excluded.updated, flags=excluded.flags",
        )
        _insert_rows(
            db,
            "INSERT INTO messages(src_folder, validity, src_id, dst_folder, key, size, state, "
            "attempts, error, updated)",
            "(?, ?, ?, ?, ?, ?, 'failed', 1, ?, ?)",
            [(s, validity, r.id, d, r.key, r.size, scrub(error), now) for r, error in failed],
            "ON CONFLICT DO UPDATE SET state='failed', attempts=attempts+1, "
            "error=excluded.error, updated=excluded.updated",
        )
        if resume_point is not None:
            db.execute(
                "INSERT OR REPLACE INTO targets(dst_folder, resume_point) VALUES (?, ?)",
                (d, resume_point),
            )
        if append_rate is not None:
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('append_rate', ?)",
                (f"{append_rate:.0f}",),
            )

    def append_rate(self) -> float | None:
        """Bytes a second the target last took an append batch at (this run's or an earlier
        one's): how fast bytes left in flight by a crash can still reach it."""
        value = self.meta("append_rate")
        try:
            return float(value) if value else None
        except ValueError:
            return None

    def pending(self, src: FolderPath, validity: str, dst: FolderPath) -> list[tuple[str, int]]:
        """(key, size) of the appends begun but never confirmed: left in doubt by a crash or a
        lost connection."""
        rows = self._query(
            "SELECT key, size FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
            "AND state='pending'",
            (folder_text(src), validity, folder_text(dst)),
        )
        return [(key, int(size)) for key, size in rows]

    def resume_point(self, dst: FolderPath) -> str | None:
        rows = self._query(
            "SELECT resume_point FROM targets WHERE dst_folder=?", (folder_text(dst),)
        )
        return rows[0][0] if rows else None

    def undeleted(self, src: FolderPath, validity: str) -> list[str]:
        """Source ids the target holds (journal-confirmed) but not yet removed from the source."""
        rows = self._query(
            "SELECT DISTINCT src_id FROM messages WHERE src_folder=? AND validity=? "
            "AND state IN ('done', 'skipped') AND deleted=0",
            (folder_text(src), validity),
        )
        return [r[0] for r in rows]

    def mark_deleted(self, src: FolderPath, validity: str, ids: Iterable[str]) -> None:
        s = folder_text(src)
        with self._tx() as db:
            for piece in _statements(list(ids)):
                db.execute(
                    "UPDATE messages SET deleted=1 WHERE src_folder=? AND validity=? "
                    f"AND src_id IN ({', '.join('?' * len(piece))})",
                    [s, validity, *piece],
                )

    # -- later passes ----------------------------------------------------------------------

    def copied(
        self,
        src: FolderPath,
        validity: str,
        dst: FolderPath,
        only: Iterable[str] | None = None,
    ) -> list[Copied]:
        """The messages of this source folder (under ``validity``) that the target holds; with
        ``only``, those of these source ids."""
        head = (
            "SELECT src_id, dst_id, key, size, flags, state, deleted FROM messages "
            "WHERE src_folder=? AND validity=? AND dst_folder=? AND state IN ('done', 'skipped')"
        )
        args = [folder_text(src), validity, folder_text(dst)]
        if only is None:
            rows = self._query(head, args)
        else:
            rows = []
            for piece in _statements(sorted(only)):
                rows += self._query(
                    f"{head} AND src_id IN ({', '.join('?' * len(piece))})", [*args, *piece]
                )
        return [
            Copied(i, t, k, int(n), parse_flags_text(f), st, bool(gone))
            for i, t, k, n, f, st, gone in rows
        ]

    def folder_validity(self, src: FolderPath, dst: FolderPath) -> str | None:
        """The validity the folder pair was last copied under."""
        rows = self._query(
            "SELECT validity FROM folders WHERE src_folder=? AND dst_folder=?",
            (folder_text(src), folder_text(dst)),
        )
        return rows[0][0] if rows else None

    def count_done(self, src: FolderPath, validity: str, dst: FolderPath) -> int:
        """How many messages of the folder this job copied (not found already there)."""
        rows = self._query(
            "SELECT count(*) FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
            "AND state='done'",
            (folder_text(src), validity, folder_text(dst)),
        )
        return int(rows[0][0])

    def set_flags(
        self,
        src: FolderPath,
        validity: str,
        dst: FolderPath,
        flags: Sequence[tuple[str, frozenset[str]]],
        ids: Sequence[tuple[str, str]] = (),
    ) -> None:
        """The new common base (source id -> flags now on both sides), and target ids found by
        key for copies whose append did not tell them (source id -> target id)."""
        with self._tx() as db:
            self._set_flags(db, folder_text(src), validity, folder_text(dst), flags, ids)

    @staticmethod
    def _set_flags(
        db: sqlite3.Connection,
        s: str,
        validity: str,
        d: str,
        flags: Sequence[tuple[str, frozenset[str]]],
        ids: Sequence[tuple[str, str]],
    ) -> None:
        db.executemany(
            "UPDATE messages SET flags=? WHERE src_folder=? AND validity=? AND dst_folder=? "
            "AND src_id=?",
            [(flags_text(f), s, validity, d, i) for i, f in flags],
        )
        db.executemany(
            "UPDATE messages SET dst_id=? WHERE src_folder=? AND validity=? AND dst_folder=? "
            "AND src_id=?",
            [(t, s, validity, d, i) for i, t in ids],
        )

    def flags_followed(
        self,
        src: FolderPath,
        validity: str,
        dst: FolderPath,
        flags: Sequence[tuple[str, frozenset[str]]],
        ids: Sequence[tuple[str, str]],
        mark: str | None,
        flagged: int,
    ) -> None:
        """A folder's flags followed: the new bases and found ids (see set_flags), where the
        next listing may start (see FlagListing.mark), and how many messages changed (for
        `status`), in one transaction."""
        s, d = folder_text(src), folder_text(dst)
        with self._tx() as db:
            self._set_flags(db, s, validity, d, flags, ids)
            db.execute(
                "UPDATE folders SET flag_mark=?, flagged=? "
                "WHERE src_folder=? AND dst_folder=? AND validity=?",
                (mark, flagged, s, d, validity),
            )

    def forget(self, src: FolderPath, validity: str, dst: FolderPath, ids: Sequence[str]) -> None:
        """Drop the rows of messages removed from the target (or moved out of this folder)."""
        s, d = folder_text(src), folder_text(dst)
        with self._tx() as db:
            for piece in _statements(list(ids)):
                db.execute(
                    "DELETE FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
                    f"AND src_id IN ({', '.join('?' * len(piece))})",
                    [s, validity, d, *piece],
                )

    def begin_many(
        self, batches: Sequence[tuple[FolderPath, str, FolderPath, Sequence[MessageRef]]]
    ) -> None:
        """begin() for several folders, in one transaction (the intent of a pass's moves)."""
        now = time.time()
        with self._tx() as db:
            for src, validity, dst, refs in batches:
                self._pending(db, folder_text(src), validity, folder_text(dst), refs, now)

    def moved(
        self, moves: Sequence[tuple[tuple[FolderPath, str, FolderPath], Sequence[str], Commit]]
    ) -> None:
        """Moves confirmed by the target: for each, the old rows ((source folder, validity,
        target folder), source ids) go and the new folder's rows (begun 'pending' before the
        move) are done; all in one transaction."""
        now = time.time()
        with self._tx() as db:
            for (src, validity, dst), ids, into in moves:
                s, d = folder_text(src), folder_text(dst)
                for piece in _statements(list(ids)):
                    db.execute(
                        "DELETE FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
                        f"AND src_id IN ({', '.join('?' * len(piece))})",
                        [s, validity, d, *piece],
                    )
                self._record(db, into, now)

    def flag_mark(self, src: FolderPath, validity: str, dst: FolderPath) -> str | None:
        """Where the folder's next flag listing may start (see FlagListing.mark)."""
        rows = self._query(
            "SELECT flag_mark FROM folders WHERE src_folder=? AND dst_folder=? AND validity=?",
            (folder_text(src), folder_text(dst), validity),
        )
        return rows[0][0] if rows else None

    def set_changes(self, changes: Sequence[tuple[FolderPath, FolderPath, int, int]]) -> None:
        """What a sync pass moved into and removed from each folder (for `status`), at once."""
        with self._tx() as db:
            db.executemany(
                "UPDATE folders SET moved=?, removed=? WHERE src_folder=? AND dst_folder=?",
                [
                    (moved, removed, folder_text(s), folder_text(d))
                    for s, d, moved, removed in changes
                ],
            )

    # -- reporting -------------------------------------------------------------------------

    def counts(self) -> list[FolderCounts]:
        """Per folder pair, under the current validity: settled rows, and what remains of the
        selection the last run saw (rows begun but unconfirmed, and messages not reached yet)."""
        rows = self._query(
            "SELECT f.src_folder, f.dst_folder, f.selected, "
            "coalesce(sum(m.state='done'), 0), coalesce(sum(m.state='skipped'), 0), "
            "coalesce(sum(m.state='failed'), 0), coalesce(sum(m.state='pending'), 0), "
            "f.flagged, f.moved, f.removed "
            "FROM folders f LEFT JOIN messages m "
            "ON m.src_folder=f.src_folder AND m.dst_folder=f.dst_folder AND m.validity=f.validity "
            "GROUP BY f.src_folder, f.dst_folder ORDER BY f.src_folder"
        )
        result = []
        for s, d, selected, done, skipped, failed, pending, *last in rows:
            if selected is not None:
                pending = max(pending, selected - done - skipped - failed)
            result.append(
                FolderCounts(folder_path(s), folder_path(d), done, skipped, failed, pending, *last)
            )
        return result

    def failures(self) -> list[Failure]:
        rows = self._query(
            "SELECT m.src_folder, m.src_id, m.error, m.attempts FROM messages m JOIN folders f "
            "ON m.src_folder=f.src_folder AND m.dst_folder=f.dst_folder AND m.validity=f.validity "
            "WHERE m.state='failed' ORDER BY m.src_folder, m.src_id"
        )
        return [Failure(folder_path(s), i, e or "", a) for s, i, e, a in rows]

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
                timeout=5,
                check_same_thread=False,
                isolation_level=None,
            )
            db.execute("PRAGMA query_only=1")
            db.execute("SELECT 1 FROM meta LIMIT 1").fetchall()  # a journal, not another file
        except sqlite3.Error:
            return None
        return cls(db, path, None)

    @staticmethod
    def wait_unlocked(path: Path, timeout: float, stop: threading.Event) -> None:
        """Wait until no process holds the journal's lock (a run that was told to stop and is
        committing its last batch), for at most ``timeout`` seconds or until ``stop``; open()
        then says if it is still held."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        deadline = time.monotonic() + timeout
        while True:
            fd = os.open(f"{path}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
            except OSError:
                pass
            finally:
                os.close(fd)
            if time.monotonic() >= deadline or stop.wait(0.2):
                return

    def last_run_done(self) -> bool:
        """True when the last run recorded here completed (status 'done')."""
        try:
            rows = self._query("SELECT status FROM runs ORDER BY id DESC LIMIT 1")
        except sqlite3.Error:
            return False
        return bool(rows) and rows[0][0] == "done"

    def begin_attempt(self, tag: str) -> None:
        """Note that a batch run (``tag``) starts, or starts again (its worker died), to copy
        this account: the first attempt of a tag sets the time its copies are counted from; every
        attempt adds the appends left in doubt (journaled 'pending'), which, should the target
        turn out to hold them, reached it in this batch run (see copied_in())."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key='batch_attempt'").fetchone()
            attempt = json.loads(row[0]) if row else {}
            if attempt.get("tag") != tag:
                attempt = {"tag": tag, "since": time.time(), "doubt": []}
            doubt = {tuple(r) for r in attempt["doubt"]}
            doubt.update(
                db.execute(
                    "SELECT src_folder, validity, src_id, dst_folder FROM messages "
                    "WHERE state='pending'"
                ).fetchall()
            )
            attempt["doubt"] = sorted(doubt)
            db.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('batch_attempt', ?)",
                (json.dumps(attempt),),
            )

    def copied_in(self, tag: str) -> tuple[int, int] | None:
        """(messages, bytes) that reached the target during batch run ``tag``, all its attempts
        together: confirmed since its first attempt began, plus the appends in doubt at an
        attempt's start that the target turned out to hold. None: that run never began here."""
        rows = self._query("SELECT value FROM meta WHERE key='batch_attempt'")
        attempt = json.loads(rows[0][0]) if rows else {}
        if attempt.get("tag") != tag:
            return None
        done = self._query(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages "
            "WHERE state='done' AND updated >= ?",
            (float(attempt["since"]),),
        )[0]
        count, nbytes = int(done[0]), int(done[1])
        for piece in _statements(attempt["doubt"]):
            found = self._query(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE state='skipped' "
                "AND (src_folder, validity, src_id, dst_folder) IN "
                f"(VALUES {', '.join(['(?, ?, ?, ?)'] * len(piece))})",
                [value for key in piece for value in key],
            )[0]
            count, nbytes = count + int(found[0]), nbytes + int(found[1])
        return count, nbytes
