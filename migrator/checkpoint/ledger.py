"""The copy ledger: each folder pair's validity and reconciliation, each message's state
(pending, done, skipped, failed), each target folder's resume point.

The crash rule lives here: begin() writes a batch 'pending', durably, before the engine appends
it; record() (or the next begin()'s ``after``) marks it 'done' or 'failed' once the target has
answered. See docs/design.md, "The crash rule".
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from migrator.checkpoint.base import JournalBase
from migrator.checkpoint.records import Commit
from migrator.checkpoint.rows import (
    DONE_IN,
    DONE_STATES,
    flags_text,
    folder_path,
    folder_text,
    insert_rows,
    placeholders,
    statements,
)
from migrator.model import FolderPath, MessageRef
from migrator.scrub import scrub


def write_pending(
    db: sqlite3.Connection,
    s: str,
    validity: str,
    d: str,
    refs: Iterable[MessageRef],
    now: float,
) -> None:
    """The rows of appends about to be made, 'pending' (inside the caller's transaction)."""
    insert_rows(
        db,
        "INSERT INTO messages(src_folder, validity, src_id, dst_folder, key, size, state, "
        "updated, flags)",
        "(?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        [(s, validity, r.id, d, r.key, r.size, now, flags_text(r.flags)) for r in refs],
        "ON CONFLICT DO UPDATE SET state='pending', key=excluded.key, "
        "size=excluded.size, updated=excluded.updated, flags=excluded.flags",
    )


def write_answers(db: sqlite3.Connection, answers: Commit, now: float) -> None:
    """The target's answers for one batch (inside the caller's transaction)."""
    s, d, validity = folder_text(answers.src), folder_text(answers.dst), answers.validity
    # The rows begin() wrote are there to update; writing them whole (an upsert) says so in
    # one statement for the batch.
    insert_rows(
        db,
        "INSERT INTO messages(src_folder, validity, src_id, dst_folder, key, size, state, "
        "dst_id, updated, flags)",
        "(?, ?, ?, ?, ?, ?, 'done', ?, ?, ?)",
        [
            (s, validity, r.id, d, r.key, r.size, dst_id, now, flags_text(r.flags))
            for r, dst_id in answers.done
        ],
        "ON CONFLICT DO UPDATE SET state='done', dst_id=excluded.dst_id, error=NULL, "
        "updated=excluded.updated, flags=excluded.flags",
    )
    insert_rows(
        db,
        "INSERT INTO messages(src_folder, validity, src_id, dst_folder, key, size, state, "
        "attempts, error, updated)",
        "(?, ?, ?, ?, ?, ?, 'failed', 1, ?, ?)",
        [(s, validity, r.id, d, r.key, r.size, scrub(error), now) for r, error in answers.failed],
        "ON CONFLICT DO UPDATE SET state='failed', attempts=attempts+1, "
        "error=excluded.error, updated=excluded.updated",
    )
    if answers.resume_point is not None:
        db.execute(
            "INSERT OR REPLACE INTO targets(dst_folder, resume_point) VALUES (?, ?)",
            (d, answers.resume_point),
        )
    if answers.append_rate is not None:
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('append_rate', ?)",
            (f"{answers.append_rate:.0f}",),
        )


class CopyLedger(JournalBase):
    """What the engine asks and tells the journal while it copies."""

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
            f"AND state {DONE_IN}",
            (folder_text(src), validity, folder_text(dst), *DONE_STATES),
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
            f"WHERE m.dst_folder=? AND m.state {DONE_IN} GROUP BY m.key",
            (folder_text(dst), *DONE_STATES),
        )
        return Counter({key: count for key, count in rows})

    def reconcile(
        self, src: FolderPath, validity: str, dst: FolderPath, present: Sequence[MessageRef]
    ) -> None:
        """Record messages found already in the target, and mark the folder reconciled: both in
        one transaction, so a crash in between leaves the folder to be compared again."""
        s, d, now = folder_text(src), folder_text(dst), time.time()
        with self._tx() as db:
            insert_rows(
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
                write_answers(db, after, now)
            write_pending(db, s, validity, d, refs, now)

    def record(self, answers: Commit) -> None:
        """Record the target's answers for one batch, in one transaction (or with the next
        batch's 'pending' rows: see begin's ``after``)."""
        with self._tx() as db:
            write_answers(db, answers, time.time())

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
            f"AND state {DONE_IN} AND deleted=0",
            (folder_text(src), validity, *DONE_STATES),
        )
        return [r[0] for r in rows]

    def mark_deleted(self, src: FolderPath, validity: str, ids: Iterable[str]) -> None:
        s = folder_text(src)
        with self._tx() as db:
            for piece in statements(list(ids)):
                db.execute(
                    "UPDATE messages SET deleted=1 WHERE src_folder=? AND validity=? "
                    f"AND src_id IN ({placeholders(len(piece))})",
                    [s, validity, *piece],
                )
