"""Is the target equal to the source?  Per folder: message count, and a digest of the sorted
(body digest, flags, INTERNALDATE) tuples, read back over IMAP (or from the mbox files).

What each peer is held to is a ``Compare``: mbsync drops keywords, POP3 has neither flags nor
folders, and so on; the report says what was compared.  Only folders holding messages count:
an empty folder a tool created (a parent, a special-use folder) is neither missing nor extra.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from benchmarks.corpus import KEYWORDS, Corpus, MessageInfo
from benchmarks.imapwire import Connection

SYSTEM_FLAGS = frozenset({"\\Seen", "\\Answered", "\\Flagged", "\\Draft"})


@dataclass(frozen=True)
class Compare:
    """Which parts of each message must match."""

    flags: bool = True  # \\Seen \\Answered \\Flagged \\Draft
    keywords: bool = True
    dates: bool = True
    #: header fields a tool adds to every message (lower-case), left out of the body digest
    ignore_fields: tuple[bytes, ...] = ()

    def describe(self) -> str:
        ignored = ", ".join(f.decode() for f in self.ignore_fields)
        parts = [
            "count per folder",
            f"bodies (less the {ignored} field it adds)" if ignored else "bodies",
        ]
        if self.flags:
            parts.append("flags")
        if self.keywords:
            parts.append("keywords")
        if self.dates:
            parts.append("INTERNALDATE")
        return ", ".join(parts)


@dataclass
class Verdict:
    equal: bool
    compared: str
    problems: list[str] = field(default_factory=list)


def _key(m: MessageInfo, how: Compare) -> tuple[str, tuple[str, ...], int | None]:
    flags = tuple(
        f
        for f in m.flags
        if (how.flags and f in SYSTEM_FLAGS) or (how.keywords and f not in SYSTEM_FLAGS)
    )
    return (m.digest, flags, m.date if how.dates else None)


def compare(
    expected: dict[str, list[MessageInfo]], got: dict[str, list[MessageInfo]], how: Compare
) -> Verdict:
    """Folder by folder: counts, then a digest over the sorted message keys."""
    problems: list[str] = []
    want = {f: v for f, v in expected.items() if v}
    have = {f: v for f, v in got.items() if v}
    for folder in sorted(set(want) | set(have)):
        a, b = want.get(folder, []), have.get(folder, [])
        if len(a) != len(b):
            problems.append(f"{folder}: {len(b)} messages, expected {len(a)}")
            continue
        ka = sorted(_key(m, how) for m in a)
        kb = sorted(_key(m, how) for m in b)
        if _digest(ka) != _digest(kb):
            missing = Counter(ka) - Counter(kb)
            extra = Counter(kb) - Counter(ka)
            problems.append(
                f"{folder}: {sum(missing.values())} of {len(ka)} differ, e.g. expected "
                f"{_show(next(iter(missing)))}, got {_show(next(iter(extra)))}"
            )
    return Verdict(not problems, how.describe(), problems)


def _show(key: tuple[str, tuple[str, ...], int | None]) -> str:
    digest, flags, date = key
    when = "-" if date is None else datetime.fromtimestamp(date, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"[{digest[:12]} ({' '.join(flags)}) {when}]"


def _digest(keys: list[tuple[str, tuple[str, ...], int | None]]) -> str:
    h = hashlib.sha256()
    for digest, flags, date in keys:
        h.update(f"{digest} {' '.join(flags)} {date}\n".encode())
    return h.hexdigest()


def snapshot_imap(
    host: str, port: int, user: str, password: str, ca_file: str, drop: tuple[bytes, ...] = ()
) -> dict[str, list[MessageInfo]]:
    """Every folder's messages over IMAPS (bodies hashed as they stream in)."""
    result: dict[str, list[MessageInfo]] = {}
    with Connection(host, port, user, password, ca_file) as conn:
        for name, wire in conn.list_folders():
            fetched = conn.fetch_all(wire, digest=True, meta=True, drop_fields=drop)
            result[name] = [MessageInfo(f.digest or "", f.flags, f.date or 0) for f in fetched]
    return result


