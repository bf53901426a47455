"""The TLS read fast path under imaplib and poplib: the socket level of the wire layer.

make_ssl_context (migrator.endpoints) makes every TLS socket a BufferedTlsSocket, so both the
IMAP and the POP3 store read their servers through it without knowing."""

from __future__ import annotations

import io
import ssl
from typing import Any


class BufferedTlsSocket(ssl.SSLSocket):
    """A TLS socket whose binary files read the TLS layer directly.

    socket.makefile puts a SocketIO between the buffer and the TLS socket: three Python calls
    and their checks for every TLS record (a few KB each), about a quarter of the CPU spent
    reading a mailbox. imaplib and poplib read their servers through such a file."""

    def makefile(  # type: ignore[override]
        self,
        mode: str = "r",
        buffering: int | None = None,
        *,
        encoding: str | None = None,
        errors: str | None = None,
        newline: str | None = None,
    ) -> io.IOBase:
        if mode != "rb":
            return super().makefile(  # type: ignore[no-any-return,call-overload]
                mode, buffering, encoding=encoding, errors=errors, newline=newline
            )
        raw = _TlsReader(self)
        if buffering == 0:
            return raw
        size = buffering if buffering is not None and buffering > 0 else io.DEFAULT_BUFFER_SIZE
        return io.BufferedReader(raw, size)


class _TlsReader(io.RawIOBase):
    """The raw stream under BufferedTlsSocket's files: one TLS record a read, 0 at the end (a
    close without close_notify included, as the socket's own files have it)."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._read = sock.read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._read(len(buffer), buffer)  # type: ignore[return-value]  # int with a buffer
