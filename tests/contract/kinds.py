"""The stores the contract suite runs over: one small factory object per kind of store.

A kind knows how to make an empty target, how to seed a source with given messages (folders,
flags, INTERNALDATEs), which promises its store makes (its capabilities), what it gives back for
what was put in (CRLF or LF, dates from INTERNALDATE or from headers) and how a writer of it dies
half-way through an append (its torn write). Stores are built the way migrator.endpoints builds
them for the command line; the tests then use only the Source / Target interface.

A new store or a new server plugs in as one more StoreKind subclass here and one more entry in
conftest.KINDS; every promise of tests/contract/test_promises.py then runs over it.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from migrator.endpoints import AccessOptions, ArchiveEndpoint, open_store, parse_endpoint
from migrator.model import FolderPath, MessageRef, crlf_size, message_key, parse_display_name
from tests.children import wait_for_child
from tests.corpus import Msg
from tests.unit.memstore import MemoryStore

#: What every kind's box opens: all the stores here that are targets are sources too.
Store = Any


def path_of(msg: Msg) -> FolderPath:
    return parse_display_name(msg.folder)


def ref_of(msg: Msg, ident: str = "src") -> MessageRef:
    """The ref a source would describe ``msg`` with (what the engine hands a target)."""
    size = crlf_size(msg.data)
    return MessageRef(ident, size, frozenset(msg.flags), msg.date, message_key(msg.data, size))


def header_date(data: bytes) -> datetime:
    """The Date: field of a message: what a store without INTERNALDATE (POP3) dates it by."""
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"date":
            return parsedate_to_datetime(value.decode().strip())
    raise AssertionError(f"no Date: field in {data[:80]!r}")


def to_lf(data: bytes) -> bytes:
    """LF line ends, as the archives serve a message (written here, not taken from the stores'
    own helpers, so that what a store must give back is not computed by the store's code)."""
    return data.replace(b"\r\n", b"\n")


class Box:
    """One store's mail: ``open(role)`` gives a new, unconnected store over it each time, as a
    rerun of the command would."""

    def __init__(self, opener: Callable[[str], Store], where: Path | None = None) -> None:
        self._opener = opener
        #: The directory of a local store (for its torn write and its leftovers).
        self.where = where

    def open(self, role: str = "source") -> Store:
        return self._opener(role)


class StoreKind:
    """What one kind of store promises, and how to make one."""

    name = ""
    #: The store can be written to (a Target), not only read.
    target = True
    #: Holds folders besides INBOX (POP3 has only INBOX).
    folders = True
    #: Keeps each message's flags (POP3 has none).
    keeps_flags = True
    #: Keeps each message's INTERNALDATE; otherwise it dates a message by its Date: field.
    keeps_date = True
    #: Serves a message's bytes as they were given (CRLF); otherwise with LF line ends.
    crlf = True
    #: Source.can_delete and Target.can_update as the store must advertise them.
    can_delete = True
    can_update = True
    #: append() tells each new message's id.
    answers_ids = True

    # -- what goes in, what comes out -----------------------------------------------------------

    def fitting(self, msgs: Sequence[Msg]) -> list[Msg]:
        """Those of ``msgs`` this kind can hold (POP3: only INBOX's)."""
        return [m for m in msgs if self.folders or path_of(m) == ("INBOX",)]

    def stored(self, data: bytes) -> bytes:
        return data if self.crlf else to_lf(data)

    def flags(self, msg: Msg) -> frozenset[str]:
        return frozenset(msg.flags) if self.keeps_flags else frozenset()

    def date(self, msg: Msg) -> datetime:
        return (msg.date if self.keeps_date else header_date(msg.data)).astimezone(UTC)

    # -- making stores --------------------------------------------------------------------------

    def source(self, msgs: Sequence[Msg]) -> Box:
        """A store holding ``msgs`` (in order), with their folders, flags and dates."""
        raise NotImplementedError

    def empty(self) -> Box:
        """An empty store to copy into."""
        raise NotImplementedError

    def tear(self, box: Box, folder: FolderPath, msgs: Sequence[Msg]) -> None:
        """Leave behind what a writer killed half-way through appending ``msgs`` leaves. Nothing
        for the memory store, which has no half-way: the engine's own crash (journal rows
        pending, the batch already in the store), which every kind goes through, is its tear."""

    def leftovers(self, box: Box) -> list[str]:
        """Files a torn write leaves that recovery must clear (none for a server)."""
        return []


def seed_with_appends(box: Box, msgs: Sequence[Msg]) -> None:
    """Fill a local store through its own append (the only way into an archive)."""
    store = box.open("target")
    with store:
        for msg in msgs:
            store.ensure_folder(path_of(msg))
            [result] = store.append(path_of(msg), [(ref_of(msg), msg.data)])
            assert result.ok, result.error


class MemoryKind(StoreKind):
    """tests/unit/memstore.py: the engine's unit tests' store, the contract's reference."""

    name = "memory"

    def source(self, msgs: Sequence[Msg]) -> Box:
        store = MemoryStore()
        for msg in msgs:
            store.add(path_of(msg), msg.data, msg.flags, msg.date)
        return Box(lambda role: store)

    def empty(self) -> Box:
        store = MemoryStore(delimiter=".")
        return Box(lambda role: store)


class ArchiveKind(StoreKind):
    """mbox: and maildir: endpoints, built by endpoints.open_store as the command line does."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._made = 0

    def _box(self) -> Box:
        self._made += 1
        where = self.root / f"{self.name}-{self._made}"

        def opener(role: str) -> Store:
            return open_store(ArchiveEndpoint(self.name, where), None, role)

        return Box(opener, where)

    def source(self, msgs: Sequence[Msg]) -> Box:
        box = self._box()
        seed_with_appends(box, msgs)
        return box

    def empty(self) -> Box:
        return self._box()


class MboxKind(ArchiveKind):
    name = "mbox"
    crlf = False
    can_delete = False  # removing a message rewrites the file (see migrator/stores/mbox.py)
    can_update = False
    answers_ids = True

    def tear(self, box: Box, folder: FolderPath, msgs: Sequence[Msg]) -> None:
        assert box.where is not None
        before = sum(f.stat().st_size for f in box.where.rglob("*.mbox"))
        mbox_file = cut_file_writes(lambda p: p.suffix == ".mbox" and p.name[0] != ".")
        die_mid_append(box, folder, msgs, mbox_file)
        after = sum(f.stat().st_size for f in box.where.rglob("*.mbox"))
        assert after > before, "the killed writer wrote nothing"

    def leftovers(self, box: Box) -> list[str]:
        assert box.where is not None
        return sorted(
            p.name for p in box.where.rglob("*") if p.name.startswith(".") or p.suffix == ".lock"
        )


class MaildirKind(ArchiveKind):
    name = "maildir"
    crlf = False

    def tear(self, box: Box, folder: FolderPath, msgs: Sequence[Msg]) -> None:
        die_mid_append(box, folder, msgs, cut_file_writes(lambda p: p.parent.name == "tmp"))
        assert self.leftovers(box), "the killed writer left nothing in tmp/"

    def leftovers(self, box: Box) -> list[str]:
        assert box.where is not None
        return sorted(str(p) for p in box.where.rglob("tmp/*"))


def die_mid_append(
    box: Box, folder: FolderPath, msgs: Sequence[Msg], cut: Callable[[Sequence[Msg]], None]
) -> None:
    """Fork a writer that appends ``msgs`` and is SIGKILLed (no cleanup, like a power cut) half
    way through sending their bytes: ``cut`` arms that in the child (cut_file_writes,
    cut_socket_sends)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            cut(msgs)
            store = box.open("target")
            store.connect()
            store.ensure_folder(folder)
            store.append(folder, [(ref_of(m), m.data) for m in msgs])
        finally:
            os._exit(3)  # the append finished: no tear (the parent's assertion says so)
    status = wait_for_child(pid)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the writer was not killed mid-append (status {status}): does the store still write "
        "through os.write/os.writev (files) or sendall (sockets)? see tests/contract/kinds.py"
    )


