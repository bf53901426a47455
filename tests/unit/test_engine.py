"""The engine over in-memory stores: the checkpoint promise as pure logic, step by step."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from migrator.checkpoint import Journal
from migrator.engine import CopyOptions, Engine
from migrator.filters import MessageFilter
from migrator.folders import FolderMap
from migrator.model import INBOX
from tests.unit.memstore import Crash, MemoryStore

FOLDERS = [("INBOX",), ("Archive",), ("Archive", "2023"), ("Sent",)]


def message(i: int, *, mid: bool = True) -> bytes:
    head = f"Message-ID: <m{i}@example.org>\r\n" if mid else ""
    return (
        f"{head}From: a{i}@example.org\r\nSubject: message {i}\r\n"
        f"Date: Mon, 1 Jan 2018 00:00:{i % 60:02d} +0000\r\n\r\nbody {i}\r\n"
    ).encode()


def filled_source(n: int = 24) -> MemoryStore:
    src = MemoryStore(delimiter="/", label="src")
    for i in range(n):
        folder = FOLDERS[i % len(FOLDERS)]
        src.add(
            folder,
            message(i),
            flags={"\\Seen", "work"} if i % 2 else set(),
            date=datetime(2010 + i % 10, 1, 1, tzinfo=UTC),
        )
    return src


def run(src, dst, journal_path: Path | None, **options) -> object:
    options.setdefault("batch_count", 2)
    options.setdefault("retry_delay", 0.0)
    journal = Journal.open(journal_path) if journal_path else Journal.in_memory()
    try:
        return Engine(lambda: src, lambda: dst, journal, CopyOptions(**options)).run()
    finally:
        journal.close()


def contents(store: MemoryStore) -> Counter:
    return Counter(
        (folder, m.data, m.flags, m.date)
        for folder, box in store.boxes.items()
        for m in box.messages
    )


def test_copies_everything_with_flags_and_dates_and_maps_delimiters(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".", label="dst")
    summary = run(src, dst, tmp_path / "j")
    assert summary.total("copied") == 24 and summary.ok
    assert contents(src) == contents(dst)


def test_rerun_copies_nothing_and_new_mail_only(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".")
    run(src, dst, tmp_path / "j")
    again = run(src, dst, tmp_path / "j")
    assert again.total("copied") == 0
    assert again.total("skipped") == 24
    src.add(("Archive",), message(100))
    third = run(src, dst, tmp_path / "j")
    assert third.total("copied") == 1
    assert contents(src) == contents(dst)


@pytest.mark.parametrize("when", ["before", "after"])
def test_crash_at_every_append_then_rerun_gives_each_message_exactly_once(tmp_path, when):
    reference = filled_source()
    total_appends = 0
    probe = MemoryStore(delimiter=".")
    run(filled_source(), probe, None)
    total_appends = probe.appends
    assert total_appends > 5
    for k in range(1, total_appends + 1):
        src, dst = filled_source(), MemoryStore(delimiter=".")
        setattr(dst, f"crash_{when}_append", k)
        with pytest.raises(Crash):
            run(src, dst, tmp_path / f"j{when}{k}")
        setattr(dst, f"crash_{when}_append", None)
        run(src, dst, tmp_path / f"j{when}{k}")
        assert contents(dst) == contents(reference), f"crash {when} append {k}"


def test_lost_journal_adds_no_duplicates(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".")
    run(src, dst, tmp_path / "j")
    summary = run(src, dst, tmp_path / "other")
    assert summary.total("copied") == 0 and summary.total("skipped") == 24
    assert contents(src) == contents(dst)


def test_new_uidvalidity_adds_no_duplicates_but_copies_new_mail(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".")
    run(src, dst, tmp_path / "j")
    box = src.boxes[("Archive",)]
    box.validity = 99
    for n, m in enumerate(box.messages):
        m.uid = 1000 + n
    src.add(("Archive",), message(200))
    summary = run(src, dst, tmp_path / "j")
    assert summary.total("copied") == 1
    assert contents(src) == contents(dst)


def test_identical_messages_in_source_are_both_copied(tmp_path):
    src, dst = MemoryStore(), MemoryStore()
    src.add(("INBOX",), message(1))
    src.add(("INBOX",), message(1))
    run(src, dst, tmp_path / "j")
    assert dst.bodies(("INBOX",)) == [message(1)] * 2
    # and with the journal lost, neither is copied a third time
    run(src, dst, tmp_path / "lost")
    assert len(dst.bodies(("INBOX",))) == 2


def test_messages_without_message_id_are_recognised_by_header_digest(tmp_path):
    src, dst = MemoryStore(), MemoryStore()
    for i in range(5):
        src.add(("INBOX",), message(i, mid=False))
    run(src, dst, tmp_path / "j")
    run(src, dst, tmp_path / "lost")
    assert dst.bodies(("INBOX",)) == src.bodies(("INBOX",))


def test_dropped_connection_reconnects_and_finishes_exactly_once(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".")
    dst.drop_at_append = 3
    summary = run(src, dst, tmp_path / "j", retries=2)
    assert summary.ok and dst.connects >= 2
    assert contents(src) == contents(dst)


def test_gives_up_after_the_configured_retries(tmp_path):
    from migrator.errors import StoreError

    class Flaky(MemoryStore):
        def append(self, path, items):
            self.connected = False
            raise StoreError("flaky: connection lost", transient=True)

    with pytest.raises(StoreError, match="gave up after 2 reconnects"):
        run(filled_source(), Flaky(), tmp_path / "j", retries=2)


def test_refused_message_is_recorded_run_goes_on_and_is_retried(tmp_path):
    src, dst = filled_source(8), MemoryStore(delimiter=".")
    src.add(("INBOX",), b"Message-ID: <bad@x>\r\nSubject: REFUSE\r\n\r\nx\r\n")
    dst.refuse_marker = b"REFUSE"
    summary = run(src, dst, tmp_path / "j")
    assert summary.total("failed") == 1 and summary.total("copied") == 8 and not summary.ok
    journal = Journal.open(tmp_path / "j")
    [failure] = journal.failures()
    assert failure.error == "refused by test"
    journal.close()
    dst.refuse_marker = None
    again = run(src, dst, tmp_path / "j")
    assert again.total("copied") == 1 and again.ok
    assert contents(src) == contents(dst)


def test_dry_run_writes_nothing(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".")
    journal_path = tmp_path / "j"
    run(src, dst, journal_path, folder_map=FolderMap(include=["INBOX"]))
    before = journal_path.read_bytes()
    src.add(("Archive",), message(300))
    journal = Journal.in_memory(journal_path)
    summary = Engine(lambda: src, lambda: dst, journal, CopyOptions(dry_run=True)).run()
    assert summary.total("copied") == 19  # 25 messages, 6 in INBOX already copied
    assert list(dst.boxes) == [("INBOX",)] and len(dst.bodies(("INBOX",))) == 6
    assert journal_path.read_bytes() == before


def test_dry_run_target_reads_through_and_changes_nothing():
    from migrator.model import MessageRef
    from migrator.stores.base import FlagChange
    from migrator.stores.dryrun import DryRunTarget

    inner = MemoryStore(delimiter=".", label="real")
    inner.add(("INBOX",), message(1), flags={"\\Seen"})
    before = contents(inner)
    target = DryRunTarget(inner)
    target.connect()
    assert (target.label, target.delimiter, target.can_update) == ("real", ".", True)
    assert [f.path for f in target.list_folders()] == [("INBOX",)]
    assert target.index(("INBOX",)) == inner.index(("INBOX",))
    assert target.ids_by_key(("INBOX",)) == inner.ids_by_key(("INBOX",))
    [tid] = [i for i, _ in inner.ids_by_key(("INBOX",))]
    assert target.present_ids(("INBOX",), [tid, "nope"]) == {tid}
    answers = target.append(("New",), [(MessageRef("x", 10), message(2))])
    assert [a.ok for a in answers] == [True] and answers[0].target_id is None
    target.ensure_folder(("New",))
    target.update_flags(("INBOX",), [FlagChange(frozenset(), frozenset({"\\Seen"}), [tid])])
    assert target.move(("INBOX",), [tid], ("Archive",)) == [None]
    target.remove(("INBOX",), [tid])
    assert contents(inner) == before and list(inner.boxes) == [("INBOX",)]


def test_delete_source_removes_only_confirmed_and_selected(tmp_path):
    src, dst = MemoryStore(), MemoryStore()
    for i in range(10):
        src.add(("INBOX",), message(i), date=datetime(2000 + i, 6, 1, tzinfo=UTC))
    src.add(
        ("INBOX",),
        b"Message-ID: <r@x>\r\nSubject: REFUSE\r\n\r\nx\r\n",
        date=datetime(2001, 1, 1, tzinfo=UTC),
    )
    dst.refuse_marker = b"REFUSE"
    old = MessageFilter(before=datetime(2005, 1, 1, tzinfo=UTC))
    summary = run(src, dst, tmp_path / "j", delete_source=True, message_filter=old)
    assert summary.total("deleted") == 5
    left = src.bodies(("INBOX",))
    assert len(left) == 6 and any(b"REFUSE" in b for b in left)
    assert len(dst.bodies(("INBOX",))) == 5
    # Without a filter, a later run archives the rest, but never the refused one.
    run(src, dst, tmp_path / "j", delete_source=True)
    assert [b for b in src.bodies(("INBOX",))] == [m for m in left if b"REFUSE" in m]


def test_delete_source_after_crash_between_append_and_delete(tmp_path):
    src, dst = filled_source(6), MemoryStore()
    dst.crash_after_append = 2
    with pytest.raises(Crash):
        run(src, dst, tmp_path / "j", delete_source=True)
    # every message is somewhere, nothing twice in the target
    union = Counter(m for f in src.boxes for m in src.bodies(f)) + Counter(
        m for f in dst.boxes for m in dst.bodies(f)
    )
    assert set(union) == {message(i) for i in range(6)}
    dst.crash_after_append = None
    run(src, dst, tmp_path / "j", delete_source=True)
    assert all(not src.bodies(f) for f in src.boxes)
    assert sorted(m for f in dst.boxes for m in dst.bodies(f)) == sorted(
        message(i) for i in range(6)
    )


def test_stop_event_ends_after_a_committed_batch(tmp_path):
    src, dst = filled_source(), MemoryStore(delimiter=".")
    stop = threading.Event()

    class Stopper(MemoryStore):
        def append(self, path, items):
            stop.set()
            return super().append(path, items)

    target = Stopper(delimiter=".")
    journal = Journal.open(tmp_path / "j")
    summary = Engine(
        lambda: src, lambda: target, journal, CopyOptions(batch_count=2), stop=stop
    ).run()
    journal.close()
    assert summary.interrupted and summary.total("copied") == 2
    summary = run(src, target, tmp_path / "j")
    assert contents(src) == contents(target)
    del dst


def test_workers_share_the_folders_and_the_result_is_the_same(tmp_path):
    sources = {n: filled_source() for n in range(4)}

    class PerWorker:
        """Each worker gets its own connection to the same mailboxes."""

        def __init__(self, store):
            self.store = store

        def __call__(self):
            return self.store

    src, dst = sources[0], MemoryStore(delimiter=".")
    journal = Journal.open(tmp_path / "j")
    summary = Engine(PerWorker(src), PerWorker(dst), journal, CopyOptions(workers=3)).run()
    journal.close()
    assert summary.total("copied") == 24
    assert contents(src) == contents(dst)


def test_special_use_folder_lands_in_targets_folder_of_same_use(tmp_path):
    src, dst = MemoryStore(), MemoryStore(delimiter=".")
    src.add(("Sent Items",), message(1))
    dst.boxes[("Gesendet",)] = dst.boxes.get(("Gesendet",)) or type(dst.boxes[("INBOX",)])(
        special_use="\\Sent"
    )
    run(src, dst, tmp_path / "j")
    assert dst.bodies(("Gesendet",)) == [message(1)]
    assert ("Sent Items",) not in dst.boxes


def test_add_flags_marks_every_copied_message(tmp_path):
    src, dst = filled_source(4), MemoryStore(delimiter=".")
    run(src, dst, tmp_path / "j", add_flags=frozenset({"\\Seen"}))
    assert all("\\Seen" in m.flags for box in dst.boxes.values() for m in box.messages)
    assert any("\\Seen" not in m.flags for box in src.boxes.values() for m in box.messages)


def test_weak_source_ids_are_reported(tmp_path):
    src, dst = filled_source(2), MemoryStore()
    src.stable_ids = False
    summary = run(src, dst, tmp_path / "j")
    assert any("identity is weaker" in n for n in summary.notices)


def test_bytes_in_flight_stay_bounded_and_a_big_message_travels_alone(tmp_path):
    """Memory follows the bytes in flight: with a 1 KB budget per worker the copy still finishes,
    the 50 KB message among small ones included, and nothing is left held afterwards."""
    src, dst = MemoryStore(), MemoryStore()
    for i in range(30):
        src.add(("INBOX",), message(i))
    src.add(("INBOX",), b"Message-ID: <big@x>\r\nSubject: big\r\n\r\n" + b"x" * 50_000 + b"\r\n")
    journal = Journal.open(tmp_path / "j")
    engine = Engine(
        lambda: src,
        lambda: dst,
        journal,
        CopyOptions(batch_bytes=512, batch_count=3, retry_delay=0.0),
    )
    seen: list[int] = []
    original = dst.append

    def watch(path, items):
        seen.append(engine._in_flight.used)
        assert engine._in_flight.used <= max(1024, sum(len(d) for _, d in items) + 1024)
        return original(path, items)

    dst.append = watch
    summary = engine.run()
    journal.close()
    assert summary.total("copied") == 31 and engine._in_flight.used == 0
    assert max(seen) >= 50_000  # the big one was held, alone
    assert contents(src) == contents(dst)


def test_a_big_message_after_small_ones_does_not_wait_for_itself(tmp_path):
    """Small messages fetched in one chunk, then one larger than the whole in-flight budget:
    the small ones must reach the writer (and free their bytes) before the big one is fetched."""
    src, dst = MemoryStore(), MemoryStore()
    for i in range(3):
        src.add(("INBOX",), message(i))
    src.add(("INBOX",), b"Message-ID: <big@x>\r\n\r\n" + b"y" * 20_000 + b"\r\n")
    journal = Journal.open(tmp_path / "j")
    done = threading.Event()
    result = {}

    def go():
        result["summary"] = Engine(
            lambda: src, lambda: dst, journal, CopyOptions(batch_bytes=4096, retry_delay=0.0)
        ).run()
        done.set()

    threading.Thread(target=go, daemon=True).start()
    assert done.wait(20), "the engine waited for bytes it held itself"
    journal.close()
    assert result["summary"].total("copied") == 4


class _Connection(MemoryStore):
    """One more connection to the same in-memory server: mailboxes shared, appends serialised
    by the server (here a lock) and slow enough for several connections to be worth it."""

    concurrent_appends = True
    server_lock = threading.Lock()

    def append(self, path, items):  # type: ignore[no-untyped-def]
        time.sleep(0.003)
        with self.server_lock:
            return super().append(path, items)


def _server(boxes: dict, opened: list[_Connection], drop_second_at: int | None = None):
    def open_target() -> _Connection:
        connection = _Connection(delimiter=".", label=f"dst#{len(opened)}")
        connection.boxes = boxes
        if len(opened) == 1:
            connection.drop_at_append = drop_second_at
        opened.append(connection)
        return connection

    return open_target


@pytest.mark.parametrize("drop", [None, 2])
@pytest.mark.parametrize("small_folders", [0, 2])
def test_workers_with_no_folder_left_append_for_the_others(
    drop: int | None, small_folders: int
) -> None:
    """A worker with no folder left (a POP3 inbox alone, or one big folder among small ones)
    appends the big folder's batches on its own connection; a drop on one of those connections
    is resumed; every message lands once."""
    src = MemoryStore(label="src")
    for i in range(60):
        src.add(INBOX, message(i), date=datetime(2020, 1, 1, tzinfo=UTC))
    for n in range(small_folders):
        src.add((f"small{n}",), message(100 + n))
    boxes: dict = {INBOX: MemoryStore().boxes[INBOX]}
    opened: list[_Connection] = []
    journal = Journal.in_memory()
    options = CopyOptions(workers=3, batch_count=2, retry_delay=0.0)
    summary = Engine(lambda: src, _server(boxes, opened, drop), journal, options).run()
    journal.close()
    assert summary.ok and summary.total("copied") == 60 + small_folders
    assert sorted(m.data for m in boxes[INBOX].messages) == sorted(src.bodies(INBOX))
    assert sum(1 for c in opened if c.appends) >= 2  # the idle workers' connections did append


def _slow_appends(store: MemoryStore, sizes: list[int], pause: float = 0.02) -> None:
    """Appends that take a while (fsyncs), so fetched batches pile up behind them."""
    original = store.append

    def append(path, items):
        sizes.append(len(items))
        time.sleep(pause)
        return original(path, items)

    store.append = append  # type: ignore[method-assign]


@pytest.mark.parametrize("group", [1, 4])
def test_a_writer_behind_commits_the_waiting_batches_together(tmp_path, group):
    """A target whose commit is costly (a local archive: fsyncs) takes the batches waiting for
    it in one append, up to its commit_group; each message still lands once, in order."""
    src, dst = MemoryStore(), MemoryStore()
    for i in range(40):
        src.add(("INBOX",), message(i))
    dst.commit_group = group
    sizes: list[int] = []
    _slow_appends(dst, sizes)
    journal = Journal.open(tmp_path / "j")
    engine = Engine(lambda: src, lambda: dst, journal, CopyOptions(batch_count=2))
    summary = engine.run()
    journal.close()
    assert summary.total("copied") == 40 and engine._in_flight.used == 0
    assert [m.data for m in dst.boxes[INBOX].messages] == [message(i) for i in range(40)]
    assert max(sizes) <= 2 * group  # never more than the group's batches
    if group == 1:
        assert sizes == [2] * 20
    else:
        assert len(sizes) < 20 and max(sizes) > 2  # batches that waited went together


def test_crash_in_a_grouped_commit_then_rerun_gives_each_message_exactly_once(tmp_path):
    reference = filled_source()
    probe = MemoryStore(delimiter=".")
    probe.commit_group = 4
    _slow_appends(probe, [], pause=0.005)
    run(filled_source(), probe, None)
    assert probe.appends > 3
    crashes = 0
    for k in range(1, probe.appends + 1):
        for when in ("before", "after"):
            src, dst = filled_source(), MemoryStore(delimiter=".")
            dst.commit_group = 4
            _slow_appends(dst, [], pause=0.005)
            setattr(dst, f"crash_{when}_append", k)
            try:  # groups depend on timing: a run may make fewer appends than the probe did
                run(src, dst, tmp_path / f"j{when}{k}")
            except Crash:
                crashes += 1
            setattr(dst, f"crash_{when}_append", None)
            run(src, dst, tmp_path / f"j{when}{k}")
            assert contents(dst) == contents(reference), f"crash {when} append {k}"
    assert crashes >= probe.appends


def test_a_batchs_answers_share_the_next_batchs_transaction(tmp_path):
    """With batches waiting, each 'pending' transaction also writes the answers for the batch
    before (one fsync a batch, not two); the last answers are written alone; none is lost."""
    src, dst = MemoryStore(), MemoryStore()
    for i in range(40):
        src.add(("INBOX",), message(i))
    _slow_appends(dst, [])
    journal = Journal.open(tmp_path / "j")
    joined, alone = [], []
    begin, record = journal.begin, journal.record

    def counting_begin(*args, after=None):
        joined.append(after is not None)
        return begin(*args, after=after)

    def counting_record(answers):
        alone.append(answers)
        return record(answers)

    journal.begin, journal.record = counting_begin, counting_record  # type: ignore[method-assign]
    summary = Engine(lambda: src, lambda: dst, journal, CopyOptions(batch_count=2)).run()
    assert summary.total("copied") == 40
    assert len(joined) == 20 and sum(joined) >= 15  # the reader keeps batches waiting
    assert len(alone) <= 20 - sum(joined)
    assert journal.pending(INBOX, str(src.boxes[INBOX].validity), INBOX) == []
    journal.close()
    again = run(src, dst, tmp_path / "j")  # everything is known as copied
    assert again.total("copied") == 0 and again.total("skipped") == 40


def test_answers_written_with_the_next_batch_are_counted_once_when_it_fails(tmp_path):
    """The batch after a written-with-the-next one loses its connection: the answers already
    in the journal are neither written nor counted again, and the summary adds up."""
    src, dst = MemoryStore(), MemoryStore()
    for i in range(40):
        src.add(("INBOX",), message(i))
    dst.drop_at_append = 3
    _slow_appends(dst, [])
    summary = run(src, dst, tmp_path / "j", retries=2)
    assert summary.ok and summary.total("copied") == 40
    assert contents(src) == contents(dst)
