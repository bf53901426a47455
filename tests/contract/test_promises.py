"""The store promises, each run over every kind of store that makes it (tests/contract/kinds.py).

1. list: folders and messages are listed with the sizes, flags, dates and identity keys seeded;
2. read: the bytes read back are those seeded (CRLF, or LF for the archives);
3. append: appended messages come back with flags and INTERNALDATE; each append is answered;
4. resume point: what a target reports (identity keys, present ids, its resume point) recognises
   what it holds, so that a second copy adds nothing;
5. recover after a torn write: after the engine died between an append and its journal commit,
   and then a writer died half-way through an append (a cut mbox tail, a half file in a
   Maildir's tmp/, an IMAP APPEND cut off mid-message), the store is readable and a copy
   completes exactly once;
6. delete: deleting source messages removes exactly those, and nothing else.

Promises about copying run the real Engine over a journal on disk; the others use the store
interface directly.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from migrator.account import run_copy
from migrator.engine import CopyOptions, RunSummary
from migrator.model import INBOX, FolderPath, MessageRef, crlf_size, message_key
from migrator.stores.base import Source, Target
from tests.contract.kinds import Box, Store, StoreKind, path_of, ref_of
from tests.corpus import Msg
from tests.unit.memstore import Crash, MemoryStore

ARCHIVE: FolderPath = ("Archive", "2023")


def message(n: int, *, mid: bool = True, body: str = "") -> bytes:
    head = f"Message-ID: <promise{n}@example.org>\r\n" if mid else ""
    return (
        f"{head}From: Sender {n} <s{n}@example.org>\r\nTo: r@example.org\r\n"
        f"Subject: promise {n}\r\nDate: Mon, {n:02d} Jan 2018 10:00:00 +0100\r\n\r\n"
        f"{body or f'body {n}'}\r\n"
    ).encode()


def when(n: int) -> datetime:
    """An INTERNALDATE unlike the message's Date: field, in a zone of its own, in the past (a
    server may date a message from the future by its arrival)."""
    return datetime(2000 + n, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=n % 5 - 2)))


MESSAGES = [
    Msg("INBOX", message(1), ("\\Seen",), when(1)),
    Msg("INBOX", message(2, mid=False), ("\\Flagged", "$Work"), when(2)),
    Msg("INBOX", message(3, body="From the start of a line\r\n>From quoted"), (), when(3)),
    Msg("Archive/2023", message(4), ("\\Answered", "\\Seen"), when(4)),
    Msg("Archive/2023", message(5, mid=False), ("\\Draft",), when(5)),
]
#: For the torn write: one folder, more messages than one append of the engine takes (batches
#: of two, up to four batches at once for an archive: Target.commit_group).
INBOX_ONLY = [Msg("INBOX", message(n), ("\\Seen",) if n % 2 else (), when(n)) for n in range(6, 18)]

Content = Counter[tuple[FolderPath, bytes, frozenset[str], datetime]]


def key(data: bytes) -> str:
    return message_key(data, crlf_size(data))


def expected(kind: StoreKind, msgs: Iterable[Msg]) -> Content:
    """What a store of ``kind`` holding ``msgs`` shows: folder, bytes, flags and date of each."""
    return Counter((path_of(m), kind.stored(m.data), kind.flags(m), kind.date(m)) for m in msgs)


def listing(store: Store, folder: FolderPath) -> list[MessageRef]:
    store.open_folder(folder)
    return list(store.list_messages(folder))


def contents(box: Box) -> Content:
    """Everything the store holds, read through its Source interface by a new connection."""
    found: Content = Counter()
    with box.open("source") as store:
        for folder in store.list_folders():
            if not folder.selectable:
                continue
            refs = listing(store, folder.path)
            for ref, data in store.fetch(folder.path, refs):
                assert isinstance(data, bytes), f"{folder.path} {ref.id}: {data}"
                assert ref.date is not None
                found[(folder.path, data, ref.flags, ref.date.astimezone(UTC))] += 1
    return found


def copy(
    source: Box,
    target: Box,
    journal_path: Path,
    *,
    crash_after_appends: int | None = None,
    delete_source: bool = False,
) -> RunSummary:
    """One run of the engine in its journal, as `migrator copy` makes it (batches of two
    messages); with ``crash_after_appends`` the process "dies" (an exception no handler catches)
    right after that many appends landed, before the journal hears of them."""

    def open_target() -> Store:
        store = target.open("target")
        if crash_after_appends is not None:
            real, calls = store.append, [0]

            def append(path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]) -> object:
                results = real(path, items)
                calls[0] += 1
                if calls[0] >= crash_after_appends:
                    store.append = real  # once: a memory store outlives its "process"
                    raise Crash()
                return results

            store.append = append
        return store

    options = CopyOptions(batch_count=2, retry_delay=0.0, delete_source=delete_source)
    return run_copy(
        lambda: source.open("source"), open_target, "source", "target", journal_path, options
    )


def memory_box(msgs: Iterable[Msg] = ()) -> Box:
    store = MemoryStore(delimiter="/")
    for m in msgs:
        store.add(path_of(m), m.data, m.flags, m.date)
    return Box(lambda role: store)


# -- what each store says it does ---------------------------------------------------------------


def test_store_advertises_its_promises(store_kind: StoreKind) -> None:
    store = store_kind.source(store_kind.fitting(MESSAGES[:1])).open("source")
    assert isinstance(store, Source)
    assert isinstance(store, Target) == store_kind.target
    assert store.can_delete == store_kind.can_delete
    if isinstance(store, Target):
        assert store.can_update == store_kind.can_update


# -- 1. list ------------------------------------------------------------------------------------


def test_list(store_kind: StoreKind) -> None:
    msgs = store_kind.fitting(MESSAGES)
    box = store_kind.source(msgs)
    by_folder: dict[FolderPath, list[Msg]] = {}
    for m in msgs:
        by_folder.setdefault(path_of(m), []).append(m)
    with box.open("source") as store:
        listed = {f.path for f in store.list_folders() if f.selectable}
        assert set(by_folder) <= listed
        states, ids_of = {}, {}
        for folder, seeded in by_folder.items():
            states[folder] = store.open_folder(folder)
            assert states[folder].count == len(seeded)
            refs = list(store.list_messages(folder))
            assert Counter(
                (r.size, r.flags, r.date.astimezone(UTC) if r.date else None, r.key) for r in refs
            ) == Counter(
                (crlf_size(m.data), store_kind.flags(m), store_kind.date(m), key(m.data))
                for m in seeded
            )
            ids = ids_of[folder] = [r.id for r in refs]
            assert len(set(ids)) == len(ids)
            assert [r.id for r in store.list_messages(folder, skip={ids[0]})] == ids[1:]
            assert [r.id for r in store.list_messages(folder, keys=False)] == ids
    # A later session sees the same folder validity and ids: what a resumed copy relies on.
    with box.open("source") as again:
        for folder in by_folder:
            assert again.open_folder(folder).validity == states[folder].validity
            assert [r.id for r in again.list_messages(folder)] == ids_of[folder]


# -- 2. read ------------------------------------------------------------------------------------


def test_read(store_kind: StoreKind) -> None:
    msgs = store_kind.fitting(MESSAGES)
    box = store_kind.source(msgs)
    with box.open("source") as store:
        for folder in {path_of(m) for m in msgs}:
            seeded = {key(m.data): store_kind.stored(m.data) for m in msgs if path_of(m) == folder}
            refs = listing(store, folder)
            got = list(store.fetch(folder, refs))
            assert [ref for ref, _ in got] == refs
            assert {ref.key: data for ref, data in got} == seeded
            backwards = list(store.fetch(folder, refs[::-1]))
            assert [data for _, data in backwards] == [data for _, data in got][::-1]


def test_copy_out_with_the_engine(store_kind: StoreKind, tmp_path: Path) -> None:
    """Everything the store holds reaches another store through the engine, once."""
    msgs = store_kind.fitting(MESSAGES)
    target = memory_box()
    summary = copy(store_kind.source(msgs), target, tmp_path / "journal.sqlite")
    assert summary.ok and summary.total("copied") == len(msgs)
    assert contents(target) == expected(store_kind, msgs)


# -- 3. append ----------------------------------------------------------------------------------


def test_append(target_kind: StoreKind) -> None:
    box = target_kind.empty()
    with box.open("target") as store:
        for folder in (INBOX, ARCHIVE):
            items = [(ref_of(m), m.data) for m in MESSAGES if path_of(m) == folder]
            store.ensure_folder(folder)
            results = store.append(folder, items)
            assert [r.error for r in results] == [None] * len(items)
            if target_kind.answers_ids:
                ids = [r.target_id for r in results]
                assert None not in ids and len(set(ids)) == len(ids)
                if target_kind.can_update:
                    assert store.present_ids(folder, ids) == set(ids)
                    assert store.present_ids(folder, ["nothing-has-this-id"]) == set()
                    assert dict(store.ids_by_key(folder)) == {
                        i: ref.key for i, (ref, _) in zip(ids, items, strict=True)
                    }
    assert contents(box) == expected(target_kind, MESSAGES)


def test_copy_in_with_the_engine(target_kind: StoreKind, tmp_path: Path) -> None:
    box = target_kind.empty()
    summary = copy(memory_box(MESSAGES), box, tmp_path / "journal.sqlite")
    assert summary.ok and summary.total("copied") == len(MESSAGES)
    assert contents(box) == expected(target_kind, MESSAGES)


# -- 4. resume point ----------------------------------------------------------------------------


def test_a_second_copy_adds_nothing_with_or_without_the_journal(
    target_kind: StoreKind, tmp_path: Path
) -> None:
    source, box = memory_box(MESSAGES), target_kind.empty()
    assert copy(source, box, tmp_path / "journal.sqlite").total("copied") == len(MESSAGES)
    again = copy(source, box, tmp_path / "journal.sqlite")
    assert again.total("copied") == 0 and again.total("skipped") == len(MESSAGES)
    lost = copy(source, box, tmp_path / "another-journal.sqlite")  # what the target reports
    assert lost.ok and lost.total("copied") == 0 and lost.total("skipped") == len(MESSAGES)
    assert contents(box) == expected(target_kind, MESSAGES)


def test_target_reports_what_it_holds(target_kind: StoreKind) -> None:
    box = target_kind.empty()
    first, second = INBOX_ONLY[:3], INBOX_ONLY[3:5]
    with box.open("target") as store:
        assert list(store.index(ARCHIVE)) == []  # not there yet: nothing, no error
        store.ensure_folder(INBOX)
        store.append(INBOX, [(ref_of(m), m.data) for m in first])
        point = store.resume_point(INBOX)
    with box.open("target") as store:
        assert sorted(store.index(INBOX)) == sorted(key(m.data) for m in first)
        store.recover(INBOX, point)  # nothing was torn: nothing may go
        assert sorted(store.index(INBOX)) == sorted(key(m.data) for m in first)
        results = store.append(INBOX, [(ref_of(m), m.data) for m in second])
        assert all(r.ok for r in results)
        assert sorted(store.index(INBOX)) == sorted(key(m.data) for m in first + second)
    assert contents(box) == expected(target_kind, first + second)


# -- 5. recover after a torn write --------------------------------------------------------------


def test_recover_after_a_torn_write(target_kind: StoreKind, tmp_path: Path) -> None:
    source, box = memory_box(INBOX_ONLY), target_kind.empty()
    journal = tmp_path / "journal.sqlite"
    with pytest.raises(Crash):
        copy(source, box, journal, crash_after_appends=1)
    landed = sum(contents(box).values())
    assert 0 < landed < len(INBOX_ONLY)
    target_kind.tear(box, INBOX, INBOX_ONLY[landed:])
    summary = copy(source, box, journal)
    assert summary.ok, summary.folders
    assert summary.total("copied") == len(INBOX_ONLY) - landed
    assert contents(box) == expected(target_kind, INBOX_ONLY)
    assert target_kind.leftovers(box) == []


# -- 6. delete ----------------------------------------------------------------------------------


def test_delete_removes_exactly_those(deleting_kind: StoreKind) -> None:
    msgs = deleting_kind.fitting(MESSAGES)
    box = deleting_kind.source(msgs)
    with box.open("source") as store:
        refs = listing(store, INBOX)
        assert len(refs) == 3
        store.delete(INBOX, [refs[0].id, refs[2].id])
    with box.open("source") as store:
        [kept] = listing(store, INBOX)
        assert kept.id == refs[1].id and kept.key == refs[1].key
    others = [m for m in msgs if path_of(m) != INBOX]
    inbox = [m for m in msgs if path_of(m) == INBOX and key(m.data) == refs[1].key]
    assert contents(box) == expected(deleting_kind, inbox + others)


def test_move_with_the_engine_deletes_what_was_copied(
    deleting_kind: StoreKind, tmp_path: Path
) -> None:
    msgs = deleting_kind.fitting(MESSAGES)
    source, target = deleting_kind.source(msgs), memory_box()
    summary = copy(source, target, tmp_path / "journal.sqlite", delete_source=True)
    assert summary.ok and summary.total("deleted") == len(msgs)
    assert contents(target) == expected(deleting_kind, msgs)
    assert contents(source) == Counter()
