"""Small scriptable IMAP and POP3 servers that misbehave on purpose, for the tests of issue 19.

Loopback only (they listen on 127.0.0.1), bounded in time (every socket has a timeout, every
thread is a daemon, and a watchdog closes everything at ``lifetime`` seconds), and they stop by
themselves. A test subclasses the session class and overrides the command it wants to break::

    class EchoingLogin(ImapSession):
        def do_LOGIN(self, tag, args):
            self.send(tag + b" NO bad password echo: " + args + b"\\r\\n")

    with RogueServer(EchoingLogin, mailbox) as server:
        run migrator against imap://alice@127.0.0.1:{server.port}?tls=none

``server.logins`` counts LOGIN / AUTHENTICATE / USER commands, ``server.connections`` the
connections accepted.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["ImapSession", "Message", "Pop3Session", "RogueServer", "message"]

_TICK = 0.25


@dataclass
class Message:
    uid: int
    body: bytes
    flags: bytes = b""
    #: What RFC822.SIZE / LIST claim; the real size when None.
    claimed: int | None = None

    @property
    def size(self) -> int:
        return len(self.body) if self.claimed is None else self.claimed


def message(n: int, size: int = 0) -> bytes:
    """A small distinct message, padded to about ``size`` bytes."""
    head = (
        f"Message-ID: <rogue-{n}@rogue.example>\r\nSubject: rogue {n}\r\n"
        "Date: Mon, 4 Mar 2019 05:06:07 +0000\r\nFrom: a@rogue.example\r\n\r\n"
    ).encode()
    body = b"body\r\n"
    if size > len(head) + len(body):
        line = b"x" * 76 + b"\r\n"
        body += line * ((size - len(head) - len(body)) // len(line))
    return head + body


@dataclass
class Mailbox:
    folders: dict[str, list[Message]] = field(default_factory=dict)


class _Base:
    """One connection: line and byte I/O with a timeout, and the server's counters."""

    def __init__(self, sock: socket.socket, server: RogueServer) -> None:
        self.sock = sock
        self.server = server
        self.file = sock.makefile("rb")
        self.mailbox = server.mailbox

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        line = self.file.readline(1024 * 1024)
        if not line:
            raise EOFError
        return line

    def run(self) -> None:
        raise NotImplementedError


class ImapSession(_Base):
    """A minimal IMAP4rev1 server for one client: enough for migrator as a source (LOGIN,
    AUTHENTICATE PLAIN, LIST, EXAMINE/SELECT, UID SEARCH, UID FETCH, LOGOUT)."""

    capabilities = b"IMAP4rev1 AUTH=PLAIN UIDPLUS"
    selected: str | None = None

    def run(self) -> None:
        self.send(b"* OK [CAPABILITY " + self.capabilities + b"] rogue ready\r\n")
        while True:
            line = self.readline().rstrip(b"\r\n")
            tag, _, rest = line.partition(b" ")
            command, _, args = rest.partition(b" ")
            name = command.upper().decode("ascii", "replace")
            if name == "UID":
                sub, _, args = args.partition(b" ")
                name = "UID_" + sub.upper().decode("ascii", "replace")
            handler = getattr(self, "do_" + name, None)
            if handler is None:
                self.send(tag + b" BAD unknown command\r\n")
                continue
            if handler(tag, args) is False:
                return

    # -- commands (override to misbehave) ---------------------------------------------------

    def do_CAPABILITY(self, tag: bytes, args: bytes) -> None:
        self.send(b"* CAPABILITY " + self.capabilities + b"\r\n" + tag + b" OK done\r\n")

    def do_NOOP(self, tag: bytes, args: bytes) -> None:
        self.send(tag + b" OK done\r\n")

    do_ENABLE = do_ID = do_NOOP

    def do_NAMESPACE(self, tag: bytes, args: bytes) -> None:
        self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n' + tag + b" OK done\r\n")

    def do_LOGIN(self, tag: bytes, args: bytes) -> None:
        self.server.logins += 1
        self.send(tag + b" OK logged in\r\n")

    def do_AUTHENTICATE(self, tag: bytes, args: bytes) -> None:
        self.server.logins += 1
        blob = args.partition(b" ")[2]
        if not blob:
            self.send(b"+ \r\n")
            blob = self.readline().rstrip(b"\r\n")
        self.authenticated(tag, blob)

    def authenticated(self, tag: bytes, blob: bytes) -> None:
        self.send(tag + b" OK logged in\r\n")

    def do_LIST(self, tag: bytes, args: bytes) -> None:
        if args.endswith(b'""'):
            self.send(b'* LIST (\\Noselect) "/" ""\r\n' + tag + b" OK done\r\n")
            return
        out = b"".join(
            b'* LIST () "/" ' + _quoted(name.encode()) + b"\r\n" for name in self.mailbox.folders
        )
        self.send(out + tag + b" OK done\r\n")

    def do_SELECT(self, tag: bytes, args: bytes) -> None:
        name = _unquote(args)
        if name not in self.mailbox.folders:
            self.send(tag + b" NO no such folder\r\n")
            return
        self.selected = name
        count = len(self.mailbox.folders[name])
        self.send(
            b"* %d EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n* OK [UIDNEXT 1000] ok\r\n"
            b"* FLAGS (\\Seen)\r\n%s OK [READ-WRITE] done\r\n" % (count, tag)
        )

    do_EXAMINE = do_SELECT

    def messages(self) -> list[Message]:
        return self.mailbox.folders.get(self.selected or "", [])

    def do_UID_SEARCH(self, tag: bytes, args: bytes) -> None:
        uids = b" ".join(b"%d" % m.uid for m in self.messages())
        self.send(b"* SEARCH " + uids + b"\r\n" + tag + b" OK done\r\n")

    def do_UID_FETCH(self, tag: bytes, args: bytes) -> None:
        spec, _, items = args.partition(b" ")
        wanted = _uids(spec)
        for seq, msg in enumerate(self.messages(), 1):
            if msg.uid not in wanted:
                continue
            if b"BODY.PEEK[]" in items:
                self.send_body(seq, msg)
            else:
                self.send_meta(seq, msg, b"HEADER.FIELDS" in items)
        self.send(tag + b" OK done\r\n")

    def send_meta(self, seq: int, msg: Message, headers: bool) -> None:
        head = b"* %d FETCH (UID %d RFC822.SIZE %d FLAGS (%s) " % (
            seq,
            msg.uid,
            msg.size,
            msg.flags,
        )
        head += b'INTERNALDATE "04-Mar-2019 05:06:07 +0000"'
        if headers:
            block = msg.body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
            head += b" BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)] {%d}\r\n" % len(block)
            head += block
        self.send(head + b")\r\n")

    def send_body(self, seq: int, msg: Message) -> None:
        self.send(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, msg.uid, len(msg.body)))
        self.send(msg.body + b")\r\n")

    def do_LOGOUT(self, tag: bytes, args: bytes) -> bool:
        self.send(b"* BYE bye\r\n" + tag + b" OK done\r\n")
        return False