def _die_after_half(send: Callable[[Any, bytes], Any], sink: Any, data: bytes) -> None:
    send(sink, data[: max(1, len(data) // 2)])
    os.kill(os.getpid(), signal.SIGKILL)


def cut_file_writes(mail_file: Callable[[Path], bool]) -> Callable[[Sequence[Msg]], None]:
    """Die at the first write to a file ``mail_file`` accepts, half of it written."""

    def arm(msgs: Sequence[Msg]) -> None:
        real_write, real_writev = os.write, os.writev

        def torn(fd: int) -> bool:
            return mail_file(Path(os.readlink(f"/proc/self/fd/{fd}")))

        def write(fd: int, data: Any) -> int:
            if torn(fd):
                _die_after_half(real_write, fd, bytes(data))
            return real_write(fd, data)

        def writev(fd: int, parts: Any) -> int:
            if torn(fd):
                _die_after_half(real_write, fd, b"".join(bytes(p) for p in parts))
            return real_writev(fd, parts)

        os.write, os.writev = write, writev

    return arm


def cut_socket_sends(msgs: Sequence[Msg]) -> None:
    """Die at the first send that carries the first message's first line, half of it sent: the
    server sees the connection drop in the middle of the message."""
    marker = msgs[0].data.split(b"\r\n", 1)[0]
    for cls in (ssl.SSLSocket, socket.socket):
        real = cls.sendall

        def sendall(sock: Any, data: Any, *args: Any, real: Any = real) -> Any:
            if marker in bytes(data):
                _die_after_half(real, sock, bytes(data))
            return real(sock, data, *args)

        cls.sendall = sendall  # type: ignore[method-assign]


class ServerKind(StoreKind):
    """A store on one of the session's real servers; each box is a new user of its own."""

    scheme = "imaps"

    def __init__(self, name: str, server: Any, account: Callable[..., Any]) -> None:
        self.name = name
        self.server = server
        self._account = account

    def _box(self, msgs: Sequence[Msg]) -> Box:
        acct = self._account(self.server)
        if msgs:
            acct.seed(msgs)
        endpoint = parse_endpoint(acct.url(self.scheme))
        access = AccessOptions(
            secret=lambda: acct.password, ca_file=self.server.ca_file, timeout=30.0
        )

        def opener(role: str) -> Store:
            return open_store(endpoint, access, role)

        return Box(opener)

    def source(self, msgs: Sequence[Msg]) -> Box:
        return self._box(msgs)

    def empty(self) -> Box:
        return self._box([])


class ImapKind(ServerKind):
    """IMAP (ImapStore) on Dovecot or Cyrus."""

    def tear(self, box: Box, folder: FolderPath, msgs: Sequence[Msg]) -> None:
        """An APPEND cut off in the middle of a message: the server must keep none of it."""
        die_mid_append(box, folder, msgs, cut_socket_sends)


class Pop3Kind(ServerKind):
    """POP3 (Pop3Store) as a source: the INBOX of a Dovecot user, seeded over IMAP."""

    scheme = "pop3s"
    target = False
    folders = False
    keeps_flags = False
    keeps_date = False
    can_update = False
    answers_ids = False

    def empty(self) -> Box:
        raise AssertionError("POP3 is never a target")
