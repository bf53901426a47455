"""mbox archives: a directory of mboxrd files, one per folder, or a single mbox file.

Layout. ``mbox:DIR`` keeps folder Archive/2023 in DIR/Archive/2023.mbox and INBOX in
DIR/INBOX.mbox; a folder that holds both messages and sub-folders is a file and a directory side
by side (Archive.mbox, Archive/). ``mbox:FILE.mbox`` (or any existing file) is one folder, INBOX;
as a target every folder is appended to that one file. As a source the tree may also be what
Thunderbird keeps (extension-less mbox files beside ``NAME.sbd/`` directories, ``.msf`` indexes
and other files ignored) or what Dovecot keeps (extension-less files, directories for levels);
extension-less files count only when they start with a From_ line.

Format. mboxrd (RFC 4155): each message is a From_ line carrying its INTERNALDATE (with its
numeric zone, which Dovecot reads), the message with LF line endings and every line matching
``>*From `` quoted with one more '>', and one empty line. Reading removes exactly that: the From_
line, the final newline and one '>'. Files Dovecot wrote (Content-Length, no quoting) are read by
their Content-Length, as Dovecot reads them, and are not unquoted.

Flags live in the header fields mutt and Dovecot use: ``Status: RO`` (\\Seen), ``X-Status: AFT``
(\\Answered \\Flagged \\Draft; D is \\Deleted, never written) and ``X-Keywords:``. On reading, these
bookkeeping fields and the others Dovecot keeps (X-UID, X-IMAP, X-IMAPbase, Content-Length) are
removed from the message, as Dovecot hides them. A message that arrives with a field of one of
these names keeps it: the writer renames it ``X-Migrator-Kept-<name>`` (one more prefix for each
one already there) and the reader renames it back, so every message round-trips byte for byte.
Thunderbird's X-Mozilla-Status/-Keys give the flags of a message that has no Status field; messages
Thunderbird marked expunged (awaiting compaction) are not listed.

Identity. A message's id is the digest of its bytes (as fetch returns them) and how many identical
messages come before it in the file: ``<blake2b-128 hex>:<n>``. It survives the file growing, mutt
rewriting Status fields, Dovecot adding X-UID, and other programs deleting earlier messages, all of
which would shift a byte offset; so the validity is a constant naming this scheme.

Appending. Under a dotlock (``FILE.lock``) and an fcntl lock, as Dovecot's ``mbox_write_locks =
dotlock fcntl``: a small sidecar ``.FILE.migrator-append`` records where the batch starts before a
byte is written; the batch is written, fsynced, then the sidecar is removed. A sidecar found later
means a writer died mid-batch: ``recover`` (or the next append) truncates back to where that batch
began, never below the journal's last committed point, and only when the bytes before it are
unchanged (same inode, same digest of the 64 bytes before it). Until then listing and ``index``
stop at that offset, because the engine reconciles against ``index`` before it recovers: a batch
written whole but never finished must not count as copied and then be cut. Bytes another program
appended after our last batch (no sidecar) are never touched.

The first message of a new file carries Dovecot's ``X-IMAPbase`` with the keyword list and room to
grow: Dovecot drops, and rewrites away, X-Keywords entries missing from that list. Adding a keyword
later overwrites part of that padding in place, the only write to bytes already archived; it never
changes a message.

Deleting. ``can_delete`` is False: removing a message means rewriting the file, which would break
the promise that nothing archived is ever rewritten and race with mail clients reading it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import BinaryIO

from migrator.errors import ConfigError, FolderError, MessageError, StoreError
from migrator.headers import header_and_blank_line, message_date, message_key
from migrator.model import (
    INBOX,
    UNCOPIED_FLAGS,
    Folder,
    FolderPath,
    FolderState,
    MessageRef,
    crlf_size,
)
from migrator.stores.base import AppendResult, Source, Target
from migrator.stores.localfiles import (
    FILE_MODE,
    LOCK_TIMEOUT,
    decode_level,
    dotlock,
    fcntl_lock,
    fcntl_unlock,
    fsync_dir,
    make_private_dirs,
    os_reason,
    special_use_by_name,
    to_lf,
    utc_now,
    write_all,
    write_parts,
)

#: Names the validity after the id scheme, so a future scheme does not match old journal rows.
VALIDITY = "mbox-digest-1"
SUFFIX = ".mbox"
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
#: Files beside mbox files that are never folders (Thunderbird, Dovecot, ourselves).
_IGNORED_SUFFIXES = (".msf", ".dat", ".html", ".json", ".sqlite", ".lock", ".tmp", ".bak")
_SNIFF = 4096


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


def keywords_of(flags: Iterable[str]) -> list[str]:
    """The keywords that fit a space-separated X-Keywords field, in a stable order."""
    return sorted(
        k for k in flags if k and not k.startswith("\\") and not any(c.isspace() for c in k)
    )


def imapbase_field(keywords: Iterable[str], validity: int) -> bytes:
    """Dovecot's X-IMAPbase for the first message of a file: Dovecot drops (and rewrites away)
    every X-Keywords entry not listed here, so the list comes with room to grow in place."""
    listed = " ".join(keywords).encode("utf-8")
    room = b" " * max(IMAPBASE_ROOM - len(listed), 1)
    return b"X-IMAPbase: %d 0000000000 %s%s\n" % (validity, listed, room)


def _flags_fields(flags: Iterable[str]) -> bytes:
    # Listings share one frozenset per distinct set of flags: a handful per folder.
    return _flags_fields_of(flags if isinstance(flags, frozenset) else frozenset(flags))


@functools.lru_cache(maxsize=256)
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
#: Rendered bytes gathered into one write.
WRITE_SPAN = 1024 * 1024


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


def _digest(content: bytes) -> bytes:
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


# -- the store --------------------------------------------------------------------------------


@dataclass
class _Listing:
    """The refs open_folder found, kept for the list_messages that follows it."""

    signature: tuple[int, int, int]
    refs: list[MessageRef]


class MboxStore(Source, Target):
    """Both roles over a tree of mbox files or a single mbox file; see the module docstring."""

    delimiter = "/"
    stable_ids = True
    can_delete = False
    #: A batch costs four fsyncs and two journal commits (see Target.commit_group).
    commit_group = 4

    def __init__(
        self, path: Path, *, create: bool = True, lock_timeout: float = LOCK_TIMEOUT
    ) -> None:
        """``create`` False makes a missing path an error at connect (a source must exist)."""
        self.path = Path(path)
        self.label = f"mbox:{path}"
        self.create = create
        self.lock_timeout = lock_timeout
        self.single = self.path.suffix == SUFFIX and not self.path.is_dir()
        self._points: dict[Path, str] = {}
        self._floors: dict[Path, str | None] = {}
        self._listings: dict[Path, _Listing] = {}

    # -- connecting and folders ------------------------------------------------------------

    def connect(self) -> None:
        path = self.path
        if path.exists():
            self.single = path.is_file()
            if not path.is_file() and not path.is_dir():
                raise ConfigError(f"{self.label}: not a file or a directory")
            mode = os.R_OK if self.single else os.R_OK | os.X_OK
            if not os.access(path, mode):
                raise ConfigError(f"{self.label}: permission denied; check the owner and mode")
        elif not self.create:
            raise ConfigError(f"{self.label}: no such file or directory")

    def close(self) -> None:
        self._listings.clear()

    def list_folders(self) -> list[Folder]:
        if self.single:
            return [Folder(INBOX)]
        if not self.path.is_dir():
            return []
        files = self._scan_tree()
        paths: set[FolderPath] = set()
        for folder in files:
            paths.update(folder[:depth] for depth in range(1, len(folder) + 1))
        return [
            Folder(p, special_use_by_name(p) if p in files else None, p in files)
            for p in sorted(paths)
        ]

    def _scan_tree(self) -> dict[FolderPath, Path]:
        """Every mbox file under the root, by folder path (ours, Thunderbird's, Dovecot's)."""
        found: dict[FolderPath, Path] = {}

        def walk(directory: Path, prefix: FolderPath) -> None:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = entry.is_file()
                except OSError:
                    continue
                if is_dir:
                    level = name[:-4] if name.endswith(".sbd") else name
                    walk(Path(entry.path), (*prefix, self._level(level, prefix)))
                elif is_file and self._is_mbox_file(Path(entry.path), name):
                    level = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
                    folder = (*prefix, self._level(level, prefix))
                    if folder in found:
                        folder = (*prefix, name)
                    found.setdefault(folder, Path(entry.path))

        walk(self.path, ())
        return found

    @staticmethod
    def _level(name: str, prefix: FolderPath) -> str:
        if not prefix and name.upper() == "INBOX":
            return "INBOX"
        return decode_level(name)

    @staticmethod
    def _is_mbox_file(path: Path, name: str) -> bool:
        if name.endswith(SUFFIX):
            return True
        if name.lower().endswith(_IGNORED_SUFFIXES):
            return False
        try:
            with open(path, "rb") as handle:
                head = handle.read(_SNIFF)
        except OSError:
            # Unreadable: list it, so the user hears about it instead of losing a folder silently.
            return "." not in name
        if not head:
            # Thunderbird keeps an empty file (and its .msf) for an empty folder.
            return path.with_name(name + ".msf").exists()
        return is_from_line(head.lstrip(b"\r\n").split(b"\n", 1)[0] + b"\n")

    def _file(self, path: FolderPath) -> Path:
        """The file that holds a folder: the existing one if a foreign layout has it, else ours."""
        if self.single:
            return self.path
        for level in path:
            if (
                not level
                or level.startswith(".")
                or "/" in level
                or "\0" in level
                or level.endswith(".sbd")
            ):
                raise FolderError(
                    f"{self.label}: folder name level {level!r} cannot be a file name here"
                )
        ours = self.path.joinpath(*path[:-1], path[-1] + SUFFIX)
        try:
            return self._existing_file(path, ours)
        except OSError as exc:  # a name longer than the file system holds (ENAMETOOLONG), ...
            raise FolderError(
                f"{self.label}: no file here can hold this folder: {os_reason(exc)}"
            ) from None

    def _existing_file(self, path: FolderPath, ours: Path) -> Path:
        if ours.exists():
            return ours
        for candidate in (
            self.path.joinpath(*(f"{level}.sbd" for level in path[:-1]), path[-1]),
            self.path.joinpath(*path),
        ):
            if candidate.is_file():
                return candidate
        if path == INBOX:
            for name in ("Inbox", "inbox"):
                if (self.path / name).is_file():
                    return self.path / name
        tree = self._scan_tree() if self.path.is_dir() else {}
        return tree.get(path, ours)

    # -- reading ---------------------------------------------------------------------------

    def open_folder(self, path: FolderPath) -> FolderState:
        file = self._readable(path)
        refs = list(self._list(file))
        self._listings[file] = _Listing(_signature(file), refs)
        return FolderState(VALIDITY, len(refs))

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        file = self._readable(path)
        listing = self._listings.pop(file, None)
        if listing is not None and listing.signature == _signature(file):
            refs: Iterable[MessageRef] = listing.refs
        else:
            refs = self._list(file)
        return (ref for ref in refs if ref.id not in skip)

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        file = self._readable(path)
        located: dict[str, tuple[int, int]] | None = None
        try:
            handle = open(file, "rb")  # noqa: SIM115 - closed in finally, around the yields
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read {file}: {os_reason(exc)}") from None
        try:
            for ref in refs:
                if ref.extra.get("error"):
                    yield ref, MessageError(ref.extra["error"])
                    continue
                content = self._read_at(
                    handle, ref, ref.extra.get("offset"), ref.extra.get("length")
                )
                if content is None:
                    if located is None:
                        located = {
                            r.id: (int(r.extra["offset"]), int(r.extra["length"]))
                            for r in self._list(file)
                        }
                    where = located.get(ref.id)
                    if where is not None:
                        content = self._read_at(handle, ref, str(where[0]), str(where[1]))
                if content is None:
                    yield (
                        ref,
                        MessageError(f"no longer in {file}: the file changed since it was listed"),
                    )
                else:
                    yield ref, content
        finally:
            handle.close()

    def _read_at(
        self, handle: BinaryIO, ref: MessageRef, offset: str | None, length: str | None
    ) -> bytes | None:
        if offset is None or length is None:
            return None
        try:
            record = os.pread(handle.fileno(), int(length), int(offset))
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read: {os_reason(exc)}") from None
        decoded = decode_record(record)
        if _digest(decoded.content).hex() != ref.id.partition(":")[0]:
            return None
        return decoded.content

    def _readable(self, path: FolderPath) -> Path:
        file = self._file(path)
        if not file.exists():
            raise FolderError(f"{self.label}: folder {'/'.join(path)} does not exist")
        if not os.access(file, os.R_OK):
            raise FolderError(f"{self.label}: cannot read {file}: permission denied")
        return file

    def _list(self, file: Path) -> Iterator[MessageRef]:
        seen: dict[bytes, int] = {}
        for n, (offset, record, decoded) in enumerate(self._decoded(file)):
            if decoded.expunged or (decoded.pseudo and n == 0):
                continue
            digest = _digest(decoded.content)
            n = seen.get(digest, 0)
            seen[digest] = n + 1
            size = crlf_size(decoded.content)
            extra = {"offset": str(offset), "length": str(len(record))}
            if decoded.error:
                extra["error"] = decoded.error
            yield MessageRef(
                id=f"{digest.hex()}:{n}",
                size=size,
                flags=decoded.flags,
                date=decoded.date,
                key=message_key(header_and_blank_line(decoded.content), size),
                extra=extra,
            )

    def _decoded(self, file: Path) -> Iterator[tuple[int, bytes, Decoded]]:
        try:
            handle = open(file, "rb")  # noqa: SIM115 - closed in finally, around the yields
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read {file}: {os_reason(exc)}") from None
        try:
            size = os.fstat(handle.fileno()).st_size
            # A batch a dead writer left unfinished is not there: recover will cut it off, so
            # index() must not count its messages as already copied.
            cut = _unfinished_from(handle.fileno(), file, self._floors.get(file))
            for offset, record in iter_records(handle, handle.fileno(), size, cut):
                yield offset, record, decode_record(record)
        except NotMboxError:
            raise FolderError(
                f"{self.label}: {file} is not an mbox file (it does not start with a 'From ' "
                "line); nothing was read from it"
            ) from None
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read {file}: {os_reason(exc)}") from None
        finally:
            handle.close()

    # -- writing ---------------------------------------------------------------------------

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        file = self._file(path)
        if file.exists():
            return
        try:
            make_private_dirs(file.parent)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            os.close(fd)
            fsync_dir(file.parent)
        except FileExistsError:
            return
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot create {file}: {os_reason(exc)}") from None

    def index(self, path: FolderPath) -> Iterable[str]:
        file = self._file(path)
        if not file.exists():
            return []
        return [ref.key for ref in self._list(file) if not ref.extra.get("error")]

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        if not items:
            return []
        file = self._file(path)
        try:
            make_private_dirs(file.parent)
        except OSError as exc:
            raise FolderError(
                f"{self.label}: cannot create {file.parent}: {os_reason(exc)}"
            ) from None
        keywords = sorted({k for ref, _ in items for k in keywords_of(ref.flags)})
        with self._locked(file) as fd:
            self._recover_locked(fd, file, self._floors.get(file))
            start = os.fstat(fd).st_size
            first_fields = imapbase_field(keywords, int(time.time())) if start == 0 else b""
            if start and keywords:
                try:
                    _list_keywords(fd, keywords)
                except OSError as exc:
                    raise StoreError(
                        f"{self.label}: cannot write {file}: {os_reason(exc)}"
                    ) from None
            sidecar = self._begin(fd, file, start)
            offsets: list[int] = []
            position = start
            try:
                os.lseek(fd, start, os.SEEK_SET)
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    # Another program left no final newline; a From_ line must start a line.
                    write_all(fd, b"\n")
                    position += 1
                # Records go out in gathered writes of about WRITE_SPAN: few system calls for
                # many small messages, and no whole copy of a large one.
                pending: list[bytes] = []
                held = 0
                for ref, data in items:
                    offsets.append(position)
                    for part in render_parts(data, ref.flags, ref.date, first_fields):
                        pending.append(part)
                        held += len(part)
                        position += len(part)
                        if held >= WRITE_SPAN:
                            write_parts(fd, pending)
                            _start_writeback(fd, position - held, held)
                            pending, held = [], 0
                    first_fields = b""
                write_parts(fd, pending)
                os.fsync(fd)
            except OSError as exc:
                # Nothing of this batch counts: cut it off now rather than at the next run.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                self._end(sidecar, file)
                raise StoreError(f"{self.label}: cannot write {file}: {os_reason(exc)}") from None
            self._end(sidecar, file)
            self._points[file] = _point(fd, position)
        return [AppendResult(target_id=str(offset)) for offset in offsets]

    def resume_point(self, path: FolderPath) -> str | None:
        return self._points.get(self._file(path))

    def recover(self, path: FolderPath, point: str | None) -> None:
        file = self._file(path)
        self._floors[file] = point
        if not file.exists() or not _sidecar(file).exists():
            return
        with self._locked(file) as fd:
            self._recover_locked(fd, file, point)

    @contextlib.contextmanager
    def _locked(self, file: Path) -> Iterator[int]:
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot open {file}: {os_reason(exc)}") from None
        try:
            with dotlock(file, self.lock_timeout):
                fcntl_lock(fd, file, self.lock_timeout)
                try:
                    yield fd
                finally:
                    fcntl_unlock(fd)
        finally:
            os.close(fd)

    def _begin(self, fd: int, file: Path, start: int) -> Path | None:
        """Record where this batch starts, durably, before writing any of it."""
        sidecar = _sidecar(file)
        state = {"offset": start, "inode": os.fstat(fd).st_ino, "tail": _tail(fd, start)}
        try:
            out = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                write_all(out, json.dumps(state).encode())
                os.fsync(out)
            finally:
                os.close(out)
            fsync_dir(file.parent)
        except OSError:
            # A directory we may not write to: the batch goes on, without torn-tail recovery.
            return None
        return sidecar

    @staticmethod
    def _end(sidecar: Path | None, file: Path) -> None:
        if sidecar is None:
            return
        with contextlib.suppress(FileNotFoundError):
            sidecar.unlink()
        fsync_dir(file.parent)

    def _recover_locked(self, fd: int, file: Path, point: str | None) -> None:
        """Cut off a batch a dead writer left unfinished; see the module docstring."""
        if not _sidecar(file).exists():
            return
        cut = _unfinished_from(fd, file, point)
        if cut is not None and cut < os.fstat(fd).st_size:
            os.ftruncate(fd, cut)
            os.fsync(fd)
        # An untrusted sidecar means the file changed since: keep every byte, drop the record.
        self._end(_sidecar(file), file)


def _unfinished_from(fd: int, file: Path, point: str | None) -> int | None:
    """Where the batch a dead writer left unfinished begins: the offset its sidecar records,
    never below the journal's committed ``point``; None without a sidecar that still describes
    this file (same inode, same bytes before the offset)."""
    try:
        state = json.loads(_sidecar(file).read_bytes())
        start, inode, tail = int(state["offset"]), int(state["inode"]), str(state["tail"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    st = os.fstat(fd)
    if not (0 <= start <= st.st_size and inode == st.st_ino and _tail(fd, start) == tail):
        return None
    floor = _parse_point(point)
    if floor is not None and floor[0] <= st.st_size and _tail(fd, floor[0]) == floor[1]:
        start = max(start, floor[0])
    return start


_IMAPBASE = re.compile(rb"^X-IMAPbase:[ \t]*\d+[ \t]+\d+([^\n]*)\n", re.IGNORECASE | re.MULTILINE)


def _list_keywords(fd: int, keywords: Sequence[str]) -> None:
    """Add keywords to the first message's X-IMAPbase list, in the room kept for them.

    The one in-place write to archived bytes: it touches only that bookkeeping field's padding,
    so no message changes; when the room is used up Dovecot will not show the new keywords (our
    reader still does, from each message's X-Keywords)."""
    head = os.pread(fd, 65536, 0)
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


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now (and not keep them cached: an
    archive is written once and read rarely), so that the fsync at the end of the batch waits
    for the last piece only, not for all of it."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _sidecar(file: Path) -> Path:
    return file.with_name(f".{file.name}.migrator-append")


def _tail(fd: int, end: int) -> str:
    """A digest of the 64 bytes before ``end``: enough to tell that the file before it is the
    file we wrote, not one another program rewrote."""
    start = max(0, end - 64)
    return hashlib.blake2b(os.pread(fd, end - start, start), digest_size=8).hexdigest()


def _point(fd: int, end: int) -> str:
    return f"{end}:{_tail(fd, end)}"


def _parse_point(point: str | None) -> tuple[int, str] | None:
    if not point:
        return None
    end, _, tail = point.partition(":")
    try:
        return int(end), tail
    except ValueError:
        return None


def _signature(file: Path) -> tuple[int, int, int]:
    st = file.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns
