"""POP3 as a source: one folder (INBOX), identity by UIDL, dates from Received headers.

POP3 numbers messages afresh in every session, so a session maps UIDL -> number when it starts
and every command looks the number up again: a generator that outlives a session (the engine may
delete a batch, which ends the session with QUIT) goes on in the next one.

The protocol (the wire, logging in, numbering a session's messages) is
migrator.stores.pop3wire; this module is the store over it: sessions over time and their
retries, listing, fetching in a pipelined window, deleting.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Container, Iterator, Sequence

from migrator.errors import ConnectError, FolderError, MessageError, StoreError
from migrator.headers import header_block as header_block
from migrator.headers import message_date, message_key
from migrator.model import INBOX, Folder, FolderPath, FolderState, MessageRef
from migrator.stores.base import ServerAccess, Source
from migrator.stores.pop3wire import (
    TOP_BATCH,
    Dialer,
    Dropped,
    Refused,
    Session,
    TooLong,
    Wire,
    read_headers,
    retr_limit,
    server_said,
)

#: RETR commands kept in flight beyond the one being read, and the LIST octets they may add.
RETR_WINDOW = 16
RETR_WINDOW_BYTES = 1024 * 1024
#: Reconnects after a dropped connection before a transient StoreError, and the first pause
#: between them (doubling each time).
RECONNECTS = 3
BACKOFF_SECONDS = 1.0


# --- the store ------------------------------------------------------------------------------


class Pop3Store(Source):
    """A POP3 mailbox as a source. Mail stays on the server unless ``delete`` is called."""

    can_delete = True

    def __init__(
        self,
        access: ServerAccess,
        *,
        flags: frozenset[str] = frozenset(),
        apop: bool = False,
        retries: int = RECONNECTS,
        backoff: float = BACKOFF_SECONDS,
    ) -> None:
        """``flags`` are given to every message (POP3 has none; for ``--flags seen``); ``apop``
        logs in with APOP instead of SASL PLAIN or USER/PASS; after a dropped connection,
        ``retries`` reconnects are tried, ``backoff`` seconds apart and doubling, before a
        transient StoreError."""
        self.access = access
        self.label = access.label or f"pop3://{access.user}@{access.host}:{access.port}"
        self.flags = frozenset(flags)
        self.apop = apop
        self.retries = retries
        self.backoff = backoff
        #: True when the server has no UIDL and ids are digests of the headers: two messages with
        #: identical headers may be told apart only by their order.
        self.weak_ids = False
        self.stable_ids = True
        self._session: Session | None = None
        self._connected_once = False
        self._attempt = 0

    # -- sessions --------------------------------------------------------------------------

    def connect(self) -> None:
        self._ensure()

    def close(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if session.outstanding == 0 and not session.deleting:
            with contextlib.suppress(Dropped, Refused):
                session.wire.command("QUIT")
        session.wire.close()

    def _drop(self) -> None:
        """End the session without QUIT, so that nothing marked for deletion is applied."""
        session, self._session = self._session, None
        if session is not None:
            session.wire.close()

    def _ensure(self, owner: object | None = None) -> Session:
        """The open session, opened if need be. Until a first login succeeds every failure is a
        ConnectError; after it, a network failure is retried with backoff (transient)."""
        session = self._session
        if session is not None and session.outstanding and session.owner is not owner:
            self._drop()  # another generator left answers unread on it; start afresh
        while self._session is None:
            try:
                self._session = self._open()
            except Dropped as exc:
                if not self._connected_once:
                    raise ConnectError(f"{self.label}: {exc}") from None
                self._retrying(str(exc))
        self._connected_once = True
        return self._session

    def _retrying(self, reason: str) -> None:
        """Drop the session and back off; after the last attempt, a transient StoreError."""
        self._drop()
        self._attempt += 1
        if self._attempt > self.retries:
            self._attempt = 0
            raise StoreError(
                f"{self.label}: the connection was lost and {self.retries} reconnect(s) failed "
                f"(last: {reason}); run the command again to go on",
                transient=True,
            )
        if self.backoff > 0:
            time.sleep(self.backoff * 2 ** (self._attempt - 1))

    def _open(self) -> Session:
        """A new logged-in session (see pop3wire.Dialer); a server without UIDL makes the ids
        weak for the rest of this store's life."""
        session = Dialer(self.access, self.label, self.apop).open()
        if session.weak_ids:
            self.weak_ids = True
            self.stable_ids = False
        return session

    # -- Source ----------------------------------------------------------------------------

    def list_folders(self) -> list[Folder]:
        return [Folder(INBOX)]

    def _check(self, path: FolderPath) -> None:
        if tuple(path) != INBOX:
            raise FolderError(f"{self.label}: POP3 has only INBOX, not {'/'.join(path)!r}")

    def open_folder(self, path: FolderPath) -> FolderState:
        self._check(path)
        session = self._ensure()
        return FolderState("pop3-headers" if self.weak_ids else "pop3", len(session.order))

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        """Messages in server order, those in ``skip`` left out before any TOP. No answer is left
        unread between two yields, so the engine may fetch or delete while it lists."""
        self._check(path)
        wanted = [uid for uid in self._ensure().order if uid not in skip]
        for start in range(0, len(wanted), TOP_BATCH):
            chunk = wanted[start : start + TOP_BATCH]
            while True:
                session = self._ensure()
                try:
                    refs = self._describe(session, chunk)
                except Dropped as exc:
                    self._retrying(str(exc))
                    continue
                self._attempt = 0
                break
            yield from refs

    def _describe(self, session: Session, ids: Sequence[str]) -> list[MessageRef]:
        """Refs for those of ``ids`` still on the server, in order."""
        present = [uid for uid in ids if uid in session.numbers]
        if not session.described:
            headers = read_headers(session, [session.numbers[uid] for uid in present])
        refs = []
        for uid in present:
            number = session.numbers[uid]
            size = session.sizes.get(number, 0)
            if session.described:
                date, key = session.described[uid]
            elif number in headers:
                date, key = message_date(headers[number]), message_key(headers[number], size)
            else:  # TOP refused: listed all the same, so that fetch records why it fails
                date, key = None, ""
            refs.append(MessageRef(id=uid, size=size, flags=self.flags, date=date, key=key))
        return refs

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        """RETR each message in a small pipelined window (when the server allows it), so that one
        message at a time is held here. After a dropped connection the RETRs still unanswered
        are sent again in the new session."""
        self._check(path)
        owner = object()
        sent: deque[tuple[MessageRef, int | None]] = deque()  # RETRs on the wire, in order
        session: Session | None = None
        done = 0
        try:
            while done < len(refs):
                current = self._ensure(owner)
                if current is not session:
                    session = current
                    sent.clear()
                session.owner = owner
                try:
                    self._fill(session, refs, done, sent)
                    ref, number = sent[0]
                    result: bytes | MessageError
                    if number is None:
                        result = MessageError("the message is no longer on the POP3 server")
                    else:
                        session.outstanding -= 1
                        try:
                            session.wire.status()
                            result = session.wire.body(retr_limit(session.sizes.get(number, 0)))
                        except Refused as exc:
                            result = MessageError(
                                f"the server refused RETR: {server_said(exc.text)}"
                            )
                        except TooLong:
                            listed = session.sizes.get(number, 0)
                            result = MessageError(
                                f"the server sent more than {retr_limit(listed)} bytes for a "
                                f"message its LIST gave as {listed}; the rest was not read"
                            )
                            self._drop()  # out of step: the next message starts afresh
                except Dropped as exc:
                    session = None
                    self._retrying(str(exc))
                    continue
                sent.popleft()
                self._attempt = 0
                done += 1
                yield ref, result
        finally:
            if session is not None and session is self._session and session.outstanding:
                self._drop()  # left with answers unread: the stream is out of step

    def _fill(
        self,
        session: Session,
        refs: Sequence[MessageRef],
        done: int,
        sent: deque[tuple[MessageRef, int | None]],
    ) -> None:
        """Send RETRs until the window after ``done`` is full: a few commands, and a bounded
        number of octets beyond the message being read."""
        window = RETR_WINDOW if session.pipelining else 1
        queued = sum(ref.size for ref, n in list(sent)[1:] if n is not None)
        commands = []
        nxt = done + len(sent)
        while nxt < len(refs) and len(sent) < window:
            ref = refs[nxt]
            if sent and queued + ref.size > RETR_WINDOW_BYTES:
                break
            number = session.numbers.get(ref.id)
            if sent and number is not None:
                queued += ref.size
            sent.append((ref, number))
            if number is not None:
                commands.append(f"RETR {number}")
            nxt += 1
        if commands:
            session.outstanding += len(commands)
            session.wire.send(*commands)

    def delete(self, path: FolderPath, ids: Sequence[str]) -> None:
        """DELE these messages, then QUIT, which is when the server applies them. If the
        connection breaks before QUIT is answered nothing may be deleted: the store reconnects
        and does it again (ids already gone are skipped); after the last attempt, a transient
        StoreError. The next call opens a new session."""
        self._check(path)
        if not ids:
            return
        while True:
            session = self._ensure()
            try:
                self._dele_quit(session, ids)
            except Dropped as exc:
                self._retrying(f"{exc}; nothing was deleted in that session")
                continue
            self._attempt = 0
            return

    def _dele_quit(self, session: Session, ids: Sequence[str]) -> None:
        wire = session.wire
        numbers = list(dict.fromkeys(session.numbers[i] for i in ids if i in session.numbers))
        session.deleting = True
        refused: list[str] = []
        step = TOP_BATCH if session.pipelining else 1
        for start in range(0, len(numbers), step):
            chunk = numbers[start : start + step]
            wire.send(*(f"DELE {n}" for n in chunk))
            for _ in chunk:
                try:
                    wire.status()
                except Refused as exc:
                    refused.append(exc.text)
        try:
            self._quit(wire)
        finally:
            self._drop()
        if refused:
            raise StoreError(
                f"{self.label}: the server refused to delete {len(refused)} message(s) "
                f"('{server_said(refused[0])}'); they stay on the server and a rerun tries again",
                transient=True,
            )

    def _quit(self, wire: Wire) -> None:
        """QUIT: the server applies the DELEs now. A refusal ("-ERR [SYS/TEMP] Server shutting
        down" when the session is killed) means they were not all applied: do it again."""
        try:
            wire.command("QUIT")
        except Refused as exc:
            raise Dropped(f"the server refused QUIT: '{server_said(exc.text)}'") from None
