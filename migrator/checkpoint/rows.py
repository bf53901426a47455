"""How the journal writes its values and statements: folder paths and flags as text, the states a
copy settles in, and many rows in few statements."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from migrator.model import UNCOPIED_FLAGS, FolderPath

#: The states of a message the target holds: copied by this job ('done') or found there
#: ('skipped'). Queries name them through DONE_IN and bind DONE_STATES.
DONE_STATES = ("done", "skipped")

#: Rows written by one statement. Python's executemany steps SQLite once a row, letting go of the
#: GIL each time, and in a busy process each step then waits its turn to get it back from the
#: threads reading and converting messages. At most ten bound values a row: 90 rows stay within
#: 999, the limit of SQLite before 3.32.
ROWS_PER_STATEMENT = 90

T = TypeVar("T")


def placeholders(count: int) -> str:
    """``?, ?, ...``: ``count`` bound values, for an IN list or a row."""
    return ", ".join("?" * count)


#: ``IN (?, ?)`` to bind DONE_STATES to: a message the target holds.
DONE_IN = f"IN ({placeholders(len(DONE_STATES))})"


def statements(rows: Sequence[T]) -> Iterator[Sequence[T]]:
    """``rows`` in pieces of at most ROWS_PER_STATEMENT, one piece a statement."""
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        yield rows[start : start + ROWS_PER_STATEMENT]


def insert_rows(
    db: sqlite3.Connection, head: str, row: str, rows: Sequence[tuple[object, ...]], tail: str = ""
) -> None:
    """``head VALUES row, row, ... tail`` for all ``rows``, in as few statements as hold them."""
    for piece in statements(rows):
        db.execute(
            f"{head} VALUES {', '.join([row] * len(piece))} {tail}",
            [value for values in piece for value in values],
        )


def delete_ids(db: sqlite3.Connection, s: str, validity: str, d: str, ids: Sequence[str]) -> None:
    """Drop the rows of these source ids of one folder pair (under ``validity``)."""
    for piece in statements(list(ids)):
        db.execute(
            "DELETE FROM messages WHERE src_folder=? AND validity=? AND dst_folder=? "
            f"AND src_id IN ({placeholders(len(piece))})",
            [s, validity, d, *piece],
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
