"""The values that flow between stores, engine and journal. Standard library only (and
migrator.headers, which is too)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

# The identity key is computed from the header block by the one header parser; these names are
# imported from here by the engine, the stores and verify.
from migrator.headers import header_fields as header_fields
from migrator.headers import message_key as message_key
from migrator.headers import unfold as unfold

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


def crlf_size(data: bytes) -> int:
    """Size of the message once every bare LF is a CRLF, as an IMAP server counts it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """Line endings as the IMAP wire wants them; CRLF already there is kept."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data  # already CRLF throughout: no copy of a possibly large message
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)
