"""A minimal streaming IMAP client: the fetch-only floor, and how targets are checked.

imaplib and imapclient keep a whole FETCH response in memory (810 MB for one ``UID FETCH 1:*``)
and parse it in Python; this reads the socket through a large buffer and hands each literal to a
sink in chunks, so the floor it measures is the server plus TLS, not the client's parser.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, cast

from imapclient.imap_utf7 import decode as utf7_decode

CHUNK = 1 << 20
_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")
_LIST = re.compile(rb'^\* LIST \(([^)]*)\) (NIL|"(?:[^"\\]|\\.)*") (.*)\r\n$', re.DOTALL)
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
_DATE = re.compile(rb'INTERNALDATE "([^"]+)"')


class ImapError(RuntimeError):
    """The server said NO/BAD, or closed the connection."""


@dataclass
class Fetched:
    """One message of a FETCH: its body digest (or None when discarded), flags and date."""

    digest: str | None
    size: int
    flags: tuple[str, ...]
    date: int | None


def _unquote(token: bytes) -> bytes:
    if token.startswith(b'"') and token.endswith(b'"'):
        return re.sub(rb"\\(.)", rb"\1", token[1:-1])
    return token


class Connection:
    """One logged-in IMAPS connection."""

    def __init__(
        self, host: str, port: int, user: str, password: str, ca_file: str, timeout: float = 120
    ) -> None:
        context = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection((host, port), timeout=timeout)
        self.sock = context.wrap_socket(raw, server_hostname=host)
        self.reader = cast(BinaryIO, self.sock.makefile("rb", buffering=CHUNK))
        self.tag = 0
        greeting = self.reader.readline()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"unexpected greeting {greeting!r}")
        self.command(b"LOGIN " + _quote(user) + b" " + _quote(password))

    def close(self) -> None:
        """LOGOUT and close; errors ignored (the server may already be gone)."""
        with contextlib.suppress(OSError, ImapError):
            self.command(b"LOGOUT")
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, command: bytes) -> bytes:
        self.tag += 1
        tag = b"b%d" % self.tag
        self.sock.sendall(tag + b" " + command + b"\r\n")
        return tag

    def _responses(
        self, tag: bytes, sink: Callable[[int], Callable[[bytes], None] | None] | None = None
    ) -> Iterator[tuple[bytes, list[int]]]:
        """Yield (text of one response, sizes of its literals) until the tagged one.

        ``sink(size)`` is asked for each literal; it returns a function fed the literal in chunks,
        or None to keep the literal's bytes in the text (small ones: LIST names).
        """
        while True:
            text = b""
            sizes: list[int] = []
            while True:
                line = self.reader.readline()
                if not line:
                    raise ImapError("connection closed by the server")
                text += line
                m = _LITERAL.search(line)
                if not m:
                    break
                size = int(m.group(1))
                sizes.append(size)
                feed = sink(size) if sink is not None else None
                left = size
                while left:
                    data = self.reader.read(min(left, CHUNK))
                    if not data:
                        raise ImapError("connection closed inside a literal")
                    left -= len(data)
                    if feed is None:
                        text += data
                    else:
                        feed(data)
            if text.startswith(tag + b" "):
                if not text.startswith(tag + b" OK"):
                    raise ImapError(text.decode(errors="replace").strip())
                return
            yield text, sizes

    def command(self, command: bytes) -> list[bytes]:
        """Send one command; return its untagged responses."""
        return [text for text, _ in self._responses(self._send(command))]

    def list_folders(self) -> list[tuple[str, bytes]]:
        """(Unicode '/'-separated name, wire name) of every selectable folder."""
        result = []
        for text in self.command(b'LIST "" "*"'):
            m = _LIST.match(text)
            if not m:
                continue
            attrs = m.group(1).lower()
            if b"\\noselect" in attrs or b"\\nonexistent" in attrs:
                continue
            delim = _unquote(m.group(2)) if m.group(2) != b"NIL" else b""
            raw = m.group(3)
            lit = re.match(rb"\{\d+\}\r\n(.*)$", raw, re.DOTALL)
            wire = lit.group(1) if lit else _unquote(raw)
            name = utf7_decode(wire)
            if delim and delim != b"/":
                name = "/".join(name.split(delim.decode()))
            result.append(("INBOX" if name.upper() == "INBOX" else name, wire))
        return result

    def fetch_all(
        self,
        wire_name: bytes,
        *,
        digest: bool,
        meta: bool,
        drop_fields: tuple[bytes, ...] = (),
    ) -> list[Fetched]:
        """EXAMINE the folder and ``UID FETCH 1:* (BODY.PEEK[] ...)`` in one command, streamed.

        digest: hash each body (sha256) rather than discard it; meta: also FLAGS and INTERNALDATE;
        drop_fields: header fields (lower-case names) left out of the digest.
        """
        examined = self.command(b"EXAMINE " + _quote_bytes(wire_name))
        exists = 0
        for text in examined:
            m = re.match(rb"\* (\d+) EXISTS", text)
            if m:
                exists = int(m.group(1))
        if not exists:
            return []
        items = b"FLAGS INTERNALDATE BODY.PEEK[]" if meta else b"BODY.PEEK[]"
        hashers: list[hashlib._Hash] = []

        def sink(size: int) -> Callable[[bytes], None]:
            if not digest:
                return _discard
            h = hashlib.sha256()
            hashers.append(h)
            if not drop_fields:
                return h.update
            first = [True]

            def feed(data: bytes) -> None:
                if first[0]:
                    first[0] = False
                    data = strip_fields(data, drop_fields)
                h.update(data)

            return feed

        out: list[Fetched] = []
        for text, sizes in self._responses(self._send(b"UID FETCH 1:* (" + items + b")"), sink):
            if not sizes or b" FETCH " not in text[:40]:
                continue
            flags: tuple[str, ...] = ()
            date = None
            if meta:
                fm = _FLAGS.search(text)
                if fm:
                    flags = tuple(
                        sorted(f for f in fm.group(1).decode().split() if f != "\\Recent")
                    )
                dm = _DATE.search(text)
                if dm:
                    stamp = dm.group(1).decode().strip()
                    date = int(datetime.strptime(stamp, "%d-%b-%Y %H:%M:%S %z").timestamp())
            out.append(Fetched(hashers[-1].hexdigest() if digest else None, sizes[-1], flags, date))
        return out


def strip_fields(data: bytes, names: tuple[bytes, ...]) -> bytes:
    """Remove the header fields *names* (lower-case) from a message's header, if the header ends
    within *data* (the first chunk of a literal: headers are far smaller than a chunk)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    lines = data[: end + 2].split(b"\r\n")[:-1]
    kept: list[bytes] = []
    skipping = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in names
        if not skipping:
            kept.append(line)
    return b"".join(x + b"\r\n" for x in kept) + data[end + 2 :]


def _discard(data: bytes) -> None:
    pass


def _quote(text: str) -> bytes:
    return _quote_bytes(text.encode())


def _quote_bytes(data: bytes) -> bytes:
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
