"""Pure IMAP text: UID sets, APPENDUID and COPYUID, and the fast parsers of the usual FETCH
answers (tests/unit/test_imap_parse.py holds them to imapclient's own parser). No I/O here."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from migrator.model import MessageRef
from migrator.scrub import server_text
from migrator.stores.base import AppendResult

_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]", re.IGNORECASE)


def uid_set(uids: Iterable[int]) -> str:
    """Compact RFC 3501 sequence set ("1:5,9,12:14"), keeping command lines short."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def expand_uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        first, last = int(low), int(high or low)
        step = 1 if last >= first else -1
        uids.extend(range(first, last + step, step))
    return uids


def parse_appenduid(response: bytes) -> tuple[int, list[int]] | None:
    """(UIDVALIDITY, UIDs) from an APPEND completion; None when the server has no UIDPLUS."""
    m = _APPENDUID.search(response)
    if not m:
        return None
    return int(m[1]), expand_uid_set(m[2].decode())


def batches_by_size(
    refs: Sequence[MessageRef], max_bytes: int, max_count: int
) -> Iterator[list[MessageRef]]:
    """Split refs into runs whose total size stays under max_bytes (a bigger message goes alone)."""
    batch: list[MessageRef] = []
    total = 0
    for ref in refs:
        if batch and (total + ref.size > max_bytes or len(batch) >= max_count):
            yield batch
            batch, total = [], 0
        batch.append(ref)
        total += ref.size
    if batch:
        yield batch


#: imaplib's wording of a refusal, "LOGIN command error: NO [b'text']", once server_text has
#: decoded the list of bytes in it.
_IMAPLIB_REFUSAL = re.compile(r"\w+ command error: (\w+) (.*)", re.DOTALL)


def server_words(data: Any) -> str:
    """A server's words as a message may repeat them (decoded, one line, secrets scrubbed), an
    imaplib refusal reduced to what the server said ("NO text")."""
    text = server_text(data)
    if refusal := _IMAPLIB_REFUSAL.fullmatch(text):
        text = f"{refusal[1]} {refusal[2]}"
    return text


def uids_of(ids: Iterable[str], validity: str | None) -> list[int]:
    """The UIDs of target ids ("UIDVALIDITY:UID") that belong to ``validity``."""
    uids = []
    for target_id in ids:
        known, _, uid = target_id.partition(":")
        if known == validity and uid.isdigit():
            uids.append(int(uid))
    return uids


_COPYUID = re.compile(rb"\[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\]", re.IGNORECASE)


def copyuid(response: bytes) -> dict[int, str]:
    """Source UID -> new target id ("UIDVALIDITY:UID") from COPYUID answers (RFC 4315)."""
    found: dict[int, str] = {}
    for m in _COPYUID.finditer(response):
        olds, news = expand_uid_set(m[2].decode()), expand_uid_set(m[3].decode())
        if len(olds) == len(news):
            found.update(
                (old, f"{m[1].decode()}:{new}") for old, new in zip(olds, news, strict=True)
            )
    return found


