"""What later passes keep in the journal (see migrator.converge): the flags last applied to each
copy (the base of the three-way comparison), where the next flag listing may start, moves and
removals mirrored from the source, and what a pass changed (for `status`)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Sequence

from migrator.checkpoint.base import JournalBase
from migrator.checkpoint.ledger import write_answers, write_pending
from migrator.checkpoint.records import Commit, Copied
from migrator.checkpoint.rows import (
    DONE_IN,
    DONE_STATES,
    delete_ids,
    flags_text,
    folder_text,
    parse_flags_text,
    placeholders,
    statements,
)
from migrator.model import FolderPath, MessageRef


def _write_flags(
    db: sqlite3.Connection,
    s: str,
    validity: str,
    d: str,
    flags: Sequence[tuple[str, frozenset[str]]],
    ids: Sequence[tuple[str, str]],
) -> None:
    """The new common bases and the found target ids (inside the caller's transaction)."""
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


class ConvergenceState(JournalBase):
    """The journal of later passes: it reads and rewrites the copy ledger's rows."""

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
            f"WHERE src_folder=? AND validity=? AND dst_folder=? AND state {DONE_IN}"
        )
        args = [folder_text(src), validity, folder_text(dst), *DONE_STATES]
        if only is None:
            rows = self._query(head, args)
        else:
            rows = []
            for piece in statements(sorted(only)):
                rows += self._query(
                    f"{head} AND src_id IN ({placeholders(len(piece))})", [*args, *piece]
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
            _write_flags(db, folder_text(src), validity, folder_text(dst), flags, ids)

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
            _write_flags(db, s, validity, d, flags, ids)
            db.execute(
                "UPDATE folders SET flag_mark=?, flagged=? "
                "WHERE src_folder=? AND dst_folder=? AND validity=?",
                (mark, flagged, s, d, validity),
            )

    def forget(self, src: FolderPath, validity: str, dst: FolderPath, ids: Sequence[str]) -> None:
        """Drop the rows of messages removed from the target (or moved out of this folder)."""
        with self._tx() as db:
            delete_ids(db, folder_text(src), validity, folder_text(dst), ids)

    def begin_many(
        self, batches: Sequence[tuple[FolderPath, str, FolderPath, Sequence[MessageRef]]]
    ) -> None:
        """begin() for several folders, in one transaction (the intent of a pass's moves)."""
        now = time.time()
        with self._tx() as db:
            for src, validity, dst, refs in batches:
                write_pending(db, folder_text(src), validity, folder_text(dst), refs, now)

    def moved(
        self, moves: Sequence[tuple[tuple[FolderPath, str, FolderPath], Sequence[str], Commit]]
    ) -> None:
        """Moves confirmed by the target: for each, the old rows ((source folder, validity,
        target folder), source ids) go and the new folder's rows (begun 'pending' before the
        move) are done; all in one transaction."""
        now = time.time()
        with self._tx() as db:
            for (src, validity, dst), ids, into in moves:
                delete_ids(db, folder_text(src), validity, folder_text(dst), ids)
                write_answers(db, into, now)

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
