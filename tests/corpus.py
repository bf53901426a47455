"""Deterministic test mail: messages, corpora, and seeding/snapshotting an IMAP account.

Pure python (stdlib + imapclient).  Folder names here always use '/' as the hierarchy separator and
are Unicode; ``seed_imap`` and ``snapshot_imap`` translate to and from the server's separator (and
imapclient does the modified UTF-7).

Dates: ``make_message(i)`` writes a ``Received:`` header stamped with ``message_date(i)`` (the
delivery time) and a ``Date:`` header a few minutes earlier, and ``make_corpus`` uses the same
``message_date`` as the INTERNALDATE, so a POP3 or mbox copy (which takes the newest Received date)
lands with the same INTERNALDATE as an IMAP copy.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, NamedTuple

__all__ = [
    "DEFAULT_FOLDERS",
    "FLAGS",
    "KEYWORDS",
    "Msg",
    "Snap",
    "expected_snapshot",
    "make_corpus",
    "make_message",
    "message_date",
    "seed_imap",
    "snapshot_imap",
]

CRLF = b"\r\n"
DEFAULT_FOLDERS: tuple[str, ...] = (
    "INBOX",
    "Sent",
    "Drafts",
    "Trash",
    "Archive",
    "Archive/2023",
    "Archive/2023/Q1",
    "Lists/Dev & Ops",
    "Перепи́ска/Ünïcødé",
)
FLAGS: tuple[str, ...] = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft")
KEYWORDS: tuple[str, ...] = ("$Forwarded", "$Junk", "work", "todo")

_FIRST_NAMES = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy")
_LAST_NAMES = ("Smith", "Jones", "Müller", "García", "Dubois", "Rossi", "Novak", "Kowalski")
_DOMAINS = ("example.com", "example.org", "mail.example.net", "corp.example")
_WORDS = (
    *("meeting", "agenda", "report", "budget", "quarterly", "review", "invoice", "shipment"),
    *("travel", "plan", "draft", "final", "notes", "project", "deadline", "update", "summary"),
    *("proposal", "contract", "schedule", "lunch", "question", "answer"),
)
_UTF8_WORDS = ("Grüße", "naïve", "façade", "Привет", "日本語", "smörgåsbord", "Ελληνικά", "🙂")
_OFFSETS = (-8, -5, -3, 0, 1, 2, 5.5, 9)  # hours; 5.5 = India


class Snap(NamedTuple):
    """One message as seen over IMAP: exact bytes, flags (no \\Recent), INTERNALDATE in UTC."""

    body: bytes
    flags: frozenset[str]
    date: datetime

    def sort_key(self) -> tuple[bytes, tuple[str, ...], datetime]:
        return (self.body, tuple(sorted(self.flags)), self.date)


@dataclass(frozen=True)
class Msg:
    folder: str  # '/'-separated, Unicode: 'INBOX', 'Archive/2023', 'Перепи́ска/Ünïcødé'
    data: bytes  # the whole message, CRLF line endings
    flags: tuple[str, ...]  # e.g. ('\\Seen', '$Forwarded', 'work')
    date: datetime  # INTERNALDATE, timezone-aware, in the past

    def snap(self) -> Snap:
        return Snap(self.data, frozenset(self.flags), self.date.astimezone(UTC))

    @property
    def message_id(self) -> str | None:
        for line in self.data.split(CRLF + CRLF, 1)[0].split(CRLF):
            if line.lower().startswith(b"message-id:"):
                return line.split(b":", 1)[1].strip().decode()
        return None


# --------------------------------------------------------------------------------------------
# messages


def message_date(i: int) -> datetime:
    """The delivery time of message *i*: aware, between 2005 and 2022, whole seconds."""
    rng = random.Random(f"date-{i}")
    start = datetime(2005, 1, 1, tzinfo=UTC)
    span = int((datetime(2022, 12, 31, tzinfo=UTC) - start).total_seconds())
    when = start + timedelta(seconds=rng.randrange(span))
    offset = timezone(timedelta(hours=rng.choice(_OFFSETS)))
    return when.astimezone(offset)


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode()
    addr = f"{local}@{rng.choice(_DOMAINS)}"
    return f"{first} {last}", addr


def _ascii_display(name: str) -> str:
    """RFC 2047-encode a display name if it is not ASCII (the 7-bit variant of a message)."""
    if name.isascii():
        return name
    from email.header import Header

    return Header(name, "utf-8").encode()


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def make_message(
    i: int,
    *,
    size: int | None = None,
    message_id: bool = True,
    from_lines: bool = False,
    eight_bit: bool = False,
    subject: str | None = None,
    date: datetime | None = None,
) -> bytes:
    """Message number *i*, the same bytes every time for the same arguments, CRLF line endings.

    size: the exact total length in bytes (padding the body with text lines).
    message_id: False leaves out the Message-ID header.
    from_lines: the body has lines starting with "From ", ">From " and ">>From " (mboxrd quoting).
    eight_bit: raw UTF-8 in Subject/From (RFC 6532 style) and an 8bit UTF-8 body.
    date: the delivery time written in the Received header (default ``message_date(i)``).
    """
    rng = random.Random(f"msg-{i}")
    delivered = date if date is not None else message_date(i)
    sent = delivered - timedelta(seconds=rng.randrange(30, 900))
    from_name, from_addr = _person(rng)
    to_name, to_addr = _person(rng)
    if subject is None:
        subject = f"{_sentence(rng, rng.randrange(2, 6))[:-1]} #{i}"
        if eight_bit:
            subject += f" {rng.choice(_UTF8_WORDS)} {rng.choice(_UTF8_WORDS)}"
    digest = hashlib.sha1(f"{i}".encode()).hexdigest()[:12]
    relay = f"mx{rng.randrange(1, 9)}.{rng.choice(_DOMAINS)}"
    headers = [
        f"Return-Path: <{from_addr}>",
        f"Received: from {relay} ({relay} [192.0.2.{rng.randrange(1, 254)}])",
        f"\tby mail.example.net (Postfix) with ESMTPS id {digest.upper()[:10]}",
        f"\tfor <{to_addr}>; {format_datetime(delivered)}",
        f"Received: from [198.51.100.{rng.randrange(1, 254)}] by {relay} with ESMTPSA;",
        f"\t{format_datetime(sent + timedelta(seconds=2))}",
        f"Date: {format_datetime(sent)}",
        f"From: {from_name if eight_bit else _ascii_display(from_name)} <{from_addr}>",
        f"To: {to_name if eight_bit else _ascii_display(to_name)} <{to_addr}>",
        f"Subject: {subject}",
    ]
    if message_id:
        headers.append(f"Message-ID: <{i}.{digest}@corpus.example>")
    headers += [
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8" if eight_bit else "Content-Type: text/plain",
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
        f"X-Corpus-Index: {i}",
    ]
    body = [f"Hello {to_name.split()[0]},", ""]
    for _ in range(rng.randrange(1, 4)):
        body.append(_sentence(rng, rng.randrange(5, 14)))
    if eight_bit:
        body.append(" ".join(rng.choice(_UTF8_WORDS) for _ in range(6)))
    if from_lines:
        body += [
            "",
            "From here on, the lines below look like mbox separators:",
            "From nobody@example.com Mon Jan  1 00:00:00 2001",
            ">From the quoted one, which mboxrd must keep apart",
            ">>From twice quoted",
            "From",
            "",
        ]
    body += ["", "-- ", from_name if eight_bit else from_name.encode("ascii", "ignore").decode()]
    data = CRLF.join(h.encode() for h in headers) + CRLF + CRLF
    data += CRLF.join(line.encode() for line in body) + CRLF
    if size is not None:
        data = _pad(data, size, rng)
    return data


def _pad(data: bytes, size: int, rng: random.Random) -> bytes:
    need = size - len(data)
    if need == 0:
        return data
    if need < 0:
        raise ValueError(f"size={size} is smaller than the message without padding ({len(data)})")
    if need == 1:  # one byte cannot hold a CRLF line: lengthen the last line instead
        return data[:-2] + b"." + CRLF
    lines = []
    while need > 0:
        width = min(need, 78)  # including CRLF
        if need - width == 1:
            width -= 1
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz     ") for _ in range(width - 2))
        lines.append(text.strip().ljust(width - 2, ".").encode() + CRLF)
        need -= width
    return data + b"".join(lines)


def make_corpus(seed: int, n: int, folders: Sequence[str] = DEFAULT_FOLDERS) -> list[Msg]:
    """*n* distinct messages spread over *folders* (each folder gets one while n allows).

    Mixes: plain, 8-bit UTF-8, no Message-ID, From_ lines, a few larger (20-200 kB) messages, and
    random flags/keywords.  Same seed, same corpus; different seeds give different Message-IDs.
    """
    rng = random.Random(f"corpus-{seed}-{n}")
    msgs = []
    for k in range(n):
        folder = folders[k] if k < len(folders) else rng.choice(folders)
        i = seed * 1_000_000 + k
        kind = rng.random()
        size = None
        if kind < 0.08:
            size = rng.randrange(20_000, 200_000)
        data = make_message(
            i,
            size=size,
            message_id=not (0.08 <= kind < 0.16),
            from_lines=0.16 <= kind < 0.28,
            eight_bit=0.28 <= kind < 0.42,
        )
        flags = [f for f in FLAGS if rng.random() < (0.6 if f == "\\Seen" else 0.2)]
        flags += [kw for kw in KEYWORDS if rng.random() < 0.15]
        msgs.append(Msg(folder, data, tuple(flags), message_date(i)))
    return msgs


# --------------------------------------------------------------------------------------------
# IMAP


def _parents(folder: str) -> list[str]:
    parts = folder.split("/")
    return ["/".join(parts[: k + 1]) for k in range(len(parts))]


def seed_imap(
    client: Any, msgs: Iterable[Msg], separator: str, *, chunk: int = 50, prefix: str = ""
) -> None:
    """Create (and subscribe) every folder of *msgs* and its parents, then append the messages
    with their flags and dates, in order (MULTIAPPEND when offered). *prefix* is the server's
    personal namespace prefix ("INBOX." on Cyrus's default configuration), put before every
    folder but INBOX."""
    by_folder: dict[str, list[Msg]] = {}
    for m in msgs:
        by_folder.setdefault(m.folder, []).append(m)
    for folder in sorted({p for f in by_folder for p in _parents(f)}, key=lambda f: f.count("/")):
        ensure_folder(client, folder, separator, prefix)
    multi = b"MULTIAPPEND" in client.capabilities()
    for folder, items in by_folder.items():
        name = _to_server(folder, separator, prefix)
        for start in range(0, len(items), chunk):
            batch = items[start : start + chunk]
            if multi:
                client.multiappend(
                    name, [{"msg": m.data, "flags": m.flags, "date": m.date} for m in batch]
                )
            else:
                for m in batch:
                    client.append(name, m.data, flags=m.flags, msg_time=m.date)


def ensure_folder(client: Any, folder: str, separator: str, prefix: str = "") -> None:
    """Create and subscribe *folder* ('/'-separated) unless it exists; INBOX always exists."""
    if folder.upper() == "INBOX":
        return
    name = _to_server(folder, separator, prefix)
    if not client.folder_exists(name):
        client.create_folder(name)
    client.subscribe_folder(name)


def _to_server(folder: str, separator: str, prefix: str = "") -> str:
    if folder.upper() == "INBOX":
        return "INBOX"
    if separator != "/" and separator in folder:
        raise ValueError(f"folder {folder!r} contains the server's separator {separator!r}")
    return prefix + folder.replace("/", separator)


def _str(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


def snapshot_imap(
    client: Any, *, include_empty: bool = True, prefix: str = ""
) -> dict[str, list[Snap]]:
    """Every selectable folder ('/'-separated Unicode name) -> its messages, sorted.

    With a personal namespace *prefix* ("INBOX."), names are given without it, and folders
    outside it (other users', shared ones) are left out.

    Flags exclude \\Recent; dates are INTERNALDATEs converted to UTC.  Folders are opened with
    EXAMINE, and bodies fetched with BODY.PEEK[], so nothing changes on the server.
    """
    client.normalise_times = False
    result: dict[str, list[Snap]] = {}
    for flags, delim, name in client.list_folders():
        flagset = {_str(f).lower() for f in flags}
        if "\\noselect" in flagset or "\\nonexistent" in flagset:
            continue
        name = _str(name)
        sep = _str(delim) if delim else None
        if name.upper() == "INBOX":
            key = "INBOX"
        elif prefix and not name.startswith(prefix):
            continue
        else:
            relative = name[len(prefix) :]
            key = "/".join(relative.split(sep)) if sep and sep != "/" else relative
        client.select_folder(name, readonly=True)
        uids = client.search("ALL")
        snaps = []
        for start in range(0, len(uids), 200):
            batch = uids[start : start + 200]
            fetched = client.fetch(batch, ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
            for uid in batch:
                item = fetched[uid]
                msg_flags = frozenset(
                    _str(f) for f in item[b"FLAGS"] if _str(f).lower() != "\\recent"
                )
                snaps.append(
                    Snap(item[b"BODY[]"], msg_flags, item[b"INTERNALDATE"].astimezone(UTC))
                )
        if b"UNSELECT" in client.capabilities():
            client.unselect_folder()
        else:
            client.close_folder()
        if snaps or include_empty:
            result[key] = sorted(snaps, key=Snap.sort_key)
    return result


def expected_snapshot(msgs: Iterable[Msg], *, include_empty: bool = True) -> dict[str, list[Snap]]:
    """What ``snapshot_imap`` returns for an empty account seeded with ``seed_imap(msgs)``:
    INBOX and every folder and parent folder of *msgs* (empty lists unless include_empty=False)."""
    result: dict[str, list[Snap]] = {"INBOX": []} if include_empty else {}
    msgs = list(msgs)
    if include_empty:
        for m in msgs:
            for p in _parents(m.folder):
                result.setdefault("INBOX" if p.upper() == "INBOX" else p, [])
    for m in msgs:
        result.setdefault("INBOX" if m.folder.upper() == "INBOX" else m.folder, []).append(m.snap())
    return {k: sorted(v, key=Snap.sort_key) for k, v in result.items()}
