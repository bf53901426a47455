"""The values that flow between stores, engine and journal. Standard library only."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

#: A folder name as its hierarchy levels, independent of any server's delimiter.
#: ("INBOX",) is the inbox; ("Archive", "2023") is Archive/2023 on one server and Archive.2023
#: on another.
FolderPath = tuple[str, ...]

INBOX: FolderPath = ("INBOX",)

#: RFC 6154 special uses that the folder map carries across.
SPECIAL_USES = ("\\Sent", "\\Drafts", "\\Trash", "\\Junk", "\\Archive")

#: Where the folders of other users' and shared namespaces (RFC 2342) are found, by namespace:
#: ("Shared Folders", "team", "ro") is a shared folder "team/ro" whatever the server's prefix;
#: --include-shared copies them under the target folder of that name.
NAMESPACE_FOLDERS = {"other": "Other Users", "shared": "Shared Folders"}

#: Flags never copied: \Recent is per-session; \Deleted would make the copy vanish at the next
#: expunge.
UNCOPIED_FLAGS = frozenset({"\\Recent", "\\Deleted"})


def display_name(path: FolderPath) -> str:
    """The user-facing name: levels joined by '/', whatever the server's delimiter."""
    return "/".join(path)


def parse_display_name(name: str) -> FolderPath:
    levels = tuple(part for part in name.strip("/").split("/"))
    if not levels or any(level == "" for level in levels):
        raise ValueError(f"bad folder name {name!r}")
    if levels[0].upper() == "INBOX":
        levels = ("INBOX", *levels[1:])
    return levels


@dataclass(frozen=True)
class Folder:
    path: FolderPath
    special_use: str | None = None
    #: False for \Noselect containers that hold folders but no messages.
    selectable: bool = True
    #: None for the user's own folders (the personal namespace, RFC 2342); "other" for other
    #: users' folders, "shared" for shared ones: left out unless the user asks for them.
    namespace: str | None = None


@dataclass(frozen=True)
class FolderState:
    """What the journal needs to know about an opened source folder."""

    #: Changes when the store renumbers its message ids (IMAP UIDVALIDITY); rows of an old
    #: validity no longer name the same messages.
    validity: str
    count: int = 0


#: The ``extra`` of a message that has none: one shared, read-only mapping (a folder listing
#: holds tens of thousands of refs; an empty dict each would cost megabytes).
_NO_EXTRA: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class MessageRef:
    """One source message, described without its bytes."""

    #: Stable id within (folder, validity): an IMAP UID, a POP3 UIDL, an mbox position and digest.
    id: str
    #: Size in bytes with CRLF line endings (what IMAP's RFC822.SIZE reports).
    size: int
    flags: frozenset[str] = frozenset()
    #: INTERNALDATE, timezone-aware; None when the store has none (the target then picks one).
    date: datetime | None = None
    #: Identity across stores, for recognising a copy without the journal; see message_key().
    key: str = ""
    extra: Mapping[str, str] = field(default_factory=lambda: _NO_EXTRA, compare=False, hash=False)


_KEY_FIELDS = (b"message-id", b"date", b"from", b"to", b"subject")
#: A line break that folds: the next line starts with a space or tab (a CR before it goes too).
_FOLD = re.compile(rb"\n[ \t]+")
#: A header line naming one of _KEY_FIELDS (group 1), its value up to the line end (group 2);
#: the pattern starts at the LF before the line (a literal is found at C speed, a ^ is not).
_KEY_LINE = re.compile(
    rb"\n[ \t\v\f]*(message-id|date|from|to|subject)[ \t\v\f]*:([^\n]*)", re.IGNORECASE
)


def unfold(block: bytes) -> bytes:
    """A header block with each folded line joined to the one before it by a single space."""
    # A pattern that starts with a literal LF is searched for at C speed; one that starts with an
    # optional CR (the obvious way to write this) is tried at every byte, five times slower.
    pieces: list[bytes] = []
    start = 0
    for match in _FOLD.finditer(block):
        cut = match.start()
        if cut > start and block[cut - 1] == 13:  # the CR of a CRLF
            cut -= 1
        pieces.append(block[start:cut])
        start = match.end()
    if not pieces:
        return block
    pieces.append(block[start:])
    return b" ".join(pieces)


def header_fields(header: bytes) -> dict[bytes, bytes]:
    """Unfolded header fields by lower-case name (first occurrence wins), for identity keys."""
    fields: dict[bytes, bytes] = {}
    for line in unfold(header[: _header_end(header)]).splitlines():
        name, sep, value = line.partition(b":")
        if sep and name and b" " not in name.strip():
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def _key_fields(header: bytes) -> dict[bytes, bytes]:
    """header_fields() restricted to _KEY_FIELDS: one regex pass instead of a Python loop over
    every line, when lines end only at LF (a bare CR also ends one for header_fields)."""
    block = unfold(header[: _header_end(header)])
    if _BARE_CR.search(block) is not None:
        fields = header_fields(header)
        return {name: fields[name] for name in _KEY_FIELDS if name in fields}
    found: dict[bytes, bytes] = {}
    for name, value in _KEY_LINE.findall(b"\n" + block):
        found.setdefault(name.lower(), value.strip())
    return found


#: A CR that does not start a CRLF: it ends a header line too, for header_fields().
_BARE_CR = re.compile(rb"\r(?!\n)")


def _header_end(data: bytes) -> int:
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = data.find(sep)
        if pos >= 0:
            return pos
    return len(data)


def message_key(header: bytes, size: int) -> str:
    """Identity of a message across stores: Message-ID and CRLF size, or a digest of its main
    header fields and size when it has no Message-ID. Two stores that hold the same message
    compute the same key from the header block alone, so no body is fetched to compare."""
    fields = _key_fields(header)
    mid = fields.get(b"message-id", b"").strip()
    if mid:
        return f"mid:{mid.decode('utf-8', 'replace')}:{size}"
    digest = hashlib.sha256()
    for name in _KEY_FIELDS[1:]:
        digest.update(name + b"\0" + b" ".join(fields.get(name, b"").split()) + b"\0")
    return f"hdr:{digest.hexdigest()[:32]}:{size}"


def crlf_size(data: bytes) -> int:
    """Size of the message once every bare LF is a CRLF, as an IMAP server counts it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """Line endings as the IMAP wire wants them; CRLF already there is kept."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data  # already CRLF throughout: no copy of a possibly large message
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)
