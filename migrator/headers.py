"""Reading a message's header block, for every store: where the header ends, unfolding, the
fields, the identity pieces (Message-ID key, header digest) and the stand-in INTERNALDATE.
Standard library only.

Identity. ``message_key`` and ``header_digest`` feed ids and keys that journals of existing users
hold, so their output is fixed byte for byte (tests/unit/test_headers.py compares them with the
implementations they replaced). For the same reason there are two header cuts:
``header_block`` (what POP3 and the identity key have always cut: the first CRLF blank line, else
the first LF one) and ``header_and_blank_line`` (what mbox and Maildir have always cut: the first
empty line whatever mix of line ends precedes it). They differ only on headers that mix CRLF and
LF; unifying them would change the keys of such messages in existing archives.

INTERNALDATE stand-in: a POP3, mbox or Maildir message without an INTERNALDATE takes the date
of its newest Received header, else its Date header, else none (the target then picks one).
"Newest" is the TOPMOST Received header with a readable date: each hop prepends its own, so the
topmost is the last hop, the delivery into this mailbox, written by the receiving server: what an
IMAP server records as INTERNALDATE. The latest date among all Received headers is not used: the
lower headers are written by machines further away (or forged by the sender), and one with a
wrong clock, say a date in 2038, would then decide the date of the message.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

# -- where the header ends --------------------------------------------------------------------


def header_end(data: bytes) -> int:
    """Where the header of ``data`` ends, without its last line end: at the first CRLF blank
    line, else at the first LF one, else at the end (a message without a body)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = data.find(sep)
        if pos >= 0:
            return pos
    return len(data)


def header_block(data: bytes) -> bytes:
    """The header of a message (or of a POP3 TOP n 0 answer) with the end of its last line,
    without the blank line after it; all of ``data`` when there is no blank line."""
    end = header_end(data)
    if end == len(data):
        return data
    return data[: end + (2 if data.startswith(b"\r\n", end) else 1)]


#: The first empty line, after a line ending LF or CRLF (mbox and Maildir files may mix them).
_EMPTY_LINE = re.compile(rb"\r?\n\r?\n")


def header_and_blank_line(data: bytes) -> bytes:
    """The header as mbox and Maildir cut it: up to and with the first empty line, whatever line
    ends it has; empty when the message starts with one, all of it when there is none."""
    if data.startswith((b"\n", b"\r\n")):
        return b""
    match = _EMPTY_LINE.search(data)
    return data[: match.end()] if match else data


# -- fields -----------------------------------------------------------------------------------

#: A line break that folds: the next line starts with a space or tab (a CR before it goes too).
_FOLD = re.compile(rb"\n[ \t]+")
#: A CR that does not start a CRLF: it ends a header line too (bytes.splitlines).
_BARE_CR = re.compile(rb"\r(?!\n)")


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
    """Unfolded header fields by lower-case name (first occurrence wins), for identity keys.
    A name may hold a tab here (not in header_fields_ordered): the keys stored in journals were
    made this way."""
    fields: dict[bytes, bytes] = {}
    for line in unfold(header[: header_end(header)]).splitlines():
        name, sep, value = line.partition(b":")
        if sep and name and b" " not in name.strip():
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def header_fields_ordered(header: bytes) -> list[tuple[bytes, bytes]]:
    """Every header field as (lower-case name, unfolded value), in order, repeats kept."""
    fields: list[tuple[bytes, bytes]] = []
    for line in unfold(header_block(header)).splitlines():
        name, sep, value = line.partition(b":")
        name = name.strip()
        if sep and name and b" " not in name and b"\t" not in name:
            fields.append((name.lower(), value.strip()))
    return fields


# -- identity ---------------------------------------------------------------------------------

_KEY_FIELDS = (b"message-id", b"date", b"from", b"to", b"subject")
#: A header line naming one of _KEY_FIELDS (group 1), its value up to the line end (group 2);
#: the pattern starts at the LF before the line (a literal is found at C speed, a ^ is not).
_KEY_LINE = re.compile(
    rb"\n[ \t\v\f]*(message-id|date|from|to|subject)[ \t\v\f]*:([^\n]*)", re.IGNORECASE
)


def _key_fields(header: bytes) -> dict[bytes, bytes]:
    """header_fields() restricted to _KEY_FIELDS: one regex pass instead of a Python loop over
    every line, when lines end only at LF (a bare CR also ends one for header_fields)."""
    block = unfold(header[: header_end(header)])
    if _BARE_CR.search(block) is not None:
        fields = header_fields(header)
        return {name: fields[name] for name in _KEY_FIELDS if name in fields}
    found: dict[bytes, bytes] = {}
    for name, value in _KEY_LINE.findall(b"\n" + block):
        found.setdefault(name.lower(), value.strip())
    return found


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
#: Hex digits of the SHA-256 kept in a header digest (160 bits: no collision among a mailbox).
DIGEST_HEX_DIGITS = 40


def header_digest(header: bytes) -> str:
    """Stands in for a UIDL on a server without one: a digest of the header fields that no server
    rewrites (Received lines, Message-ID, Date, ...), whitespace-normalised. The message size is
    left out because mbox-backed servers change it when they add a Status field."""
    digest = hashlib.sha256()
    for name, value in header_fields_ordered(header):
        if name not in MUTABLE_FIELDS:
            digest.update(name + b"\0" + b" ".join(value.split()) + b"\0")
    return "hdr-" + digest.hexdigest()[:DIGEST_HEX_DIGITS]


# -- the stand-in INTERNALDATE ----------------------------------------------------------------

#: Years a header date may name; outside them it is garbled (or before Unix time, which the
#: stores cannot give a file) and the next candidate is tried.
FIRST_YEAR, LAST_YEAR = 1970, 9999


def parse_date(text: bytes) -> datetime | None:
    """An RFC 5322 date, timezone-aware; None when it cannot be read."""
    # Imported here: email.utils pulls in a dozen modules (~10 ms) that an IMAP-to-IMAP run,
    # which never needs a stand-in date, should not pay for at every start.
    from email.utils import parsedate_to_datetime

    try:
        value = parsedate_to_datetime(text.decode("latin-1").strip())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if value is None or not FIRST_YEAR <= value.year <= LAST_YEAR:
        return None
    if value.tzinfo is None:  # "-0000": the zone is unknown; UTC is the honest reading
        value = value.replace(tzinfo=UTC)
    return value


def received_date(header: bytes) -> datetime | None:
    """The date of the newest (topmost) Received field that has a readable one: the text after its
    last ';'. The next Received field down is tried when the newest one's date is garbled."""
    for name, value in header_fields_ordered(header):
        if name == b"received" and b";" in value:
            date = parse_date(value.rpartition(b";")[2])
            if date is not None:
                return date
    return None


def message_date(header: bytes) -> datetime | None:
    """INTERNALDATE for a message that has none: the newest Received date, else the Date field
    (see the module docstring for why the topmost Received header is the newest)."""
    date = received_date(header)
    if date is not None:
        return date
    for name, value in header_fields_ordered(header):
        if name == b"date":
            return parse_date(value)
    return None
