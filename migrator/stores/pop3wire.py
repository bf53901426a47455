"""The POP3 protocol for the POP3 store: the wire, the session and its login, the numbering.

The wire is read here rather than through poplib's ``retr``/``top``: poplib caps lines at 2,048
octets (real mail has longer lines), turns a dropped connection and a refusal into the same
exception, and cannot pipeline. poplib still opens the connection, does implicit TLS and reads
the greeting. migrator.stores.pop3 keeps the store: sessions over time, listing, fetching and
deleting.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

from migrator.errors import ConnectError
from migrator.headers import header_block, header_digest, message_date, message_key
from migrator.oauth import sasl_initial
from migrator.ratelimit import LOGINS
from migrator.scrub import remember, server_text
from migrator.stores.base import LARGEST_MESSAGE, MIN_BYTES_PER_TIMEOUT, ServerAccess

#: Longest line accepted from the server; far above RFC 5322's 998 because real mail breaks it.
MAX_LINE = 64 * 1024 * 1024
#: TOP (and DELE) commands sent before reading their answers, when the server offers PIPELINING.
TOP_BATCH = 64
#: Seconds to wait for the server when the endpoint names no timeout.
DEFAULT_TIMEOUT = 60.0
#: What a RETR may bring beyond twice its LIST size (servers count line ends differently).
RETR_SLACK = 64 * 1024

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


def server_said(text: str) -> str:
    """A server's text as it may be shown: one line, never with a secret in it."""
    return server_text(text)


# --- the wire -------------------------------------------------------------------------------


class Dropped(Exception):
    """The connection broke: EOF, reset, timeout, TLS failure mid-session."""


class TooLong(Dropped):
    """A multi-line answer longer than allowed (a RETR past its LIST size): the rest is not read,
    so the connection is out of step and must be dropped."""


class Refused(Exception):
    """The server answered -ERR; the text is its reason."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class Wire:
    """Raw POP3 on a poplib connection: commands out, status lines and multi-line answers in."""

    def __init__(self, conn: poplib.POP3, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.conn = conn
        self.timeout = timeout

    def send(self, *commands: str) -> None:
        data = b"".join(c.encode("utf-8") + b"\r\n" for c in commands)
        try:
            self.conn.sock.sendall(data)
        except OSError as exc:
            raise Dropped(describe_error(exc)) from None

    def _line(self) -> bytes:
        try:
            line = self.conn.file.readline(MAX_LINE)
            while line and not line.endswith(b"\n"):
                more = self.conn.file.readline(MAX_LINE)
                if not more:
                    break
                line += more
                if len(line) > MAX_LINE:
                    raise Dropped("the server sent a line longer than 64 MiB")
        except OSError as exc:
            raise Dropped(describe_error(exc)) from None
        if not line.endswith(b"\n"):
            raise Dropped("the server closed the connection")
        return line

    def status(self) -> bytes:
        """One status line; -ERR raises Refused."""
        line = self._line().rstrip(b"\r\n")
        if line.startswith(b"+"):
            return line
        raise Refused(line.decode("utf-8", "replace"))

    def body(self, limit: int = LARGEST_MESSAGE) -> bytes:
        """The lines of a multi-line answer after its +OK, up to the terminating ".", read a
        buffer at a time rather than a line at a time (a 20 MB attachment is 300,000 lines):
        only the answer is consumed, the pipelined ones behind it stay in the buffer. More than
        ``limit`` bytes, or slower than MIN_BYTES_PER_TIMEOUT a --timeout: TooLong/Dropped,
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
                    raise Dropped("the server closed the connection")
                window = tail + ahead
                end = _TERMINATOR.search(window)
                if end is not None:
                    pieces.append(file.read(end.end() - len(tail)))
                    break
                if total + len(ahead) > limit:
                    raise TooLong(f"the server sent more than {limit} bytes for one answer")
                pieces.append(file.read(len(ahead)))
                total += len(ahead)
                tail = window[-3:]
                if time.monotonic() > started + self.timeout * (1 + total / MIN_BYTES_PER_TIMEOUT):
                    raise Dropped(f"the server sent {total} bytes of an answer too slowly")
        except OSError as exc:
            raise Dropped(describe_error(exc)) from None
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
    RETR_SLACK (servers count line ends and dot-stuffing differently), never above
    LARGEST_MESSAGE."""
    return min(LARGEST_MESSAGE, 2 * max(listed, 0) + RETR_SLACK)


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer before the timeout"
    text = str(exc) or type(exc).__name__
    return text.strip().replace("\n", " ")


@dataclass(eq=False)
class Session:
    """One logged-in connection and the message numbering valid for it."""

    wire: Wire
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
    #: The server has no UIDL: the ids are digests of the headers (see number_messages()).
    weak_ids: bool = False

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.caps

    @property
    def top(self) -> bool:
        """TOP is listed, or the server is too old for CAPA and TOP is worth trying."""
        return "TOP" in self.caps or not self.caps


# --- logging in -----------------------------------------------------------------------------


class Dialer:
    """Opens a logged-in, numbered session: connect, TLS (implicit or STLS), CAPA, login.

    Raises Dropped for network failures (the store retries them) and ConnectError for anything
    the user must fix."""

    def __init__(self, access: ServerAccess, label: str, apop: bool) -> None:
        self.access = access
        self.label = label
        self.apop = apop

    def open(self) -> Session:
        """Connect, secure, log in and number the messages."""
        a = self.access
        LOGINS.wait(f"{a.user}@{a.host}:{a.port}")
        wire = Wire(self._dial(), a.timeout or DEFAULT_TIMEOUT)
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
            session = Session(wire, caps)
            number_messages(session)
        except Dropped as exc:
            wire.close()
            raise Dropped(f"the connection was lost while logging in ({exc})") from None
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
                raise Dropped(
                    f"{where} closed the connection without a POP3 greeting; check the port "
                    "and that the server offers POP3"
                ) from None
            raise Dropped(
                f"{where} closed the connection during the TLS handshake; check that the port "
                "speaks POP3 over TLS (pop3s://, usually 995)"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectError(
                f"{self.label}: TLS handshake failed ({exc.reason or exc}); check that port "
                f"{a.port} speaks POP3 over TLS (pop3s://, usually 995), or use pop3:// for STLS"
            ) from None
        except socket.gaierror:
            raise Dropped(f"cannot resolve host {a.host!r}; check the host name") from None
        except ConnectionRefusedError:
            raise Dropped(
                f"{where} refused the connection; check the host, the port and that the server "
                "offers POP3"
            ) from None
        except TimeoutError:
            raise Dropped(
                f"no answer from {where} within {a.timeout:g}s; check the host, the port and "
                "any firewall"
            ) from None
        except poplib.error_proto as exc:
            text = exc.args[0] if exc.args else b""
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            if str(text) in ("-ERR EOF", "line too long"):
                raise Dropped(
                    f"{where} closed the connection without a POP3 greeting; check the port "
                    "and that the server offers POP3"
                ) from None
            raise ConnectError(
                f"{self.label}: the server refused the connection: '{server_said(str(text))}'; "
                "try again later"
            ) from None
        except OSError as exc:
            raise Dropped(f"cannot connect to {where} ({describe_error(exc)})") from None

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

    def _capa(self, wire: Wire) -> dict[str, list[str]] | None:
        """The capabilities, or None for an old server without CAPA."""
        try:
            wire.send("CAPA")
            wire.status()
        except Refused:
            return None
        return parse_capa(wire.body().split(b"\r\n"))

    def _stls(self, wire: Wire) -> None:
        try:
            wire.command("STLS")
        except Refused as exc:
            raise ConnectError(
                f"{self.label}: the server refused STLS ('{server_said(exc.text)}'), so the "
                "password would travel in plaintext; use pop3s://, or pop3://...?tls=none on a "
                "network you trust"
            ) from None
        conn = wire.conn
        try:
            conn.sock = self._context().wrap_socket(conn.sock, server_hostname=self.access.host)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(self._untrusted(exc)) from None
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            raise Dropped("the server closed the connection during the TLS handshake") from None
        except ssl.SSLError as exc:
            raise ConnectError(
                f"{self.label}: the TLS handshake after STLS failed ({exc.reason or exc}); "
                "check the server's TLS setup"
            ) from None
        except OSError as exc:
            raise Dropped(describe_error(exc)) from None
        conn.file = conn.sock.makefile("rb")

    def _login(self, wire: Wire, caps: dict[str, list[str]], greeting: bytes) -> None:
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
        except Refused as exc:
            said = server_said(exc.text)
            busy = any(code in said for code in ("[IN-USE]", "[LOGIN-DELAY]", "[SYS/TEMP]"))
            hint = "try again later" if busy else "check the user name and password"
            if self.access.auth in ("xoauth2", "oauthbearer") and not busy:
                hint = "the OAuth2 access token was refused: get a fresh one"
            raise ConnectError(
                f"{self.label}: login failed: the server said '{said}'; {hint}"
            ) from None


# --- numbering the messages of a session ---------------------------------------------------


def number_messages(session: Session) -> None:
    """Map ids to this session's message numbers: by UIDL, else by a digest of each header."""
    wire = session.wire
    session.sizes = parse_list(wire.multiline("LIST").split(b"\r\n"))
    pairs: list[tuple[int, str]] | None = None
    if "UIDL" in session.caps or not session.caps:
        try:
            pairs = parse_uidl(wire.multiline("UIDL").split(b"\r\n"))
        except Refused:
            pairs = None
    if pairs is None:
        session.weak_ids = True
        numbers = sorted(session.sizes)
        headers = read_headers(session, numbers)
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


def read_headers(session: Session, numbers: Sequence[int]) -> dict[int, bytes]:
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
            except Refused:
                continue
            headers[n] = header_block(wire.body())
    return headers
