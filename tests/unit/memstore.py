"""An in-memory store for the engine's unit tests: pure logic, no protocol.

It can be told to fail: drop the connection after N appends, refuse some messages, or crash the
process-equivalent (raise a BaseException) between steps, like mbsync's run-tests.pl."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from migrator.errors import MessageError, StoreError
from migrator.model import (
    INBOX,
    UNCOPIED_FLAGS,
    Folder,
    FolderPath,
    FolderState,
    MessageRef,
    crlf_size,
    message_key,
)
from migrator.stores.base import AppendResult, FlagChange, Source, Target


@dataclass
class Stored:
    uid: int
    data: bytes
    flags: frozenset[str] = frozenset()
    date: datetime | None = None


@dataclass
class Mailbox:
    validity: int = 1
    next_uid: int = 1
    messages: list[Stored] = field(default_factory=list)
    special_use: str | None = None


class Crash(BaseException):
    """Stands for SIGKILL: escapes every `except Exception`."""


class MemoryStore(Source, Target):
    can_delete = True

    def __init__(self, delimiter: str | None = "/", label: str = "memory") -> None:
        self.label = label
        self.delimiter = delimiter
        self.boxes: dict[FolderPath, Mailbox] = {INBOX: Mailbox()}
        self.connected = False
        self.connects = 0
        #: Raise a transient StoreError at the n-th append call (1-based), once.
        self.drop_at_append: int | None = None
        #: Raise Crash after the n-th append call has stored its messages.
        self.crash_after_append: int | None = None
        #: Raise Crash at the start of the n-th append call, before storing anything.
        self.crash_before_append: int | None = None
        #: Messages containing this marker are refused.
        self.refuse_marker: bytes | None = None
        self.appends = 0
        self.max_message_size = None
        #: Calls of update_flags (one per folder and pass, whatever the number of messages).
        self.flag_updates = 0
        #: Appends that do not tell the new message's id (a server without UIDPLUS).
        self.no_uidplus = False
        #: Move the messages, then raise Crash before the caller hears of it, once.
        self.crash_in_move = False

    # helpers for tests
    def add(self, folder: FolderPath, data: bytes, flags: Iterable[str] = (), date=None) -> None:
        box = self.boxes.setdefault(folder, Mailbox())
        box.messages.append(
            Stored(box.next_uid, data, frozenset(flags), date or datetime(2020, 1, 1, tzinfo=UTC))
        )
        box.next_uid += 1

    def bodies(self, folder: FolderPath) -> list[bytes]:
        return [m.data for m in self.boxes.get(folder, Mailbox()).messages]

    # Store
    def connect(self) -> None:
        if not self.connected:
            self.connected = True
            self.connects += 1

    def close(self) -> None:
        self.connected = False

    def list_folders(self) -> list[Folder]:
        return [Folder(path, box.special_use) for path, box in self.boxes.items()]

    # Source
    def open_folder(self, path: FolderPath) -> FolderState:
        box = self.boxes[path]
        return FolderState(str(box.validity), len(box.messages))

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        for m in self.boxes[path].messages:
            if str(m.uid) in skip:
                continue
            size = crlf_size(m.data)
            key = message_key(m.data, size) if keys else ""
            yield MessageRef(str(m.uid), size, m.flags, m.date, key)

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        by_uid = {str(m.uid): m for m in self.boxes[path].messages}
        for ref in refs:
            m = by_uid.get(ref.id)
            yield ref, (m.data if m else MessageError("vanished"))

    def delete(self, path: FolderPath, ids: Sequence[str]) -> None:
        gone = set(ids)
        box = self.boxes[path]
        box.messages = [m for m in box.messages if str(m.uid) not in gone]

    # Target
    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        self.boxes.setdefault(path, Mailbox())

    def index(self, path: FolderPath) -> list[str]:
        if path not in self.boxes:
            return []
        return [r.key for r in self.list_messages(path)]

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        if not self.connected:
            raise StoreError(f"{self.label}: not connected", transient=True)
        self.appends += 1
        if self.crash_before_append == self.appends:
            raise Crash()
        if self.drop_at_append == self.appends:
            self.drop_at_append = None
            self.connected = False
            raise StoreError(f"{self.label}: connection lost", transient=True)
        box = self.boxes[path]
        results = []
        for ref, data in items:
            if self.refuse_marker and self.refuse_marker in data:
                results.append(AppendResult(error="refused by test"))
                continue
            box.messages.append(Stored(box.next_uid, data, ref.flags - UNCOPIED_FLAGS, ref.date))
            target_id = None if self.no_uidplus else f"{box.validity}:{box.next_uid}"
            results.append(AppendResult(target_id=target_id))
            box.next_uid += 1
        if self.crash_after_append == self.appends:
            raise Crash()
        return results

    # Later passes (migrator.converge)
    can_update = True

    def _by_id(self, path: FolderPath) -> dict[str, Stored]:
        box = self.boxes.get(path)
        return {f"{box.validity}:{m.uid}": m for m in box.messages} if box else {}

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        return set(ids) & set(self._by_id(path))

    def ids_by_key(self, path: FolderPath) -> list[tuple[str, str]]:
        return [(i, message_key(m.data, crlf_size(m.data))) for i, m in self._by_id(path).items()]

    def update_flags(self, path: FolderPath, changes: Sequence[FlagChange]) -> None:
        self.flag_updates += 1
        by_id = self._by_id(path)
        for change in changes:
            for i in change.ids:
                if i in by_id:
                    m = by_id[i]
                    m.flags = (m.flags | change.add) - change.remove

    def remove(self, path: FolderPath, ids: Sequence[str]) -> None:
        gone = {self._by_id(path)[i].uid for i in ids if i in self._by_id(path)}
        box = self.boxes[path]
        box.messages = [m for m in box.messages if m.uid not in gone]

    def move(self, path: FolderPath, ids: Sequence[str], to: FolderPath) -> list[str | None]:
        by_id = self._by_id(path)
        if self.crash_in_move:
            self.crash_in_move = False
            moving = [by_id[i] for i in ids if i in by_id]
            self.remove(path, ids)
            into = self.boxes.setdefault(to, Mailbox())
            for m in moving:
                into.messages.append(Stored(into.next_uid, m.data, m.flags, m.date))
                into.next_uid += 1
            raise Crash()
        new: list[str | None] = []
        into = self.boxes.setdefault(to, Mailbox())
        for i in ids:
            m = by_id.get(i)
            if m is None:
                new.append(None)
                continue
            into.messages.append(Stored(into.next_uid, m.data, m.flags, m.date))
            new.append(f"{into.validity}:{into.next_uid}")
            into.next_uid += 1
        self.remove(path, [i for i in ids if i in by_id])
        return new
