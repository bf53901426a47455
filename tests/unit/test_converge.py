"""Passes converge (SPEC "Passes converge"): the folder mapping is kept, flags follow, and `sync`
mirrors removals and moves; pure logic over the in-memory store."""

from __future__ import annotations

import sqlite3

from migrator.checkpoint import Journal
from migrator.engine import CopyOptions, Engine
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
    # verify compares with the folder the journal recorded, not a fresh plan's choice
    from migrator.filters import MessageFilter
    from migrator.folders import FolderMap
    from migrator.verify import summary as verify_summary
    from migrator.verify import verify

    journal = Journal.open(tmp_path / "j")
    recorded = journal.folder_targets()
    journal.close()
    kept = verify(src, dst, FolderMap(), MessageFilter(), recorded=recorded)
    assert verify_summary(kept)["missing"] == 0
    fresh = verify(src, dst, FolderMap(), MessageFilter())
    assert verify_summary(fresh)["missing"] == 6


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


def _source(n: int = 12) -> MemoryStore:
    src = MemoryStore(label="src")
    for i in range(n):
        src.add(("INBOX",), message(i), flags={"\\Seen"} if i % 2 else ())
    src.add(("Archive",), message(100))
    return src


def _flags(store: MemoryStore, folder, i: int) -> frozenset[str]:
    return next(m.flags for m in store.boxes[folder].messages if m.data == message(i))


def _set(store: MemoryStore, folder, i: int, flags) -> None:
    next(m for m in store.boxes[folder].messages if m.data == message(i)).flags = frozenset(flags)


def _move(store: MemoryStore, i: int, from_, to) -> None:
    m = next(m for m in store.boxes[from_].messages if m.data == message(i))
    store.boxes[from_].messages.remove(m)
    store.add(to, m.data, m.flags)


