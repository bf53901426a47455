"""The engine under faults (issue 8), over in-memory stores: retries count only attempts that
moved nothing, batches shrink after a drop, and an append left in doubt that lands late is
recognised rather than copied twice."""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from migrator.checkpoint import Journal
from migrator.engine import CopyOptions, Engine
from migrator.errors import ConnectError, StoreError
from tests.unit.memstore import Crash, MemoryStore, Stored

INBOX = ("INBOX",)


def message(i: int) -> bytes:
    return f"Message-ID: <f{i}@example.org>\r\nSubject: {i}\r\n\r\n{'x' * 2000}\r\n".encode()


def source(n: int) -> MemoryStore:
    src = MemoryStore(label="src")
    for i in range(n):
        src.add(INBOX, message(i), date=datetime(2020, 1, 1, tzinfo=UTC))
    return src


class DropsEveryFewAppends(MemoryStore):
    """Loses the connection after every ``every`` bytes appended: a flaky link."""

    def __init__(self, every: int) -> None:
        super().__init__(delimiter=".", label="dst")
        self.every = every
        self.budget = every
        self.drops = 0
        self.sizes: list[int] = []

    def connect(self) -> None:
        if not self.connected:
            self.budget = self.every
        super().connect()

    def append(self, path, items):  # type: ignore[no-untyped-def]
        size = sum(len(d) for _, d in items)
        self.sizes.append(size)
        if self.connected and size > self.budget:
            self.connected = False
            self.drops += 1
            raise StoreError("dst: connection lost", transient=True)
        self.budget -= size
        return super().append(path, items)


def run(src, dst, path, **options):  # type: ignore[no-untyped-def]
    options.setdefault("retry_delay", 0.0)
    journal = Journal.open(path)
    try:
        return Engine(lambda: src, lambda: dst, journal, CopyOptions(**options)).run()
    finally:
        journal.close()


def test_a_link_that_drops_every_50kb_finishes_with_few_retries(tmp_path):
    src, dst = source(300), DropsEveryFewAppends(50_000)
    summary = run(src, dst, tmp_path / "j", retries=2, min_batch_bytes=16_000)
    assert summary.ok and summary.total("copied") == 300
    assert dst.drops >= 10  # many drops, yet never 3 attempts in a row without progress
    assert Counter(dst.bodies(INBOX)) == Counter(src.bodies(INBOX))
    assert max(dst.sizes[-5:]) <= 100_000  # batches shrank after the drops


def test_attempts_without_progress_give_up_and_keep_the_error_class(tmp_path):
    class Unreachable(MemoryStore):
        def connect(self) -> None:
            if self.connects:
                raise ConnectError("dst: cannot connect (Connection refused)")
            super().connect()

        def append(self, path, items):  # type: ignore[no-untyped-def]
            self.connected = False
            raise StoreError("dst: connection lost", transient=True)

    with pytest.raises(ConnectError, match="gave up after 3 reconnects in a row without"):
        run(source(5), Unreachable(delimiter="."), tmp_path / "j", retries=3)


class LateLanding(MemoryStore):
    """An IMAP-like target: an append cut off by a crash lands a little later (bytes that were
    already in the kernel's buffers when the process died)."""

    late_append_window = 0.3

    def __init__(self) -> None:
        super().__init__(delimiter=".", label="dst")
        self.in_flight: list[tuple[float, list[bytes]]] = []
        self.crash_next = False

    def _land(self) -> None:
        now = time.monotonic()
        for due, datas in [x for x in self.in_flight if x[0] <= now]:
            box = self.boxes[INBOX]
            for data in datas:
                box.messages.append(Stored(box.next_uid, data))
                box.next_uid += 1
            self.in_flight.remove((due, datas))

    def index(self, path):  # type: ignore[no-untyped-def]
        self._land()
        return super().index(path)

    def append(self, path, items):  # type: ignore[no-untyped-def]
        if self.crash_next:
            self.crash_next = False
            self.in_flight.append((time.monotonic() + 0.2, [d for _, d in items]))
            raise Crash()
        return super().append(path, items)


def test_an_append_that_lands_after_the_crash_is_not_copied_twice(tmp_path):
    src, dst = source(20), LateLanding()
    dst.crash_next = True
    with pytest.raises(Crash):
        run(src, dst, tmp_path / "j")
    assert dst.in_flight and not dst.bodies(INBOX)
    started = time.monotonic()
    summary = run(src, dst, tmp_path / "j")
    assert time.monotonic() - started >= 0.2  # it waited for the late append
    assert summary.ok
    assert Counter(dst.bodies(INBOX)) == Counter(src.bodies(INBOX))  # each exactly once


def test_a_target_without_late_appends_does_not_wait(tmp_path):
    src, dst = source(20), MemoryStore(delimiter=".")
    dst.crash_before_append = 1
    with pytest.raises(Crash):
        run(src, dst, tmp_path / "j")
    dst.crash_before_append = None
    started = time.monotonic()
    assert run(src, dst, tmp_path / "j").ok
    assert time.monotonic() - started < 0.5
    assert Counter(dst.bodies(INBOX)) == Counter(src.bodies(INBOX))
