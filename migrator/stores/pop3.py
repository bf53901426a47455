"""POP3 as a source: one folder (INBOX), identity by UIDL, dates from Received headers.

POP3 numbers messages afresh in every session, so a session maps UIDL -> number when it starts
and every command looks the number up again: a generator that outlives a session (the engine may
delete a batch, which ends the session with QUIT) goes on in the next one.

The wire is read here rather than through poplib's ``retr``/``top``: poplib caps lines at 2,048
octets (real mail has longer lines), turns a dropped connection and a refusal into the same
exception, and cannot pipeline. poplib still opens the connection, does implicit TLS and reads
the greeting.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import poplib
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import cast

from migrator.errors import ConnectError, FolderError, MessageError, StoreError
from migrator.model import INBOX, Folder, FolderPath, FolderState, MessageRef, message_key
from migrator.oauth import sasl_initial
from migrator.ratelimit import LOGINS
from migrator.scrub import remember, server_text
from migrator.stores.base import LARGEST_MESSAGE, MIN_BYTES_PER_TIMEOUT, ServerAccess, Source

#: Longest line accepted from the server; far above RFC 5322's 998 because real mail breaks it.
MAX_LINE = 64 * 1024 * 1024
#: TOP commands sent before reading their answers, when the server offers PIPELINING.
TOP_BATCH = 64
#: RETR commands kept in flight beyond the one being read, and the LIST octets they may add.
RETR_WINDOW = 16
RETR_WINDOW_BYTES = 1024 * 1024

#: Header fields that mbox-backed POP3 servers rewrite as a message is read; left out of the
#: digest that stands in for a UIDL, so that it stays the same from one session to the next.
MUTABLE_FIELDS = frozenset(
    {
        b"status",
        b"x-status",
        b"x-keywords",
        b"x-uid",
        b"x-imap",
        b"x-imapbase",
        b"x-uidl",
        b"content-length",
        b"lines",
    }
)

_FOLD = re.compile(rb"\r?\n[ \t]")
#: The line "." that ends a multi-line answer, with the end of the line before it.
_TERMINATOR = re.compile(rb"\n\.\r?\n")


# --- pure parsing (tests/unit/test_pop3_parse.py) -----------------------------------------------


def parse_capa(lines: Iterable[bytes]) -> dict[str, list[str]]:
    """CAPA lines -> {NAME: [args]} with upper-case names (RFC 2449)."""
    caps: dict[str, list[str]] = {}
    for line in lines:
        words = line.decode("ascii", "replace").split()
        if words:
            caps[words[0].upper()] = words[1:]
    return caps


def parse_uidl(lines: Iterable[bytes]) -> list[tuple[int, str]]:
    """UIDL listing -> [(number, uidl)] in server order. A UIDL repeated by a broken server gets a
    '#k' suffix, so that every id still names one message."""
    result: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for line in lines:
        words = line.split()
        if len(words) < 2 or not words[0].isdigit():
            continue
        uid = words[1].decode("ascii", "replace")
        count = seen.get(uid, 0) + 1
        seen[uid] = count
        result.append((int(words[0]), uid if count == 1 else f"{uid}#{count}"))
    return result


def parse_list(lines: Iterable[bytes]) -> dict[int, int]:
    """LIST listing -> {number: octets}; the octets are the size as sent, CRLF line endings."""
    sizes: dict[int, int] = {}
    for line in lines:
        words = line.split()
        if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            sizes[int(words[0])] = int(words[1])
    return sizes


def header_block(data: bytes) -> bytes:
    """The header of a message (or of a TOP n 0 answer), without the blank line that ends it."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = data.find(sep)
        if pos >= 0:
            return data[: pos + len(sep) // 2]
    return data


def header_fields_ordered(header: bytes) -> list[tuple[bytes, bytes]]:
    """Every header field as (lower-case name, unfolded value), in order, repeats kept."""
    fields: list[tuple[bytes, bytes]] = []
    for line in _FOLD.sub(b" ", header_block(header)).splitlines():
        name, sep, value = line.partition(b":")
        name = name.strip()
        if sep and name and b" " not in name and b"\t" not in name:
            fields.append((name.lower(), value.strip()))
    return fields


def _parse_date(text: bytes) -> datetime | None:
    try:
        value = parsedate_to_datetime(text.decode("latin-1").strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if value is None or not 1970 <= value.year <= 9999:
        return None
    if value.tzinfo is None:  # "-0000": the zone is unknown; UTC is the honest reading
        value = value.replace(tzinfo=UTC)
    return value


def received_date(header: bytes) -> datetime | None:
    """The date of the newest (topmost) Received field that has a readable one: the text after its
    last ';'. The next Received field down is tried when the newest one's date is garbled."""
    for name, value in header_fields_ordered(header):
        if name == b"received" and b";" in value:
            date = _parse_date(value.rpartition(b";")[2])
            if date is not None:
                return date
    return None


def message_date(header: bytes) -> datetime | None:
    """INTERNALDATE for a message that has none: the newest Received date, else the Date field."""
    date = received_date(header)
    if date is not None:
        return date
    for name, value in header_fields_ordered(header):
        if name == b"date":
            return _parse_date(value)
    return None


def header_digest(header: bytes) -> str:
    """Stands in for a UIDL on a server without one: a digest of the header fields that no server
    rewrites (Received lines, Message-ID, Date, ...), whitespace-normalised. The LIST size is left
    out because mbox-backed servers change it when they add a Status field."""
    digest = hashlib.sha256()
    for name, value in header_fields_ordered(header):
        if name not in MUTABLE_FIELDS:
            digest.update(name + b"\0" + b" ".join(value.split()) + b"\0")
    return "hdr-" + digest.hexdigest()[:40]


def unstuff(raw_lines: Iterable[bytes]) -> bytes:
    """Raw lines of a multi-line answer (terminators kept, the final "." line left out) -> the
    message: dot-stuffing undone, every line ending CRLF (a bare LF from a sloppy server too)."""
    out = bytearray()
    for line in raw_lines:
        _add_line(out, line)
    return bytes(out)


def _add_line(out: bytearray, line: bytes) -> None:
    if line.endswith(b"\r\n") and not line.startswith(b"."):
        out += line  # the common case: nothing to undo
        return
    if line.endswith(b"\r\n"):
        content = line[:-2]
    elif line.endswith(b"\n"):
        content = line[:-1]
    else:
        content = line
    if content.startswith(b"."):
        content = content[1:]
    out += content
    out += b"\r\n"


def sasl_plain(user: str, password: str) -> str:
    """The AUTH PLAIN initial response (RFC 4616): authzid empty, then user and password."""
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode("ascii")


def apop_digest(greeting: bytes, password: str) -> str | None:
    """The APOP digest (RFC 1939), or None when the greeting carries no timestamp."""
    m = re.search(rb"<[^<>\s]+>", greeting)
    if not m:
        return None
    return hashlib.md5(m.group(0) + password.encode(), usedforsecurity=False).hexdigest()


def _scrub(text: str) -> str:
    """A server's text as it may be shown: one line, never with a secret in it."""
    return server_text(text)


# --- the wire -------------------------------------------------------------------------------


class _Dropped(Exception):
    """The connection broke: EOF, reset, timeout, TLS failure mid-session."""


class _TooLong(_Dropped):
    """A multi-line answer longer than allowed (a RETR past its LIST size): the rest is not read,
    so the connection is out of step and must be dropped."""


class _Refused(Exception):
    """The server answered -ERR; the text is its reason."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class _Wire:
    """Raw POP3 on a poplib connection: commands out, status lines and multi-line answers in."""

    def __init__(self, conn: poplib.POP3, timeout: float = 60.0) -> None:
        self.conn = conn
        self.timeout = timeout

    def send(self, *commands: str) -> None:
        data = b"".join(c.encode("utf-8") + b"\r\n" for c in commands)
        try:
            self.conn.sock.sendall(data)
        except OSError as exc:
            raise _Dropped(_describe(exc)) from None

    def _line(self) -> bytes:
        try:
            line = self.conn.file.readline(MAX_LINE)
            while line and not line.endswith(b"\n"):
                more = self.conn.file.readline(MAX_LINE)
                if not more:
                    break
                line += more
                if len(line) > MAX_LINE:
                    raise _Dropped("the server sent a line longer than 64 MiB")
        except OSError as exc:
            raise _Dropped(_describe(exc)) from None
        if not line.endswith(b"\n"):
            raise _Dropped("the server closed the connection")
        return line

    def status(self) -> bytes:
        """One status line; -ERR raises _Refused."""
        line = self._line().rstrip(b"\r\n")
        if line.startswith(b"+"):
            return line
        raise _Refused(line.decode("utf-8", "replace"))

    def body(self, limit: int = LARGEST_MESSAGE) -> bytes:
        """The lines of a multi-line answer after its +OK, up to the terminating ".", read a
        buffer at a time rather than a line at a time (a 20 MB attachment is 300,000 lines):
        only the answer is consumed, the pipelined ones behind it stay in the buffer. More than
        ``limit`` bytes, or slower than MIN_BYTES_PER_TIMEOUT a --timeout: _TooLong/_Dropped,
        with nothing more read or held."""
        file = cast(io.BufferedReader, self.conn.file)  # poplib's makefile('rb')
        pieces: list[bytes] = []
        tail = b"\n"  # the answer starts at a line start
        total = 0
        started = time.monotonic()
        try:
            while True:
                ahead = file.peek(1)
                if not ahead:
                    raise _Dropped("the server closed the connection")
                window = tail + ahead
                end = _TERMINATOR.search(window)
                if end is not None:
                    pieces.append(file.read(end.end() - len(tail)))
                    break
                if total + len(ahead) > limit:
                    raise _TooLong(f"the server sent more than {limit} bytes for one answer")
                pieces.append(file.read(len(ahead)))
                total += len(ahead)
                tail = window[-3:]
                if time.monotonic() > started + self.timeout * (1 + total / MIN_BYTES_PER_TIMEOUT):
                    raise _Dropped(f"the server sent {total} bytes of an answer too slowly")
        except OSError as exc:
            raise _Dropped(_describe(exc)) from None
        raw = b"".join(pieces)
        content = raw[: raw.rindex(b".")]  # without the terminating "." line
        if content.count(b"\n") == content.count(b"\r\n"):
            # Every line ends CRLF: only the stuffed dots are to undo.
            return content.replace(b"\r\n.", b"\r\n").removeprefix(b".")
        parts = content.split(b"\n")
        return unstuff(part + b"\n" for part in parts[:-1])

    def command(self, command: str) -> bytes:
        self.send(command)
        return self.status()

    def multiline(self, command: str) -> bytes:
        self.send(command)
        self.status()
        return self.body()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def retr_limit(listed: int) -> int:
    """The most a RETR may bring for a message whose LIST size is ``listed``: twice that and
    64 kB (servers count line ends and dot-stuffing differently), never above LARGEST_MESSAGE."""
    return min(LARGEST_MESSAGE, 2 * max(listed, 0) + 64 * 1024)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer before the timeout"
    text = str(exc) or type(exc).__name__
    return text.strip().replace("\n", " ")


@dataclass(eq=False)
class _Session:
    """One logged-in connection and the message numbering valid for it."""

    wire: _Wire
    caps: dict[str, list[str]]
    #: ids in message-number order, and id -> number / number -> LIST size, for this session.
    order: list[str] = field(default_factory=list)
    numbers: dict[str, int] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    #: (date, key) of each message, kept when the ids had to be made from the headers (no UIDL).
    described: dict[str, tuple[datetime | None, str]] = field(default_factory=dict)
    #: answers still to be read, and the generator that sent the commands.
    outstanding: int = 0
    owner: object | None = None
    #: DELE was sent: the session must end by the QUIT of delete() or be dropped, never QUIT
    #: by close() after something went wrong.
    deleting: bool = False

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.caps

    @property
    def top(self) -> bool:
        """TOP is listed, or the server is too old for CAPA and TOP is worth trying."""
        return "TOP" in self.caps or not self.caps


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
        retries: int = 3,
        backoff: float = 1.0,
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
        self._session: _Session | None = None
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
            with contextlib.suppress(_Dropped, _Refused):
                session.wire.command("QUIT")
        session.wire.close()

    def _drop(self) -> None:
        """End the session without QUIT, so that nothing marked for deletion is applied."""
        session, self._session = self._session, None
        if session is not None:
            session.wire.close()

    def _ensure(self, owner: object | None = None) -> _Session:
        """The open session, opened if need be. Until a first login succeeds every failure is a
        ConnectError; after it, a network failure is retried with backoff (transient)."""
        session = self._session
        if session is not None and session.outstanding and session.owner is not owner:
            self._drop()  # another generator left answers unread on it; start afresh
        while self._session is None:
            try:
                self._session = self._open()
            except _Dropped as exc:
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

    def _open(self) -> _Session:
        """Connect, secure, log in and number the messages. _Dropped for network failures,
        ConnectError for anything the user must fix."""
        a = self.access
        LOGINS.wait(f"{a.user}@{a.host}:{a.port}")
        wire = _Wire(self._dial(), a.timeout or 60.0)
        try:
            caps = self._capa(wire)
            if self.access.tls == "starttls":
                if caps is not None and "STLS" not in caps:
                    raise ConnectError(
                        f"{self.label}: the server does not offer STLS, so the password would "
                        "travel in plaintext; use pop3s://, or pop3://...?tls=none on a network "
                        "you trust"
                    )
                self._stls(wire)
                caps = self._capa(wire)
            self._login(wire, caps or {}, wire.conn.welcome)
            caps = self._capa(wire) or caps or {}
            session = _Session(wire, caps)
            self._number(session)
        except _Dropped as exc:
            wire.close()
            raise _Dropped(f"the connection was lost while logging in ({exc})") from None
        except BaseException:
            wire.close()
            raise
        return session

    def _dial(self) -> poplib.POP3:
        a = self.access
        where = f"{a.host} port {a.port}"
        try:
            if a.tls == "implicit":
                return poplib.POP3_SSL(a.host, a.port, timeout=a.timeout, context=self._context())
            return poplib.POP3(a.host, a.port, timeout=a.timeout)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(self._untrusted(exc)) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionResetError):
            # A server that hangs up during the handshake shows as EOF or as a reset, by timing.
            if a.tls != "implicit":
                raise _Dropped(
                    f"{where} closed the connection without a POP3 greeting; check the port "
                    "and that the server offers POP3"
                ) from None
            raise _Dropped(
                f"{where} closed the connection during the TLS handshake; check that the port "
                "speaks POP3 over TLS (pop3s://, usually 995)"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectError(
                f"{self.label}: TLS handshake failed ({exc.reason or exc}); check that port "
                f"{a.port} speaks POP3 over TLS (pop3s://, usually 995), or use pop3:// for STLS"
            ) from None
        except socket.gaierror:
            raise _Dropped(f"cannot resolve host {a.host!r}; check the host name") from None
        except ConnectionRefusedError:
            raise _Dropped(
                f"{where} refused the connection; check the host, the port and that the server "
                "offers POP3"
            ) from None
        except TimeoutError:
            raise _Dropped(
                f"no answer from {where} within {a.timeout:g}s; check the host, the port and "
                "any firewall"
            ) from None
        except poplib.error_proto as exc:
            text = exc.args[0] if exc.args else b""
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            if str(text) in ("-ERR EOF", "line too long"):
                raise _Dropped(
                    f"{where} closed the connection without a POP3 greeting; check the port "
                    "and that the server offers POP3"
                ) from None
            raise ConnectError(
                f"{self.label}: the server refused the connection: '{_scrub(str(text))}'; "
                "try again later"
            ) from None
        except OSError as exc:
            raise _Dropped(f"cannot connect to {where} ({_describe(exc)})") from None

    def _context(self) -> ssl.SSLContext:
        if self.access.ssl_context is None:
            raise ConnectError(f"{self.label}: no TLS settings were given for a TLS connection")
        return self.access.ssl_context

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> str:
        reason = exc.verify_message or exc.reason or str(exc)
        return (
            f"{self.label}: the server's TLS certificate is not trusted ({reason}); pass the CA "
            "that signed it with --source-ca-file, or check the host name"
        )

    def _capa(self, wire: _Wire) -> dict[str, list[str]] | None:
        """The capabilities, or None for an old server without CAPA."""
        try:
            wire.send("CAPA")
            wire.status()
        except _Refused:
            return None
        return parse_capa(wire.body().split(b"\r\n"))

    def _stls(self, wire: _Wire) -> None:
        try:
            wire.command("STLS")
        except _Refused as exc:
            raise ConnectError(
                f"{self.label}: the server refused STLS ('{_scrub(exc.text)}'), so the "
                "password would travel in plaintext; use pop3s://, or pop3://...?tls=none on a "
                "network you trust"
            ) from None
        conn = wire.conn
        try:
            conn.sock = self._context().wrap_socket(conn.sock, server_hostname=self.access.host)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(self._untrusted(exc)) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise _Dropped("the server closed the connection during the TLS handshake") from None
        except ssl.SSLError as exc:
            raise ConnectError(
                f"{self.label}: the TLS handshake after STLS failed ({exc.reason or exc}); "
                "check the server's TLS setup"
            ) from None
        except OSError as exc:
            raise _Dropped(_describe(exc)) from None
        conn.file = conn.sock.makefile("rb")

    def _login(self, wire: _Wire, caps: dict[str, list[str]], greeting: bytes) -> None:
        user = self.access.user
        if any(c in user for c in "\r\n\0"):
            raise ConnectError(f"{self.label}: the user name holds a line break; fix the endpoint")
        password = self.access.secret()
        remember(password, user, self.access.host, self.access.port)
        try:
            if self.apop:
                digest = apop_digest(greeting, password)
                if digest is None:
                    raise ConnectError(
                        f"{self.label}: APOP was asked for but the server's greeting does not "
                        "offer it; log in without APOP"
                    )
                wire.command(f"APOP {user} {digest}")
            elif self.access.auth in ("xoauth2", "oauthbearer"):
                a = self.access
                initial = sasl_initial(a.auth, user, password, a.host, a.port)
                wire.send(f"AUTH {a.auth.upper()} {base64.b64encode(initial.encode()).decode()}")
                if not wire.status().startswith(b"+OK"):  # "+ <error>": answer empty, get -ERR
                    wire.command("")
            elif "PLAIN" in (m.upper() for m in caps.get("SASL", [])):
                wire.send(f"AUTH PLAIN {sasl_plain(user, password)}")
                if not wire.status().startswith(b"+OK"):  # "+ ": initial response not taken
                    wire.command(sasl_plain(user, password))
            else:
                wire.command(f"USER {user}")
                wire.command(f"PASS {password}")
        except _Refused as exc:
            said = _scrub(exc.text)
            busy = any(code in said for code in ("[IN-USE]", "[LOGIN-DELAY]", "[SYS/TEMP]"))
            hint = "try again later" if busy else "check the user name and password"
            if self.access.auth in ("xoauth2", "oauthbearer") and not busy:
                hint = "the OAuth2 access token was refused: get a fresh one"
            raise ConnectError(
                f"{self.label}: login failed: the server said '{said}'; {hint}"
            ) from None

    def _number(self, session: _Session) -> None:
        """Map ids to this session's message numbers: by UIDL, else by a digest of each header."""
        wire = session.wire
        session.sizes = parse_list(wire.multiline("LIST").split(b"\r\n"))
        pairs: list[tuple[int, str]] | None = None
        if "UIDL" in session.caps or not session.caps:
            try:
                pairs = parse_uidl(wire.multiline("UIDL").split(b"\r\n"))
            except _Refused:
                pairs = None
        if pairs is None:
            self.weak_ids = True
            self.stable_ids = False
            numbers = sorted(session.sizes)
            headers = self._headers(session, numbers)
            pairs = []
            seen: dict[str, int] = {}
            for number in numbers:
                header = headers.get(number)
                if header is None:
                    continue  # neither TOP nor RETR works for it: it cannot be named at all
                digest = header_digest(header)
                count = seen.get(digest, 0) + 1
                seen[digest] = count
                uid = digest if count == 1 else f"{digest}#{count}"
                pairs.append((number, uid))
                size = session.sizes.get(number, 0)
                session.described[uid] = (message_date(header), message_key(header, size))
        session.order = [uid for _, uid in pairs]
        session.numbers = {uid: number for number, uid in pairs}

    def _headers(self, session: _Session, numbers: Sequence[int]) -> dict[int, bytes]:
        """The header of each message: TOP n 0, pipelined in batches when the server allows it;
        RETR cut at the header when it has no TOP. A message the server refuses is left out."""
        wire = session.wire
        headers: dict[int, bytes] = {}
        step = TOP_BATCH if session.pipelining and session.top else 1
        for start in range(0, len(numbers), step):
            chunk = numbers[start : start + step]
            verb = "TOP {} 0" if session.top else "RETR {}"
            wire.send(*(verb.format(n) for n in chunk))
            for n in chunk:
                try:
                    wire.status()
                except _Refused:
                    continue
                headers[n] = header_block(wire.body())
        return headers

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
                except _Dropped as exc:
                    self._retrying(str(exc))
                    continue
                self._attempt = 0
                break
            yield from refs

    def _describe(self, session: _Session, ids: Sequence[str]) -> list[MessageRef]:
        """Refs for those of ``ids`` still on the server, in order."""
        present = [uid for uid in ids if uid in session.numbers]
        if not session.described:
            headers = self._headers(session, [session.numbers[uid] for uid in present])
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
        session: _Session | None = None
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
                        except _Refused as exc:
                            result = MessageError(f"the server refused RETR: {_scrub(exc.text)}")
                        except _TooLong:
                            listed = session.sizes.get(number, 0)
                            result = MessageError(
                                f"the server sent more than {retr_limit(listed)} bytes for a "
                                f"message its LIST gave as {listed}; the rest was not read"
                            )
                            self._drop()  # out of step: the next message starts afresh
                except _Dropped as exc:
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
        session: _Session,
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
            except _Dropped as exc:
                self._retrying(f"{exc}; nothing was deleted in that session")
                continue
            self._attempt = 0
            return

    def _dele_quit(self, session: _Session, ids: Sequence[str]) -> None:
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
                except _Refused as exc:
                    refused.append(exc.text)
        try:
            self._quit(wire)
        finally:
            self._drop()
        if refused:
            raise StoreError(
                f"{self.label}: the server refused to delete {len(refused)} message(s) "
                f"('{_scrub(refused[0])}'); they stay on the server and a rerun tries again",
                transient=True,
            )

    def _quit(self, wire: _Wire) -> None:
        """QUIT: the server applies the DELEs now. A refusal ("-ERR [SYS/TEMP] Server shutting
        down" when the session is killed) means they were not all applied: do it again."""
        try:
            wire.command("QUIT")
        except _Refused as exc:
            raise _Dropped(f"the server refused QUIT: '{_scrub(exc.text)}'") from None