def test_copy_applies_source_flag_changes_and_keeps_target_only_ones(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    _set(src, ("INBOX",), 0, {"\\Flagged", "$work"})  # source changed only
    _set(dst, ("INBOX",), 2, {"\\Answered"})  # target changed only
    _set(src, ("INBOX",), 1, {"\\Flagged"})  # source removed \Seen and added \Flagged ...
    _set(dst, ("INBOX",), 1, {"\\Seen", "$todo"})  # ... while the target added $todo
    _set(src, ("INBOX",), 3, {"\\Seen", "\\Answered"})
    _set(dst, ("INBOX",), 3, set())  # both: the target dropped \Seen, the source added \Answered
    summary = run(src, dst, tmp_path / "j")
    assert summary.total("copied") == 0
    assert summary.total("flagged") == 3
    assert _flags(dst, ("INBOX",), 0) == {"\\Flagged", "$work"}
    assert _flags(dst, ("INBOX",), 2) == {"\\Answered"}
    assert _flags(dst, ("INBOX",), 1) == {"\\Flagged", "$todo"}
    assert _flags(dst, ("INBOX",), 3) == {"\\Answered"}
    assert dst.flag_updates == 1  # one bulk update for the folder, not one per message
    again = run(src, dst, tmp_path / "j")
    assert again.total("flagged") == 0 and dst.flag_updates == 1


def test_copy_never_removes_nor_moves(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    src.boxes[("INBOX",)].messages.pop(0)
    run(src, dst, tmp_path / "j")
    assert len(dst.bodies(("INBOX",))) == 12


def test_sync_removes_what_the_source_lost_and_moves_what_moved(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    dst.add(("INBOX",), b"Message-ID: <native@new>\r\nSubject: after the MX switch\r\n\r\nhi\r\n")
    run(src, dst, tmp_path / "j")
    appends = dst.appends
    src.boxes[("INBOX",)].messages = [
        m for m in src.boxes[("INBOX",)].messages if m.data != message(4)
    ]
    _move(src, 5, ("INBOX",), ("Archive",))
    _move(src, 6, ("INBOX",), ("New Folder",))
    summary = run(src, dst, tmp_path / "j", mirror=True)
    assert dst.appends == appends  # moves are not uploads
    assert message(4) not in dst.bodies(("INBOX",))
    assert message(5) in dst.bodies(("Archive",)) and message(5) not in dst.bodies(("INBOX",))
    assert dst.bodies(("New Folder",)) == [message(6)]
    assert b"native@new" in dst.bodies(("INBOX",))[0]  # not copied by this job: untouched
    assert (summary.total("removed"), summary.total("moved"), summary.total("copied")) == (1, 2, 0)
    rerun = run(src, dst, tmp_path / "j", mirror=True)
    assert (rerun.total("removed"), rerun.total("moved"), rerun.total("copied")) == (0, 0, 0)
    assert _flags(dst, ("Archive",), 5) == {"\\Seen"}


def test_sync_dry_run_changes_nothing(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    before = {f: list(b) for f, b in ((f, dst.bodies(f)) for f in dst.boxes)}
    src.boxes[("INBOX",)].messages.pop(0)
    _move(src, 5, ("INBOX",), ("Archive",))
    # As run_copy does it: a dry run works on an in-memory copy of the journal.
    journal = Journal.in_memory(tmp_path / "j")
    options = CopyOptions(mirror=True, dry_run=True, batch_count=2)
    summary = Engine(lambda: src, lambda: dst, journal, options).run()
    assert (summary.total("removed"), summary.total("moved")) == (1, 1)
    assert any("would remove 1" in n for n in summary.notices)
    assert {f: dst.bodies(f) for f in dst.boxes} == before
    real = run(src, dst, tmp_path / "j", mirror=True)
    assert (real.total("removed"), real.total("moved")) == (1, 1)


def test_sync_guard_refuses_to_empty_a_folder(tmp_path):
    import pytest

    from migrator.converge import GuardError

    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    src.boxes[("INBOX",)].messages = src.boxes[("INBOX",)].messages[:4]
    with pytest.raises(GuardError, match="--max-delete"):
        run(src, dst, tmp_path / "j", mirror=True)
    assert len(dst.bodies(("INBOX",))) == 12
    with pytest.raises(GuardError):
        run(src, dst, tmp_path / "j", mirror=True, max_delete=7)
    summary = run(src, dst, tmp_path / "j", mirror=True, max_delete=8)
    assert summary.total("removed") == 8 and len(dst.bodies(("INBOX",))) == 4


def test_sync_after_a_new_uidvalidity_removes_nothing(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    box = src.boxes[("INBOX",)]
    box.validity += 1
    summary = run(src, dst, tmp_path / "j", mirror=True)
    assert summary.total("removed") == 0 and summary.total("copied") == 0
    assert len(dst.bodies(("INBOX",))) == 12


def test_sync_killed_in_a_move_converges_on_rerun(tmp_path):
    from tests.unit.memstore import Crash

    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    appends = dst.appends
    _move(src, 5, ("INBOX",), ("Archive",))
    dst.crash_in_move = True
    try:
        run(src, dst, tmp_path / "j", mirror=True)
    except Crash:
        pass
    else:
        raise AssertionError("no crash")
    run(src, dst, tmp_path / "j", mirror=True)
    assert dst.appends == appends
    everything = [b for f in dst.boxes for b in dst.bodies(f)]
    assert everything.count(message(5)) == 1 and message(5) in dst.bodies(("Archive",))
    assert sorted(everything) == sorted(b for f in src.boxes for b in src.bodies(f))


def test_mbox_tree_with_a_second_archive_folder_gets_no_second_copy(tmp_path):
    """Issue 18's case on an mbox target: the tree holds Archive.mbox and INBOX/Archive/2023.mbox,
    then a folder of the same use that sorts first (Archiv.mbox, a German client's): a fresh
    plan would send Archive's messages there on the rerun."""
    from migrator.stores.mbox import MboxStore

    src = MemoryStore()
    for i in range(5):
        src.add(("Archive",), message(i))
    src.boxes[("Archive",)].special_use = "\\Archive"
    for i in range(10, 13):
        src.add(("INBOX", "Archive", "2023"), message(i))
    tree = tmp_path / "tree"
    run(src, MboxStore(tree), tmp_path / "j")
    assert (tree / "Archive.mbox").is_file() and (
        tree / "INBOX" / "Archive" / "2023.mbox"
    ).is_file()
    (tree / "Archiv.mbox").write_bytes(b"")
    src.add(("Archive",), message(5))
    summary = run(src, MboxStore(tree), tmp_path / "j")
    assert summary.total("copied") == 1
    assert (tree / "Archiv.mbox").read_bytes() == b""
    archived = (tree / "Archive.mbox").read_bytes()
    assert all(archived.count(f"<m{i}@example.org>".encode()) == 1 for i in range(6))


def test_sync_a_folder_renamed_at_the_source_is_moved_not_uploaded(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j")
    appends = dst.appends
    src.boxes[("Projects",)] = src.boxes.pop(("Archive",))
    summary = run(src, dst, tmp_path / "j", mirror=True)
    assert (summary.total("moved"), summary.total("copied")) == (1, 0)
    assert dst.appends == appends
    assert dst.bodies(("Projects",)) == [message(100)] and dst.bodies(("Archive",)) == []


def test_sync_a_folder_deleted_at_the_source_is_guarded(tmp_path):
    import pytest

    from migrator.converge import GuardError

    src, dst = _source(), MemoryStore(label="dst")
    for i in range(200, 210):
        src.add(("Old",), message(i))
    run(src, dst, tmp_path / "j")
    del src.boxes[("Old",)]
    with pytest.raises(GuardError, match="Old"):
        run(src, dst, tmp_path / "j", mirror=True)
    assert len(dst.bodies(("Old",))) == 10
    summary = run(src, dst, tmp_path / "j", mirror=True, max_delete=10)
    assert dst.bodies(("Old",)) == [] and any("Remove 10" in n for n in summary.notices)


def test_sync_leaves_what_delete_source_archived(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    run(src, dst, tmp_path / "j", delete_source=True)
    assert src.bodies(("INBOX",)) == [] and len(dst.bodies(("INBOX",))) == 12
    summary = run(src, dst, tmp_path / "j", mirror=True)
    assert summary.total("removed") == 0 and len(dst.bodies(("INBOX",))) == 12


def test_copies_whose_id_the_target_did_not_tell_are_found_by_key(tmp_path):
    src, dst = _source(), MemoryStore(label="dst")
    dst.no_uidplus = True
    run(src, dst, tmp_path / "j")
    _set(src, ("INBOX",), 0, {"\\Flagged"})
    _move(src, 5, ("INBOX",), ("Archive",))
    summary = run(src, dst, tmp_path / "j", mirror=True)
    assert (summary.total("flagged"), summary.total("moved")) == (1, 1)
    assert _flags(dst, ("INBOX",), 0) == {"\\Flagged"}
    assert message(5) in dst.bodies(("Archive",)) and message(5) not in dst.bodies(("INBOX",))
    journal = Journal.open(tmp_path / "j")
    try:
        rows = journal.copied(("INBOX",), "1", ("INBOX",))
        assert any(r.dst_id for r in rows)  # found ids are kept for the next pass
    finally:
        journal.close()