class Pop3Session(_Base):
    """A minimal POP3 server for one client (CAPA, USER/PASS, AUTH PLAIN, STAT, LIST, UIDL, TOP,
    RETR, QUIT) over the mailbox's INBOX."""

    capa: tuple[bytes, ...] = (b"USER", b"UIDL", b"TOP", b"SASL PLAIN")

    def run(self) -> None:
        self.send(b"+OK rogue ready\r\n")
        while True:
            line = self.readline().rstrip(b"\r\n")
            command, _, args = line.partition(b" ")
            handler = getattr(self, "do_" + command.upper().decode("ascii", "replace"), None)
            if handler is None:
                self.send(b"-ERR unknown command\r\n")
                continue
            if handler(args) is False:
                return

    def inbox(self) -> list[Message]:
        return self.mailbox.folders.get("INBOX", [])

    def do_CAPA(self, args: bytes) -> None:
        self.send(b"+OK\r\n" + b"".join(c + b"\r\n" for c in self.capa) + b".\r\n")

    def do_USER(self, args: bytes) -> None:
        self.server.logins += 1
        self.send(b"+OK\r\n")

    def do_PASS(self, args: bytes) -> None:
        self.send(b"+OK logged in\r\n")

    def do_AUTH(self, args: bytes) -> None:
        self.server.logins += 1
        blob = args.partition(b" ")[2]
        if not blob:
            self.send(b"+ \r\n")
            blob = self.readline().rstrip(b"\r\n")
        self.authenticated(blob)

    def authenticated(self, blob: bytes) -> None:
        self.send(b"+OK logged in\r\n")

    def do_STAT(self, args: bytes) -> None:
        box = self.inbox()
        self.send(b"+OK %d %d\r\n" % (len(box), sum(m.size for m in box)))

    def do_LIST(self, args: bytes) -> None:
        lines = b"".join(b"%d %d\r\n" % (n, m.size) for n, m in enumerate(self.inbox(), 1))
        self.send(b"+OK\r\n" + lines + b".\r\n")

    def do_UIDL(self, args: bytes) -> None:
        lines = b"".join(b"%d u%d\r\n" % (n, m.uid) for n, m in enumerate(self.inbox(), 1))
        self.send(b"+OK\r\n" + lines + b".\r\n")

    def do_TOP(self, args: bytes) -> None:
        msg = self.inbox()[int(args.split()[0]) - 1]
        self.send(b"+OK\r\n" + msg.body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n.\r\n")

    def do_RETR(self, args: bytes) -> None:
        msg = self.inbox()[int(args) - 1]
        self.send(b"+OK\r\n" + msg.body.replace(b"\r\n.", b"\r\n..") + b".\r\n")

    def do_NOOP(self, args: bytes) -> None:
        self.send(b"+OK\r\n")

    def do_QUIT(self, args: bytes) -> bool:
        self.send(b"+OK bye\r\n")
        return False


class RogueServer:
    """Accepts connections on 127.0.0.1 and gives each to a new ``session`` in a thread."""

    def __init__(
        self,
        session: type[_Base],
        folders: dict[str, list[Message]] | None = None,
        *,
        lifetime: float = 120.0,
        timeout: float = 30.0,
    ) -> None:
        self.session = session
        self.mailbox = Mailbox(folders if folders is not None else {"INBOX": []})
        self.lifetime = lifetime
        self.timeout = timeout
        self.logins = 0
        self.connections = 0
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_TICK)
        self.port: int = self._listener.getsockname()[1]

    def __enter__(self) -> RogueServer:
        self._started = time.monotonic()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._socks):
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if time.monotonic() - self._started > self.lifetime:
                self.stop()
                return
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(self.timeout)
            self.connections += 1
            self._socks.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            self.session(sock, self).run()
        except (OSError, EOFError, ValueError, IndexError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()


def _quoted(name: bytes) -> bytes:
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _unquote(arg: bytes) -> str:
    arg = arg.strip()
    if arg[:1] == b'"':
        arg = re.sub(rb"\\(.)", rb"\1", arg[1:-1])
    return arg.decode("utf-8", "replace")


def _uids(spec: bytes) -> set[int]:
    found: set[int] = set()
    for part in spec.split(b","):
        low, _, high = part.partition(b":")
        first = int(low) if low != b"*" else 10**9
        last = first if not high else (int(high) if high != b"*" else 10**9)
        found.update(range(min(first, last), min(max(first, last), 10**6) + 1))
    return found
