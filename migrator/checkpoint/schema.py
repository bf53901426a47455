"""The journal's tables, their versions, and the refusal of a database that is not a journal.

Rows are keyed by (source folder, UIDVALIDITY, source id, target folder). Folder paths are stored
as JSON lists of levels (see rows.folder_text), so no delimiter can make two names collide.
"""

from __future__ import annotations

import re
import sqlite3

from migrator.checkpoint.rows import DONE_IN, DONE_STATES

#: The version _SCHEMA creates; a journal of an older one is migrated when opened (migrate), one
#: of a newer one is refused.
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

#: The tables _SCHEMA creates: a database holding only these is a journal whose creation may
#: have been cut off before its schema version was written.
_OWN_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))

#: How many of a foreign database's tables the refusal names.
_TABLES_SHOWN = 3

#: The columns version 2 added to the tables of version 1.
_VERSION_2_COLUMNS = (
    ("messages", "flags TEXT"),
    ("folders", "flagged INTEGER NOT NULL DEFAULT 0"),
    ("folders", "moved INTEGER NOT NULL DEFAULT 0"),
    ("folders", "removed INTEGER NOT NULL DEFAULT 0"),
    ("folders", "flag_mark TEXT"),
)


def foreign_tables(db: sqlite3.Connection) -> str | None:
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
    more = len(tables) - _TABLES_SHOWN
    shown = ", ".join(tables[:_TABLES_SHOWN]) + (f" and {more} more" if more > 0 else "")
    return f"the tables {shown}"


def stored_version(db: sqlite3.Connection) -> int | None:
    """The schema version the journal says it has (None: just created, or cut off before)."""
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return None if row is None else int(row[0])


def create(db: sqlite3.Connection) -> None:
    """The tables and index of _SCHEMA, where missing (one script, its own transaction)."""
    db.executescript(_SCHEMA)


def upgrade(db: sqlite3.Connection, version: int | None) -> None:
    """Bring a journal of ``version`` (None: new) to SCHEMA_VERSION; inside the caller's one
    transaction, so that a crash in the middle leaves the journal as it was."""
    if version is not None and version < 2:
        _to_version_2(db)
    db.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
        (str(SCHEMA_VERSION),),
    )


def _to_version_2(db: sqlite3.Connection) -> None:
    """Version 1 kept no folder mapping: each source folder keeps the target folder that holds
    most of what was copied from it (two, after the special-use match changed, on Cyrus)."""
    for table, column in _VERSION_2_COLUMNS:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
    db.execute(
        "INSERT OR IGNORE INTO mapping(src_folder, dst_folder) "
        f"SELECT src_folder, dst_folder FROM messages WHERE state {DONE_IN} "
        "GROUP BY src_folder, dst_folder ORDER BY count(*) DESC",
        DONE_STATES,
    )
