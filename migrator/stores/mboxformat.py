"""The mboxrd format: one record (From_ line, message, empty line) in and out, and a file read
as a stream of records. migrator.stores.mbox describes the format and keeps the store.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import BinaryIO

from migrator.headers import header_and_blank_line, message_date
from migrator.model import UNCOPIED_FLAGS
from migrator.stores.localfiles import storable_keywords, to_lf, utc_now

#: The keywords an X-Keywords field can hold (the name mbox.py and its tests import).
keywords_of = storable_keywords

#: Bytes kept in the first message's X-IMAPbase for the keyword list to grow into.
IMAPBASE_ROOM = 600
KEPT_PREFIX = b"X-Migrator-Kept-"

_BOOKKEEPING = rb"status|x-status|x-keywords|x-uid|x-imap|x-imapbase|content-length"
#: A header line starting a bookkeeping field, or one we renamed to keep it (group 1: prefixes).
_FIELD = re.compile(rb"((?:x-migrator-kept-)*)(" + _BOOKKEEPING + rb")[ \t]*:", re.IGNORECASE)
#: _FIELD at the start of any line of a header that is given a leading LF.
_ANY_FIELD = re.compile(rb"\n" + _FIELD.pattern, re.IGNORECASE)
_QUOTE = re.compile(rb"^(>*From )", re.MULTILINE)
_UNQUOTE = re.compile(rb"^>(>*From )", re.MULTILINE)
_HEADER_END = re.compile(rb"\n(?=\r?\n|\r\Z)")
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*(\d{1,15})[ \t]*\r?\n", re.IGNORECASE)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FROM_DATE = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) +(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +"
    rb"(\d{1,2}) +(\d{1,2}):(\d\d)(?::(\d\d))? +(?:([A-Za-z]{1,6}|[+-]\d{4}) +)?(\d{4})"
    rb"(?: +([+-]\d{4}))?",
    re.IGNORECASE,
)


# -- mboxrd quoting and the From_ line --------------------------------------------------------


def quote(data: bytes) -> bytes:
    """mboxrd: one more '>' in front of every line that matches ``>*From ``."""
    # Most messages have no "From " at all; the line-anchored search is slow on large bodies.
    return _QUOTE.sub(rb">\1", data) if b"From " in data else data


def unquote(data: bytes) -> bytes:
    """Undo ``quote``: one '>' fewer in front of every line that matches ``>+From ``."""
    return _UNQUOTE.sub(rb"\1", data)


def is_from_line(line: bytes) -> bool:
    """A message separator: "From ", a sender, an asctime date (as mutt and Dovecot require), so a
    stray unquoted "From " line in a foreign mboxo file does not split a message."""
    return line.startswith(b"From ") and _FROM_DATE.search(line, 5) is not None


def parse_from_date(line: bytes) -> datetime | None:
    """The date of a From_ line: numeric zone when present, else local time (as Dovecot and
    mutt write it)."""
    match = _FROM_DATE.search(line, 5)
    if match is None:
        return None
    month = [m.lower() for m in _MONTHS].index(match[1].decode().lower()) + 1
    zone = match[8] or (match[6] if match[6] and match[6][:1] in b"+-" else None)
    try:
        naive = datetime(
            int(match[7]), month, int(match[2]), int(match[3]), int(match[4]), int(match[5] or 0)
        )
    except ValueError:
        return None
    if zone is None:
        return naive.astimezone()
    minutes = int(zone[1:3]) * 60 + int(zone[3:5])
    sign = -1 if zone[:1] == b"-" else 1
    return naive.replace(tzinfo=timezone(timedelta(minutes=sign * minutes)))


def format_from_line(date: datetime, sender: str = "MAILER-DAEMON") -> bytes:
    """``From SENDER Www Mmm dd hh:mm:ss yyyy +zzzz``: asctime in the date's own zone, which
    keeps INTERNALDATE's zone and is what Dovecot parses (mutt ignores what follows the year)."""
    offset = date.utcoffset() or timedelta(0)
    if offset.seconds % 60 or offset.microseconds:
        date, offset = date.astimezone(UTC), timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    zone = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    text = (
        f"From {sender} {_WEEKDAYS[date.weekday()]} {_MONTHS[date.month - 1]} {date.day:2d} "
        f"{date.hour:02d}:{date.minute:02d}:{date.second:02d} {date.year:04d} {zone}\n"
    )
    return text.encode("ascii")


#: Searched in the header with a leading LF: a pattern that starts with a literal is found at C
#: speed, one that starts with ^ is tried at every byte.
_RETURN_PATH = re.compile(
    rb"\nreturn-path:[ \t]*<?([!-;=?-~]*@[!-;=?-~]*)>?[ \t]*\r?(?=\n|\Z)", re.IGNORECASE
)


def _sender(header: bytes) -> str:
    """The envelope sender for the From_ line: Return-Path when it is one plain address."""
    match = _RETURN_PATH.search(b"\n" + header)
    return match[1].decode("ascii") if match else "MAILER-DAEMON"


# -- one message in and out -------------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    """Lines with their LF; a last line without one is kept (bytes.splitlines also splits at CR)."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header lines, the rest from the empty line on); the rest is empty when there is no empty
    line, and the header is empty when the message starts with one. A last line holding only a
    bare CR counts as the empty line too: the newline the record adds after it would make one."""
    end = _header_end(data)
    return data[:end], data[end:]


def _header_end(data: bytes, start: int = 0) -> int:
    """Where _split_header splits ``data[start:]`` (an index into ``data``), without a copy of
    the rest (a message may be 50 MB)."""
    if data.startswith((b"\n", b"\r\n"), start):
        return start
    match = _HEADER_END.search(data, start)
    return len(data) if match is None else match.end()


def imapbase_field(keywords: Iterable[str], validity: int) -> bytes:
    """Dovecot's X-IMAPbase for the first message of a file: Dovecot drops (and rewrites away)
    every X-Keywords entry not listed here, so the list comes with room to grow in place."""
    listed = " ".join(keywords).encode("utf-8")
    room = b" " * max(IMAPBASE_ROOM - len(listed), 1)
    return b"X-IMAPbase: %d 0000000000 %s%s\n" % (validity, listed, room)


#: Distinct flag sets whose bookkeeping fields are kept rendered (a handful per folder).
FLAG_SETS_CACHED = 256


def _flags_fields(flags: Iterable[str]) -> bytes:
    # Listings share one frozenset per distinct set of flags: a handful per folder.
    return _flags_fields_of(flags if isinstance(flags, frozenset) else frozenset(flags))


@functools.lru_cache(maxsize=FLAG_SETS_CACHED)
def _flags_fields_of(flags: frozenset[str]) -> bytes:
    flags = flags - UNCOPIED_FLAGS
    fields = b"Status: RO\n" if "\\Seen" in flags else b"Status: O\n"
    xstatus = "".join(
        letter
        for flag, letter in (("\\Answered", "A"), ("\\Flagged", "F"), ("\\Draft", "T"))
        if flag in flags
    )
    if xstatus:
        fields += b"X-Status: " + xstatus.encode() + b"\n"
    keywords = keywords_of(flags)
    if keywords:
        fields += b"X-Keywords: " + " ".join(keywords).encode("utf-8") + b"\n"
    return fields


def render_message(
    message: bytes, flags: Iterable[str], date: datetime | None, first_fields: bytes = b""
) -> bytes:
    """One mbox record (From_ line to the empty line after the message) for a message that
    arrives with CRLF line endings; ``first_fields`` go into the header of a file's first one."""
    return b"".join(render_parts(message, flags, date, first_fields))


#: How much of a message is turned into a record at a time (see render_parts).
RENDER_SPAN = 128 * 1024


def _line_end(data: bytes, start: int) -> int:
    """The end of the line that reaches ``start``: chunks cut there never split a CRLF or a line."""
    end = data.find(b"\n", start)
    return len(data) if end < 0 else end + 1


def render_parts(
    message: bytes, flags: Iterable[str], date: datetime | None, first_fields: bytes = b""
) -> Iterator[bytes]:
    """``render_message`` in pieces of about RENDER_SPAN, so that a 40 MB message is not copied
    whole three more times (LF endings, quoting, the record) on its way into the file."""
    cut = _line_end(message, RENDER_SPAN)
    header, rest = _split_header(to_lf(message[:cut]))
    if not rest and cut < len(message):
        # The header goes on past the first piece (or there is no body): take it all at once.
        cut = len(message)
        header, rest = _split_header(to_lf(message))
    escaped = (
        b"".join(KEPT_PREFIX + line if _FIELD.match(line) else line for line in _lines(header))
        if _ANY_FIELD.search(b"\n" + header)
        else header  # the usual case: no field of ours to rename, no line to split
    )
    fields = first_fields + _flags_fields(flags)
    if rest or not header or header.endswith(b"\n"):
        head = escaped + fields
    elif header[:1] not in (b" ", b"\t"):
        # No empty line and no final newline: put the fields first, so nothing is added at the end.
        head = fields + escaped
    else:
        # A lone folded line without a newline: the only shape that gains a final newline.
        head = escaped + b"\n" + fields
    if date is None:
        date = message_date(header) or utc_now()
    yield format_from_line(date, _sender(header)) + quote(head)
    if rest:
        yield quote(rest)
    # Pieces end at a line end, so each one is quoted and converted on its own.
    while cut < len(message):
        end = _line_end(message, cut + RENDER_SPAN)
        yield quote(to_lf(message[cut:end]))
        cut = end
    yield b"\n"


