"""Passes converge (SPEC "Passes converge"): the folder mapping is kept, flags follow, and `sync`
mirrors removals and moves; pure logic over the in-memory store."""

from __future__ import annotations

import sqlite3

from migrator.checkpoint import Journal
from tests.unit.memstore import Mailbox, MemoryStore
from tests.unit.test_engine import message, run


def test_target_folder_is_kept_when_the_special_use_match_changes(tmp_path):
    src, dst = MemoryStore(), MemoryStore(delimiter=".")
    for i in range(5):
        src.add(("Archive",), message(i))
    src.boxes[("Archive",)].special_use = "\\Archive"
    run(src, dst, tmp_path / "j")
    assert len(dst.bodies(("Archive",))) == 5
    # The target now shows a child folder named like the special use, listed first (as Cyrus
    # listed INBOX/Archive): a fresh plan would pick it.
    dst.boxes = {("INBOX", "Archive"): Mailbox(special_use="\\Archive"), **dst.boxes}
    src.add(("Archive",), message(5))
    summary = run(src, dst, tmp_path / "j")
    assert summary.total("copied") == 1
    assert dst.bodies(("INBOX", "Archive")) == []
    assert len(dst.bodies(("Archive",))) == 6


def test_an_explicit_map_replaces_the_recorded_folder(tmp_path):
    src, dst = MemoryStore(), MemoryStore()
    src.add(("Old",), message(1))
    run(src, dst, tmp_path / "j")
    from migrator.folders import FolderMap

    run(src, dst, tmp_path / "j", folder_map=FolderMap(renames={"Old": "New"}))
    assert dst.bodies(("New",)) == [message(1)]
    journal = Journal.open(tmp_path / "j")
    assert journal.folder_targets()[("Old",)] == ("New",)
    journal.close()


def test_a_version_1_journal_keeps_the_folder_most_messages_went_to(tmp_path):
    path = tmp_path / "j"
    Journal.open(path).close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE mapping; CREATE TABLE messages_v1 AS SELECT * FROM messages;"
        "UPDATE meta SET value='1' WHERE key='schema_version';"
    )
    db.execute("DROP TABLE messages")
    db.execute("DROP TABLE folders")
    db.executescript(
        """CREATE TABLE folders (src_folder TEXT NOT NULL, dst_folder TEXT NOT NULL,
        validity TEXT NOT NULL, reconciled INTEGER NOT NULL DEFAULT 0, selected INTEGER,
        PRIMARY KEY (src_folder, dst_folder));
        CREATE TABLE messages (src_folder TEXT NOT NULL, validity TEXT NOT NULL,
        src_id TEXT NOT NULL, dst_folder TEXT NOT NULL, dst_id TEXT, key TEXT NOT NULL,
        size INTEGER NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
        error TEXT, deleted INTEGER NOT NULL DEFAULT 0, updated REAL NOT NULL,
        PRIMARY KEY (src_folder, validity, src_id, dst_folder));"""
    )
    rows = [("1", '["Archive"]'), ("2", '["Archive"]'), ("3", '["INBOX", "Archive"]')]
    for n, dst in rows:
        db.execute(
            "INSERT INTO messages VALUES ('[\"Archive\"]', '7', ?, ?, NULL, 'k', 1, 'done', 0, "
            "NULL, 0, 0)",
            (n, dst),
        )
    db.commit()
    db.close()
    journal = Journal.open(path)
    assert journal.folder_targets() == {("Archive",): ("Archive",)}
    assert journal.meta("schema_version") == "2"
    journal.close()
