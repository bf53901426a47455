"""Shared pieces of the mbox and Maildir store tests: messages, refs, hypothesis strategies."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import strategies as st

from migrator.model import UNCOPIED_FLAGS, MessageRef, crlf_size, message_key

SYSTEM_FLAGS = ("\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "\\Recent")


def crlf(*lines: bytes | str, end: bool = True) -> bytes:
    """A message from lines, joined with CRLF as it comes off the IMAP wire."""
    data = b"\r\n".join(line.encode() if isinstance(line, str) else line for line in lines)
    return data + (b"\r\n" if end else b"")


def ref_for(
    data: bytes,
    flags: frozenset[str] | set[str] = frozenset(),
    date: datetime | None = None,
    ident: str = "src",
) -> MessageRef:
    """The ref a source store would describe ``data`` with."""
    size = crlf_size(data)
    return MessageRef(ident, size, frozenset(flags), date, message_key(data, size))


def copied_flags(flags: frozenset[str] | set[str]) -> frozenset[str]:
    return frozenset(flags) - UNCOPIED_FLAGS


def scratch_dir() -> tempfile.TemporaryDirectory[str]:
    """A temporary directory on tmpfs when there is one: property tests fsync a lot."""
    shm = "/dev/shm"
    fast = os.path.isdir(shm) and os.access(shm, os.W_OK)
    return tempfile.TemporaryDirectory(dir=shm if fast else None)


def mode(path: os.PathLike[str] | str) -> int:
    return os.stat(path).st_mode & 0o777


SIMPLE = crlf(
    "Return-Path: <alice@example.org>",
    "Message-ID: <simple@example.org>",
    "From: Alice <alice@example.org>",
    "To: bob@example.org",
    "Subject: hello",
    "Date: Tue, 02 Jan 2024 10:00:00 +0100",
    "",
    "Hello Bob.",
    "From the start of the week, lines begin with From.",
    ">From quoted already",
    ">>From twice",
    "bye",
)

# -- hypothesis strategies ----------------------------------------------------------------------

_TRICKY_LINES = st.sampled_from(
    [
        b"From x",
        b"From ",
        b">From y",
        b">>From z",
        b"From MAILER-DAEMON Thu Nov 29 22:33:52 2001",
        b"Status: RO",
        b"X-Status: AF",
        b"X-Keywords: a b",
        b"X-UID: 7",
        b"X-IMAPbase: 1 0000000001",
        b"Content-Length: 5",
        b"content-length : 0",
        b"X-Migrator-Kept-Status: O",
        b"x-migrator-kept-x-migrator-kept-status: R",
        b"Subject: hi",
        b"Message-ID: <m@x>",
        b" folded",
        b"\tcontinued",
        b"",
        b"\r",
    ]
)
_PLAIN_LINES = st.binary(max_size=30).map(lambda b: b.replace(b"\n", b""))

#: Messages as an IMAP server hands them out: CRLF lines, mbox-hostile content, any final line.
messages = st.builds(
    lambda lines, end: b"\r\n".join(lines) + (b"\r\n" if end else b""),
    st.lists(st.one_of(_TRICKY_LINES, _PLAIN_LINES), max_size=25),
    st.booleans(),
)
#: Anything at all, bare CRs and LFs included.
any_bytes = st.binary(max_size=300)


def spliced(pieces: list[bytes], max_size: int = 40) -> st.SearchStrategy[bytes]:
    """Bytes made of the given pieces in any order and number: inputs that hit a parser's
    corners (a bare CR, a folded line, a field name in another case) far more often than
    random bytes do."""
    return st.lists(st.sampled_from(pieces), max_size=max_size).map(b"".join)


keywords = st.sets(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="\\"),
        min_size=1,
        max_size=12,
    ),
    max_size=5,
)
flag_sets = st.builds(
    lambda system, words: frozenset(system) | frozenset(words),
    st.sets(st.sampled_from(SYSTEM_FLAGS)),
    keywords,
)
_zones = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


def dates(min_year: int = 1000, max_year: int = 9998) -> st.SearchStrategy[datetime]:
    """Aware dates with whole seconds (INTERNALDATE has no fractions)."""
    return st.builds(
        lambda naive, zone: naive.replace(tzinfo=zone),
        st.datetimes(datetime(min_year, 1, 2), datetime(max_year, 12, 30)).map(
            lambda d: d.replace(microsecond=0)
        ),
        _zones,
    )


def same_instant(a: datetime | None, b: datetime | None) -> bool:
    return a is not None and b is not None and a.astimezone(UTC) == b.astimezone(UTC)