@dataclass
class Decoded:
    """A record read back: the message as it was appended, and what the bookkeeping said."""

    content: bytes
    flags: frozenset[str]
    date: datetime | None
    #: Why the message cannot be copied (a torn last message), or None.
    error: str | None = None
    #: c-client's "FOLDER INTERNAL DATA" message (X-IMAP): bookkeeping when it comes first.
    pseudo: bool = False
    #: Thunderbird expunged it and has not compacted the file yet: the user deleted it.
    expunged: bool = False
    fields: dict[bytes, list[bytes]] = field(default_factory=dict)


def _strip_bookkeeping(data: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """Remove the bookkeeping fields from the header, restore the ones the writer renamed."""
    cut = _header_end(data)
    header = data[:cut]
    if _ANY_FIELD.search(b"\n" + header) is None:
        return data, {}  # nothing to remove or restore: no copy of the message
    kept: list[bytes] = []
    found: dict[bytes, list[bytes]] = {}
    current: list[bytes] | None = None
    for line in _lines(header):
        if current is not None and line[:1] in (b" ", b"\t"):
            current[-1] += b" " + line.strip()
            continue
        current = None
        match = _FIELD.match(line)
        if match:
            if not match[1]:
                current = found.setdefault(match[2].lower(), [])
                current.append(line[match.end() :].strip())
                continue
            line = line[len(KEPT_PREFIX) :]
        kept.append(line)
    return b"".join([*kept, memoryview(data)[cut:]]), found


def _mozilla_flags(header: bytes) -> tuple[set[str], bool] | None:
    """Flags from Thunderbird's X-Mozilla-Status and -Keys; None when there are none."""
    match = re.search(rb"^x-mozilla-status:[ \t]*([0-9a-f]{1,8})", header, re.I | re.M)
    if match is None:
        return None
    bits = int(match[1], 16)
    flags = {
        flag
        for bit, flag in ((0x1, "\\Seen"), (0x2, "\\Answered"), (0x4, "\\Flagged"))
        if bits & bit
    }
    if bits & 0x1000:
        flags.add("$Forwarded")
    keys = re.search(rb"^x-mozilla-keys:([^\n]*)", header, re.I | re.M)
    if keys:
        flags.update(k.decode("utf-8", "replace") for k in keys[1].split())
    return flags, bool(bits & 0x8)


def decode_record(record: bytes) -> Decoded:
    """Turn one record (From_ line included) back into the message and its flags."""
    # The message ("raw") is record[start:], read in place: a large message is not copied
    # more than once on its way to ``content``.
    start = record.find(b"\n") + 1
    from_line, size = record[:start], len(record) - start
    ends_with_newline = size > 0 and record.endswith(b"\n")
    error = None
    if not ends_with_newline:
        error = (
            "the last message of the file is cut off (the file ends in the middle of a line); "
            "add a newline at the end of the file to copy it as it is"
        )
    header_end = _header_end(record, start)
    header = record[start:header_end]
    body_start = len(header) + (2 if record[header_end : header_end + 2] == b"\r\n" else 1)
    length = None
    for line in _lines(header):
        if match := _CONTENT_LENGTH.fullmatch(line):
            length = int(match[1])
            break
    if length is not None and body_start + length in (size - 1, size):
        # Written by Dovecot (mboxcl2): Content-Length marks the end, nothing is quoted.
        body = record[start : start + body_start + length]
    else:
        end = size
        if ends_with_newline:
            crlf = from_line.endswith(b"\r\n") and size >= 2 and record.endswith(b"\r\n")
            end -= 2 if crlf else 1
        quoted = _UNQUOTE.search(record, start, start + end)
        body = record[start : start + end]
        if quoted:
            body = unquote(body)
    content, fields = _strip_bookkeeping(body)
    del body
    flags: set[str] = set()
    expunged = False
    if b"status" in fields or b"x-status" in fields:
        for value in fields.get(b"status", []):
            if b"R" in value:
                flags.add("\\Seen")
        for value in fields.get(b"x-status", []):
            for letter, flag in ((b"A", "\\Answered"), (b"F", "\\Flagged"), (b"T", "\\Draft")):
                if letter in value:
                    flags.add(flag)
            if b"D" in value:
                flags.add("\\Deleted")
    elif (mozilla := _mozilla_flags(header_and_blank_line(content))) is not None:
        flags, expunged = mozilla
    for value in fields.get(b"x-keywords", []):
        flags.update(k.decode("utf-8", "replace") for k in value.split())
    date = parse_from_date(from_line) or message_date(header_and_blank_line(content))
    return Decoded(content, frozenset(flags), date, error, b"x-imap" in fields, expunged, fields)


def content_digest(content: bytes) -> bytes:
    """The digest a message's id is made of (see migrator.stores.mbox, "Identity")."""
    return hashlib.blake2b(content, digest_size=16).digest()


# -- reading a file as a stream of records ----------------------------------------------------


class NotMboxError(Exception):
    """The file does not start with a From_ line."""


def iter_records(
    stream: BinaryIO, fd: int, size: int, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(offset, record) for each message that starts before ``end``, holding one message in
    memory at a time.

    A line is a separator when it is a From_ line, except inside a body whose Content-Length
    (Dovecot's files) says the message goes on: there the line is message text."""
    if end is not None:
        size = min(size, end)
    offset = 0
    start = -1
    in_header = False
    length: int | None = None
    protected_until = -1
    for line in stream:
        if offset >= size:
            break
        if line[:5] == b"From " and offset >= protected_until and is_from_line(line):
            if start >= 0:
                yield start, _read_record(fd, start, offset)
            start, in_header, length = offset, True, None
        elif start < 0:
            if line.strip():
                raise NotMboxError()
        else:
            if in_header:
                if line in (b"\n", b"\r\n"):
                    in_header = False
                    if length is not None:
                        end = offset + len(line) + length
                        if _length_fits(fd, end, size):
                            protected_until = end + 1
                elif length is None and (match := _CONTENT_LENGTH.fullmatch(line)):
                    length = int(match[1])
        offset += len(line)
    if start >= 0:
        yield start, _read_record(fd, start, offset)


def _read_record(fd: int, start: int, end: int) -> bytes:
    """The bytes of a record, read whole from the file once its end is known (a list of its
    lines would take half as much memory again as the message)."""
    record = os.pread(fd, end - start, start)
    if len(record) != end - start:
        raise OSError(errno.EIO, "the file was cut short while it was read")
    return record


def _length_fits(fd: int, end: int, size: int) -> bool:
    """Whether a Content-Length ends where a message may end: at the end of the file, or at the
    newline before the next From_ line."""
    if end == size:
        return True
    if end > size:
        return False
    after = os.pread(fd, 6, end)
    return (after == b"\n" and end + 1 == size) or after == b"\nFrom "


# -- the keyword list of a file ---------------------------------------------------------------

#: How much of the file's start is read to find the first message's X-IMAPbase field.
FIRST_HEADER_BYTES = 65536


_IMAPBASE = re.compile(rb"^X-IMAPbase:[ \t]*\d+[ \t]+\d+([^\n]*)\n", re.IGNORECASE | re.MULTILINE)


def list_keywords(fd: int, keywords: Sequence[str]) -> None:
    """Add keywords to the first message's X-IMAPbase list, in the room kept for them.

    The one in-place write to archived bytes: it touches only that bookkeeping field's padding,
    so no message changes; when the room is used up Dovecot will not show the new keywords (our
    reader still does, from each message's X-Keywords)."""
    head = os.pread(fd, FIRST_HEADER_BYTES, 0)
    header, _ = _split_header(head[head.find(b"\n") + 1 :])
    match = _IMAPBASE.search(header)
    if match is None:
        return
    listed = match[1].split()
    missing = [k.encode("utf-8") for k in keywords if k.encode("utf-8") not in listed]
    if not missing:
        return
    text = b" " + b" ".join([*listed, *missing])
    room = len(match[1])
    if len(text) >= room:
        return
    offset = head.find(b"\n") + 1 + match.start(1)
    os.pwrite(fd, text + b" " * (room - len(text)), offset)