def is_utf8(data: bytes) -> bool:
    """Whether a keyword the server sent can be kept as text."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


#: Zone objects kept by UTC offset (a mailbox has a handful of offsets, a busy one dozens).
ZONES_KEPT = 64


@lru_cache(maxsize=ZONES_KEPT)
def fixed_zone(offset: timedelta) -> timezone:
    """One time zone object per UTC offset, shared by every date that has it."""
    return timezone(offset)


_META_LINE = re.compile(rb"(\d+) \((.*)\)", re.DOTALL)
_META_ITEM = re.compile(
    rb'(UID|RFC822\.SIZE|FLAGS|INTERNALDATE|MODSEQ) (\d+|\([^()"]*\)|"[^"]*")(?: |\Z)'
)
_INTERNALDATE = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
#: The answer's usual shape, Dovecot's and most servers': the items in the order asked for.
_META_USUAL = re.compile(
    rb'(\d+) \(UID (\d+) RFC822\.SIZE (\d+) FLAGS \(([^()"]*)\) INTERNALDATE "([^"]*)"\)'
)
#: Time zones by their text in INTERNALDATE (sign, hours, minutes): one object per zone.
_ZONES: dict[tuple[Any, ...], timezone] = {}
_MONTHS = {
    name: n for n, name in enumerate(b"jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)
}


def parse_meta(data: Sequence[Any]) -> dict[int, dict[bytes, Any]] | None:
    """The usual answer to a listing's UID FETCH (UID RFC822.SIZE FLAGS INTERNALDATE) by UID,
    as imapclient's parse_fetch_response gives it, about ten times faster: a 200,000-message
    mailbox is listed in seconds. None for any other shape (literals, other items), which the
    caller leaves to imapclient."""
    found: dict[int, dict[bytes, Any]] = {}
    for line in data:
        usual = _META_USUAL.fullmatch(line) if isinstance(line, bytes) else None
        if usual is not None and (date := internaldate(usual[5])) is not None:
            found[int(usual[2])] = {
                b"SEQ": int(usual[1]),
                b"RFC822.SIZE": int(usual[3]),
                b"FLAGS": tuple(usual[4].split()),
                b"INTERNALDATE": date,
            }
            continue
        if not isinstance(line, bytes) or (whole := _META_LINE.fullmatch(line)) is None:
            return None
        item: dict[bytes, Any] = {b"SEQ": int(whole[1])}
        text, pos = whole[2], 0
        while pos < len(text):
            part = _META_ITEM.match(text, pos)
            if part is None:
                return None
            name, value = part[1], part[2]
            if name == b"FLAGS":
                item[name] = tuple(value[1:-1].split())
            elif name == b"INTERNALDATE":
                date = internaldate(value[1:-1])
                if date is None:
                    return None
                item[name] = date
            elif name == b"MODSEQ":  # sent with FLAGS once CONDSTORE is on (RFC 7162)
                if not value[1:-1].isdigit():
                    return None
                item[name] = (int(value[1:-1]),)  # as imapclient gives it
            elif value[:1].isdigit():
                item[name] = int(value)
            else:
                return None
            pos = part.end()
        uid = item.pop(b"UID", None)
        if uid is None:
            return None
        found[uid] = item
    return found


_BODY_HEAD = re.compile(rb"(\d+) \(UID (\d+) BODY\[\] \{\d+\}")


def parse_bodies(data: Sequence[Any]) -> dict[int, dict[bytes, Any]] | None:
    """The usual answer to UID FETCH (BODY.PEEK[]), ``* N FETCH (UID U BODY[] {size}`` and the
    message, by UID, as parse_fetch_response gives it without lexing each response in Python;
    None for any other shape (an unsolicited FLAGS update, items in another order)."""
    found: dict[int, dict[bytes, Any]] = {}
    closing = False
    for part in data:
        if closing:
            if part != b")":
                return None
            closing = False
            continue
        if not isinstance(part, tuple) or len(part) != 2:
            return None
        head = _BODY_HEAD.fullmatch(part[0])
        if head is None:
            return None
        found[int(head[2])] = {b"SEQ": int(head[1]), b"BODY[]": part[1]}
        closing = True
    return None if closing else found


def complete_bodies(data: Sequence[Any]) -> dict[int, bytes]:
    """UID -> body of the ``* N FETCH (UID U BODY[] {size}`` answers that arrived whole (their
    closing parenthesis read) before a FETCH broke off; anything else is left out."""
    found: dict[int, bytes] = {}
    for part, after in zip(data, [*data[1:], None], strict=False):
        if not isinstance(part, tuple) or len(part) != 2 or after != b")":
            continue
        head = _BODY_HEAD.fullmatch(part[0])
        if head is not None and isinstance(part[1], bytes):
            found[int(head[2])] = part[1]
    return found


def internaldate(text: bytes) -> datetime | None:
    parts = _INTERNALDATE.fullmatch(text)
    month = _MONTHS.get(parts[2].lower()) if parts else None
    if parts is None or month is None:
        return None
    zone = _ZONES.get(written := parts.group(7, 8, 9))
    if zone is None:
        minutes = int(parts[8]) * 60 + int(parts[9])
        zone = _ZONES.setdefault(
            written, fixed_zone(timedelta(minutes=-minutes if parts[7] == b"-" else minutes))
        )
    try:
        return datetime(
            int(parts[3]),
            month,
            int(parts[1]),
            int(parts[4]),
            int(parts[5]),
            int(parts[6]),
            tzinfo=zone,
        )
    except ValueError:
        return None


def text_bytes(data: Any) -> bytes:
    if isinstance(data, list | tuple):
        return b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data)
    return data if isinstance(data, bytes) else str(data).encode()


def append_results(response: bytes, count: int) -> list[AppendResult]:
    parsed = parse_appenduid(response)
    if parsed is None or len(parsed[1]) != count:
        return [AppendResult() for _ in range(count)]
    validity, uids = parsed
    return [AppendResult(target_id=f"{validity}:{uid}") for uid in uids]
