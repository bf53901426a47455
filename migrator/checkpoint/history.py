"""The journal's history: the runs of the job, what `status` shows per folder, and what a batch
run of the account copied, all its attempts together (see migrator.batch)."""

from __future__ import annotations

import json
import sqlite3
import time

from migrator.checkpoint.base import JournalBase
from migrator.checkpoint.records import RUN_DONE, Failure, FolderCounts, JournalSummary
from migrator.checkpoint.rows import folder_path, statements

#: The meta key of the note begin_attempt() keeps for copied_in(): the batch run's tag, when its
#: first attempt began, and the appends in doubt at each attempt's start.
_ATTEMPT = "batch_attempt"


class RunHistory(JournalBase):
    """Runs, per-folder counts and failures, and the batch's attempts."""

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

    def last_run_status(self) -> str | None:
        """The status of the last run recorded here; None: none, or the runs cannot be read
        (a file that is not, or not yet, a journal)."""
        try:
            rows = self._query("SELECT status FROM runs ORDER BY id DESC LIMIT 1")
        except sqlite3.Error:
            return None
        return rows[0][0] if rows else None

    def last_run_done(self) -> bool:
        """True when the last run recorded here completed (status 'done')."""
        return self.last_run_status() == RUN_DONE

    def summarize(self, tag: str | None = None) -> JournalSummary:
        """The last run's status and, with ``tag``, what reached the target during that batch
        run (copied_in); what cannot be read counts as unknown (None), never as an error."""
        copied = None
        if tag is not None:
            try:
                copied = self.copied_in(tag)
            except (sqlite3.Error, ValueError, KeyError, TypeError):  # a damaged attempt note
                copied = None
        return JournalSummary(self.last_run_status(), copied)

    def begin_attempt(self, tag: str) -> None:
        """Note that a batch run (``tag``) starts, or starts again (its worker died), to copy
        this account: the first attempt of a tag sets the time its copies are counted from; every
        attempt adds the appends left in doubt (journaled 'pending'), which, should the target
        turn out to hold them, reached it in this batch run (see copied_in())."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key=?", (_ATTEMPT,)).fetchone()
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
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                (_ATTEMPT, json.dumps(attempt)),
            )

    def copied_in(self, tag: str) -> tuple[int, int] | None:
        """(messages, bytes) that reached the target during batch run ``tag``, all its attempts
        together: confirmed since its first attempt began, plus the appends in doubt at an
        attempt's start that the target turned out to hold. None: that run never began here."""
        note = self.meta(_ATTEMPT)
        attempt = json.loads(note) if note else {}
        if attempt.get("tag") != tag:
            return None
        done = self._query(
            "SELECT count(*), coalesce(sum(size), 0) FROM messages "
            "WHERE state='done' AND updated >= ?",
            (float(attempt["since"]),),
        )[0]
        count, nbytes = int(done[0]), int(done[1])
        for piece in statements(attempt["doubt"]):
            found = self._query(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages WHERE state='skipped' "
                "AND (src_folder, validity, src_id, dst_folder) IN "
                f"(VALUES {', '.join(['(?, ?, ?, ?)'] * len(piece))})",
                [value for key in piece for value in key],
            )[0]
            count, nbytes = count + int(found[0]), nbytes + int(found[1])
        return count, nbytes
