"""Secrets kept out of everything migrator repeats: a server may echo what it was sent (a LOGIN's
arguments, an AUTHENTICATE blob) in its refusal, and that text reaches the terminal, the log
file, tracebacks and the journal. Every secret is remembered here when it is read, in every form
it travels in (as typed, quoted, escaped, base64, inside the SASL PLAIN / XOAUTH2 / OAUTHBEARER
blobs), and ``scrub`` replaces any of them, or any piece of one at least ``PIECE`` characters
long (a server may cut what it echoes), with ``***``.

``server_text`` is the one way a server's words become a message: decoded (never a Python
``b'...'`` repr), on one line, scrubbed, and cut to a length a message can hold.
"""

from __future__ import annotations

import ast
import base64
import json
import logging
import re
import threading
from typing import Any
from urllib.parse import quote

#: Shortest piece of a secret's form that is taken for the secret when found alone (shorter
#: pieces are too likely to be ordinary words; a whole secret of any length is always replaced).
PIECE = 8
#: Shortest form replaced wherever it occurs: a secret of one to three characters would mask
#: every such word in every message (its base64 and SASL blobs are long, and always masked).
SHORTEST = 4
#: Longest server text a message repeats.
SERVER_TEXT_LIMIT = 300
MASK = "***"

_lock = threading.Lock()
_whole: set[str] = set()  # every form, replaced wherever it occurs
_pieces: set[str] = set()  # every PIECE-long slice of the forms that are the secret alone
#: What scrub() reads: the forms longest first, and the pieces (replaced whole on each change).
_current: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())
_REPR_LIST = re.compile(r"""\[((?:b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")(?:, )?)+\]""")
_REPR = re.compile(r"""b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*\"""")


def _escapes(secret: str) -> list[str]:
    """The secret as it is, and as quoting and escaping write it (IMAP quoted string, Python
    repr of the text and of its bytes, JSON, percent-encoding)."""
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')
    return [
        secret,
        quoted,
        ascii(secret)[1:-1],
        repr(secret)[1:-1],
        repr(secret.encode())[2:-1],
        repr(quoted.encode())[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret),
        quote(secret, safe=""),
    ]


def _b64(data: str) -> str:
    return base64.b64encode(data.encode()).decode("ascii")


def remember(secret: str, user: str = "", host: str = "", port: int = 0) -> None:
    """Add a password or token (and, with the user name, the SASL blobs that carry it) to what
    ``scrub`` removes. Called wherever a secret is read and again at each login."""
    if not secret:
        return
    alone = [*_escapes(secret), _b64(secret)]
    blobs = []
    if user:
        from migrator.oauth import sasl_initial

        blobs = [f"\0{user}\0{secret}", f"{user}\0{user}\0{secret}"]
        blobs += [sasl_initial(m, user, secret, host, port) for m in ("xoauth2", "oauthbearer")]
        alone += [_b64(blob) for blob in blobs]
    forms = {f for f in [*alone, *blobs] if len(f) >= SHORTEST}
    pieces = {f[i : i + PIECE] for f in alone if len(f) >= PIECE for i in range(len(f) - PIECE + 1)}
    global _current
    with _lock:
        if forms <= _whole and pieces <= _pieces:
            return
        _whole.update(forms)
        _pieces.update(pieces)
        _current = (tuple(sorted(_whole, key=len, reverse=True)), frozenset(_pieces))


def forget_all() -> None:
    """For tests: start with nothing remembered."""
    global _current
    with _lock:
        _whole.clear()
        _pieces.clear()
        _current = ((), frozenset())


def scrub(text: str) -> str:
    """``text`` with every remembered secret form, and every piece of one, replaced by ***."""
    whole, pieces = _current
    if not whole or not text:
        return text
    for form in whole:
        if form in text:
            text = text.replace(form, MASK)
    if len(text) < PIECE or not pieces:
        return text
    covered = bytearray(len(text))
    for i in range(len(text) - PIECE + 1):
        if text[i : i + PIECE] in pieces:
            covered[i : i + PIECE] = b"\1" * PIECE
    if not any(covered):
        return text
    out: list[str] = []
    for i, ch in enumerate(text):
        if not covered[i]:
            out.append(ch)
        elif i == 0 or not covered[i - 1]:
            out.append(MASK)
    return "".join(out)


def _unrepr(match: re.Match[str]) -> str:
    try:
        value = ast.literal_eval(match[0])
    except (ValueError, SyntaxError):
        return match[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def decoded(text: str) -> str:
    """A message built by a library from a server's bytes, with each ``b'...'`` repr (and
    ``[b'...', b'...']`` list of them) turned back into the text the server sent."""
    if "b'" not in text and 'b"' not in text:
        return text
    text = _REPR_LIST.sub(lambda m: " ".join(_unrepr(r) for r in _REPR.finditer(m[0])), text)
    return _REPR.sub(_unrepr, text)


def server_text(data: Any, limit: int = SERVER_TEXT_LIMIT) -> str:
    """What a server said (bytes, text, a list of either, or an exception) as one scrubbed line
    of at most ``limit`` characters, fit to be shown, logged or stored."""
    if isinstance(data, BaseException):
        data = str(data)
    if isinstance(data, list | tuple):
        data = b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data)
    if isinstance(data, bytes | bytearray):
        data = bytes(data).decode("utf-8", "replace")
    text = scrub(decoded(str(data)))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs each record's message (imaplib's protocol log writes our
    own LOGIN and AUTHENTICATE commands)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
