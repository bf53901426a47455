"""Message rules: the few changes some targets need before they accept a message.

Each rule is off unless a profile (or the user) switches it on, touches only what the target
would refuse, and says what it did: ``apply`` returns the names of the changes it made, and the
engine counts them in the summary. A message no rule touches stays byte-exact.

- bare LF: a message written with CRLF that also holds lone LFs gets CRLF everywhere (a message
  written with LF alone, as mbox and Maildir keep them, is only being translated to the wire's
  line endings, which is no change);
- final CRLF: a message that does not end with a line break gets one (Yahoo);
- long lines: lines longer than the target takes are folded, headers at a space (a valid header
  fold), body text after a space where there is one (Microsoft 365 refuses lines over about
  10,000 characters);
- NUL: NUL bytes, which IMAP forbids in a message, are removed.

Standard library only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BARE_LF = "bare LF to CRLF"
FINAL_CRLF = "final CRLF added"
FOLDED = "long lines folded"
NUL = "NUL bytes removed"

_LONE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class MessageRules:
    bare_lf: bool = False
    final_crlf: bool = False
    #: Fold lines longer than this many bytes (line ending not counted); None: never.
    max_line_length: int | None = None
    nul: bool = False

    def __post_init__(self) -> None:
        if self.max_line_length is not None and self.max_line_length < 78:
            raise ValueError("a line length limit under 78 would fold ordinary header lines")

    @property
    def active(self) -> bool:
        return self.bare_lf or self.final_crlf or self.max_line_length is not None or self.nul

    def describe(self) -> str:
        parts = []
        if self.bare_lf:
            parts.append("bare LF to CRLF")
        if self.final_crlf:
            parts.append("a final CRLF")
        if self.max_line_length is not None:
            parts.append(f"lines over {self.max_line_length} characters folded")
        if self.nul:
            parts.append("NUL bytes removed")
        return ", ".join(parts) or "none"

    def apply(self, data: bytes) -> tuple[bytes, tuple[str, ...]]:
        """The message as the target will take it, and the names of the changes made (empty when
        it is unchanged, and then ``data`` itself is returned)."""
        changes: list[str] = []
        if self.nul and b"\0" in data:
            data = data.replace(b"\0", b"")
            changes.append(NUL)
        if self.bare_lf and b"\r\n" in data and _LONE_LF.search(data):
            data = _LONE_LF.sub(b"\r\n", data)
            changes.append(BARE_LF)
        if self.max_line_length is not None and len(data) > self.max_line_length:
            folded = fold_long_lines(data, self.max_line_length)
            if folded is not data:
                data = folded
                changes.append(FOLDED)
        if self.final_crlf and data and not data.endswith(b"\n"):
            data += b"\r\n" if b"\r\n" in data or b"\n" not in data else b"\n"
            changes.append(FINAL_CRLF)
        return data, tuple(changes)


def _has_long_line(data: bytes, limit: int) -> bool:
    return any(len(line) > limit and len(line.rstrip(b"\r")) > limit for line in data.split(b"\n"))


def fold_long_lines(data: bytes, limit: int) -> bytes:
    """Every line longer than ``limit`` bytes broken into lines of at most ``limit`` bytes.
    Returns ``data`` itself when no line is too long."""
    if not _has_long_line(data, limit):
        return data
    out = bytearray()
    in_header = True
    for line in _lines(data):
        content = line.rstrip(b"\r\n")
        ending = line[len(content) :]
        if in_header and content == b"":
            in_header = False
        if len(content) <= limit:
            out += line
            continue
        eol = ending or (b"\r\n" if b"\r\n" in data else b"\n")
        pieces = _fold_header(content, limit) if in_header else _fold_body(content, limit)
        out += eol.join(pieces) + ending
    return bytes(out)


def _lines(data: bytes) -> list[bytes]:
    """Lines with their endings, split at LF only (a lone CR stays inside its line)."""
    lines = []
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            lines.append(data[start:])
            break
        lines.append(data[start : end + 1])
        start = end + 1
    return lines


def _fold_header(content: bytes, limit: int) -> list[bytes]:
    """Break before whitespace, so each continuation starts with it (RFC 5322 folding); a run
    with no whitespace is cut and the continuation given a leading space."""
    pieces: list[bytes] = []
    rest = content
    while len(rest) > limit:
        cut = max(rest.rfind(b" ", 1, limit), rest.rfind(b"\t", 1, limit))
        if cut <= 0:
            pieces.append(rest[:limit])
            rest = b" " + rest[limit:]
        else:
            pieces.append(rest[:cut])
            rest = rest[cut:]
    pieces.append(rest)
    return pieces


def _fold_body(content: bytes, limit: int) -> list[bytes]:
    """Break after the last space that keeps a piece within ``limit`` (the space stays at the end
    of the line, as format=flowed writes a soft break), else at ``limit``."""
    pieces: list[bytes] = []
    rest = content
    while len(rest) > limit:
        cut = rest.rfind(b" ", 0, limit)
        cut = limit if cut <= 0 else cut + 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return pieces


def loose_key(key: str) -> str:
    """An identity key without its size: a message a rule changed is still recognised in the
    target by its Message-ID (or header digest), whatever its new size."""
    return key.rsplit(":", 1)[0] if key.count(":") >= 2 else key