def verify_imap(
    corpus: Corpus, host: str, port: int, user: str, password: str, ca_file: str, how: Compare
) -> Verdict:
    """Compare an IMAP account with the corpus."""
    snap = snapshot_imap(host, port, user, password, ca_file, how.ignore_fields)
    return compare(corpus.folders, snap, how)


# -- mbox ---------------------------------------------------------------------------------------

_FROM_LINE = re.compile(rb"^From \S+ +(.+)$")
_BOOKKEEPING = (
    b"status:",
    b"x-status:",
    b"x-keywords:",
    b"x-uid:",
    b"x-imap:",
    b"x-imapbase:",
    b"content-length:",
)


_QUOTED_LINE = re.compile(rb"^>(>*From )", re.MULTILINE)


def _mbox_messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """(From_ line, message with LF endings) of an mboxrd file, unquoted.

    A From_ line separates messages when it starts the file or follows an empty line; each
    message is followed by one empty line, which is not part of it.  (bytes.find, not a
    multi-line regex: this reads ~850 MB per check.)
    """
    starts = [0] if data.startswith(b"From ") else []
    k = data.find(b"\n\nFrom ")
    while k >= 0:
        starts.append(k + 2)
        k = data.find(b"\n\nFrom ", k + 1)
    out = []
    for n, start in enumerate(starts):
        eol = data.find(b"\n", start)
        end = starts[n + 1] - 1 if n + 1 < len(starts) else len(data)
        body = data[eol + 1 : end]
        if n + 1 == len(starts) and body.endswith(b"\n\n"):
            body = body[:-1]
        if b">From " in body:
            body = _QUOTED_LINE.sub(rb"\1", body)
        out.append((data[start:eol], body))
    return out


def _split_status(msg: bytes) -> tuple[bytes, tuple[str, ...]]:
    """Remove the Status / X-Status / X-Keywords fields; return the message and its flags."""
    head, sep, body = msg.partition(b"\n\n")
    kept: list[bytes] = []
    flags: set[str] = set()
    for line in head.split(b"\n"):
        low = line.lower()
        if low.startswith(b"status:"):
            if b"R" in line.split(b":", 1)[1]:
                flags.add("\\Seen")
        elif low.startswith(b"x-status:"):
            value = line.split(b":", 1)[1]
            for letter, flag in ((b"A", "\\Answered"), (b"F", "\\Flagged"), (b"T", "\\Draft")):
                if letter in value:
                    flags.add(flag)
        elif low.startswith(b"x-keywords:"):
            flags.update(w for w in line.split(b":", 1)[1].decode().split() if w in KEYWORDS)
        elif not low.startswith(_BOOKKEEPING):
            kept.append(line)
    return b"\n".join(kept) + sep + body, tuple(sorted(flags))


def snapshot_mbox(root: Path) -> dict[str, list[MessageInfo]]:
    """Every ``*.mbox`` file under *root* as a folder ('/'-separated relative name)."""
    result: dict[str, list[MessageInfo]] = {}
    for path in sorted(root.rglob("*.mbox")):
        folder = path.relative_to(root).with_suffix("").as_posix()
        folder = "INBOX" if folder.upper() == "INBOX" else folder
        items = []
        for from_line, msg in _mbox_messages(path.read_bytes()):
            clean, flags = _split_status(msg)
            crlf = clean.replace(b"\n", b"\r\n")
            m = _FROM_LINE.match(from_line)
            date = 0
            if m:
                date = _from_line_date(m.group(1).decode(errors="replace"))
            items.append(MessageInfo(hashlib.sha256(crlf).hexdigest(), flags, date))
        result[folder] = items
    return result


def _from_line_date(text: str) -> int:
    """The date of a From_ line: asctime, with an optional numeric zone after it."""
    text = " ".join(text.split())
    for fmt in ("%a %b %d %H:%M:%S %Y %z", "%a %b %d %H:%M:%S %Y"):
        try:
            return int(datetime.strptime(text, fmt).timestamp())
        except ValueError:
            continue
    try:
        return int(parsedate_to_datetime(text).timestamp())
    except (TypeError, ValueError):
        return 0


def verify_mbox(corpus: Corpus, root: Path, how: Compare) -> Verdict:
    """Compare an mbox directory with the corpus."""
    return compare(corpus.folders, snapshot_mbox(root), how)
