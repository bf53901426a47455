"""migrator.headers: the one header parser of every store.

The header cuts, the identity key and the header digest feed ids and keys stored in journals, so
they are compared, over widely varying header blocks, with copies of the functions they replaced
(model.py, stores/pop3.py and stores/localfiles.py before headers.py). The stand-in INTERNALDATE
rule (the topmost Received header with a readable date, else Date) is pinned by examples.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime, parsedate_tz

from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.headers import (
    header_and_blank_line,
    header_block,
    header_digest,
    header_fields,
    header_fields_ordered,
    message_date,
    message_key,
    received_date,
)
from tests.unit.test_model import reference_header_fields, reference_message_key

# -- the replaced implementations, verbatim ---------------------------------------------------

# stores/pop3.py


def pop3_header_block(data: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        pos = data.find(sep)
        if pos >= 0:
            return data[: pos + len(sep) // 2]
    return data


_POP3_FOLD = re.compile(rb"\r?\n[ \t]")
_POP3_MUTABLE = frozenset(
    b"status x-status x-keywords x-uid x-imap x-imapbase x-uidl content-length lines".split()
)


def pop3_header_fields_ordered(header: bytes) -> list[tuple[bytes, bytes]]:
    fields: list[tuple[bytes, bytes]] = []
    for line in _POP3_FOLD.sub(b" ", pop3_header_block(header)).splitlines():
        name, sep, value = line.partition(b":")
        name = name.strip()
        if sep and name and b" " not in name and b"\t" not in name:
            fields.append((name.lower(), value.strip()))
    return fields


def pop3_header_digest(header: bytes) -> str:
    digest = hashlib.sha256()
    for name, value in pop3_header_fields_ordered(header):
        if name not in _POP3_MUTABLE:
            digest.update(name + b"\0" + b" ".join(value.split()) + b"\0")
    return "hdr-" + digest.hexdigest()[:40]


# stores/localfiles.py

_LOCAL_HEADER_END = re.compile(rb"\r?\n\r?\n")


def local_header_block(data: bytes) -> bytes:
    match = _LOCAL_HEADER_END.search(data)
    if data.startswith((b"\n", b"\r\n")):
        return b""
    return data[: match.end()] if match else data


def _local_fields(header: bytes) -> Iterator[tuple[bytes, bytes]]:
    unfolded = re.sub(rb"\r?\n[ \t]+", b" ", header)
    for line in unfolded.splitlines():
        name, sep, value = line.partition(b":")
        if sep and name and not name[:1].isspace():
            yield name.strip().lower(), value.strip()


def _local_parse_rfc_date(value: bytes) -> datetime | None:
    parsed = parsedate_tz(value.decode("ascii", "replace"))
    if parsed is None:
        return None
    try:
        offset = parsed[9] or 0
        naive = datetime(*parsed[:6])  # type: ignore[misc]
        return naive.replace(tzinfo=timezone(timedelta(seconds=offset)))
    except (ValueError, OverflowError, TypeError):
        return None


def local_date_from_headers(header: bytes) -> datetime | None:
    """The replaced mbox/Maildir rule: the LATEST date of all Received fields, else Date."""
    newest: datetime | None = None
    date_field: datetime | None = None
    for name, value in _local_fields(header):
        if name == b"received":
            _, _, when = value.rpartition(b";")
            parsed = _local_parse_rfc_date(when)
            if parsed is not None and (newest is None or parsed > newest):
                newest = parsed
        elif name == b"date" and date_field is None:
            date_field = _local_parse_rfc_date(value)
    return newest or date_field


# model.py: test_model.py keeps the plain form of header_fields and message_key (moved here
# verbatim), proved equal to the model.py code it replaced; the same references serve here.
model_header_fields = reference_header_fields
model_message_key = reference_message_key


# -- header blocks that vary widely -----------------------------------------------------------

NAMES = [
    b"Message-ID",
    b"message-id",
    b"MESSAGE-ID",
    b"Received",
    b"Date",
    b"From",
    b"To",
    b"Subject",
    b"Status",
    b"X-UIDL",
    b"Content-Length",
    b"X-Keywords",
    b"Lines",
    b"X Spaced",
    b"X\tTabbed",
    b" Indented",
    b"Return-Path",
    b"From ",
    b"",
]
VALUE_PIECES = [
    b"<a@b>",
    b"<\xc3\xa9t\xc3\xa9@x>",
    b"hello",
    b"\xff\xfe",
    b"by a; Tue, 14 Nov 2023 09:12:03 +0000",
    b"Wed, 1 Feb 2023 01:02:03 +0100",
    b";",
    b":",
    b" ",
    b"  ",
    b"\t",
    b"\x0b",
    b"\x0c",
    b"\r",
    b"(comment; x)",
]
#: Folds and line ends, one of which follows every piece of a field.
BREAKS = [b"\r\n ", b"\r\n\t", b"\n ", b"\n\t\t", b"\r\n   ", b"\n"]
ENDS = [b"\r\n", b"\n", b"\r\n", b"\n", b"\r"]


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """A message, or the start of one: fields (repeated, folded, non-ASCII, odd names) with CRLF,
    LF or mixed line ends, then a blank line and a body, or no blank line, or an empty body."""
    out: list[bytes] = []
    for _ in range(draw(st.integers(0, 10))):
        out.append(draw(st.sampled_from(NAMES)))
        out.append(draw(st.sampled_from([b":", b": ", b" :", b"\t: ", b""])))
        for _ in range(draw(st.integers(0, 4))):
            piece = draw(st.sampled_from(VALUE_PIECES) | st.binary(max_size=8))
            out.append(piece * draw(st.sampled_from([1, 1, 1, 3, 500])))  # long lines too
            if draw(st.booleans()):
                out.append(draw(st.sampled_from(BREAKS)))
        out.append(draw(st.sampled_from(ENDS)))
    shape = draw(st.sampled_from(["body", "empty body", "no blank line", "blank first"]))
    if shape == "blank first":
        out.insert(0, draw(st.sampled_from([b"\r\n", b"\n"])))
    if shape in ("body", "empty body"):
        out.append(draw(st.sampled_from([b"\r\n", b"\n"])))
    if shape == "body":
        out.append(draw(st.binary(max_size=40) | st.sampled_from([b"Message-ID: <body@x>\r\n"])))
    return b"".join(out)


blocks = header_blocks() | st.binary(max_size=300)


# -- identity: byte for byte what the replaced code gave ---------------------------------------


@settings(max_examples=400)
@given(blocks)
def test_header_block_is_the_pop3_cut_it_replaced(data: bytes) -> None:
    assert header_block(data) == pop3_header_block(data)


@settings(max_examples=400)
@given(blocks)
def test_header_and_blank_line_is_the_mbox_maildir_cut_it_replaced(data: bytes) -> None:
    assert header_and_blank_line(data) == local_header_block(data)


@settings(max_examples=400)
@given(blocks)
def test_header_digest_is_the_pop3_digest_it_replaced(data: bytes) -> None:
    """The digest ids of POP3 servers without UIDL are in journals: the one unfold (which joins a
    fold's whitespace into one space, where the old POP3 one kept all but the first character)
    changes no digest, because values are whitespace-normalised before they are hashed."""
    assert header_digest(data) == pop3_header_digest(data)
    assert header_digest(header_block(data)) == pop3_header_digest(pop3_header_block(data))
    assert [name for name, _ in header_fields_ordered(data)] == [
        name for name, _ in pop3_header_fields_ordered(data)
    ]


@settings(max_examples=400)
@given(blocks, st.integers(min_value=0, max_value=10**9))
def test_message_key_is_the_key_each_store_computed_before(data: bytes, size: int) -> None:
    """Each store's path to the key: IMAP, the engine and memory on the whole message, POP3 on
    its header_block, mbox and Maildir on the header with its blank line."""
    assert header_fields(data) == model_header_fields(data)
    assert message_key(data, size) == model_message_key(data, size)
    assert message_key(header_block(data), size) == model_message_key(pop3_header_block(data), size)
    assert message_key(header_and_blank_line(data), size) == model_message_key(
        local_header_block(data), size
    )


def test_the_two_cuts_differ_only_where_crlf_and_lf_are_mixed() -> None:
    """Why both cuts stay: on a mixed header they give other fields, hence other keys."""
    mixed = b"Subject: a\n\r\nMessage-ID: <m@x>\n\nbody\n"
    assert header_and_blank_line(mixed) == b"Subject: a\n\r\n"
    assert header_block(mixed) == b"Subject: a\n\r\nMessage-ID: <m@x>\n"
    assert message_key(header_block(mixed), 9) == "mid:<m@x>:9"
    assert message_key(header_and_blank_line(mixed), 9).startswith("hdr:")
    for same in (b"A: 1\r\nB: 2\r\n\r\nbody", b"A: 1\nB: 2\n\nbody"):
        assert header_and_blank_line(same).rstrip(b"\r\n") == header_block(same).rstrip(b"\r\n")


# -- the stand-in INTERNALDATE: the topmost Received header with a readable date ----------------


def received(when: datetime, by: str = "mx.example.org") -> bytes:
    return (
        f"Received: from relay by {by} with ESMTP id x1;\r\n\t{format_datetime(when)}\r\n".encode()
    )


T1 = datetime(2024, 3, 1, 8, 0, 0, tzinfo=UTC)
T2 = datetime(2024, 3, 1, 8, 0, 5, tzinfo=UTC)
T3 = datetime(2024, 3, 1, 8, 0, 9, tzinfo=timezone(timedelta(hours=2)))
FUTURE = datetime(2038, 1, 1, tzinfo=UTC)
DATE = b"Date: Thu, 29 Feb 2024 23:59:00 +0000\r\n"
DATE_VALUE = datetime(2024, 2, 29, 23, 59, tzinfo=UTC)
BODY = b"\r\nReceived: by body; Mon, 1 Jan 2024 00:00:00 +0000\r\n"


def test_several_received_in_order_take_the_topmost() -> None:
    header = received(T3) + received(T2) + received(T1) + DATE + BODY
    assert message_date(header) == T3
    assert message_date(header).utcoffset() == timedelta(hours=2)  # type: ignore[union-attr]


def test_received_out_of_order_still_take_the_topmost_not_the_latest() -> None:
    """A lower hop with a wrong clock (or a forged header) does not decide the date: the old
    mbox/Maildir rule took the latest date of all and gave 2038 here."""
    header = received(T2) + received(FUTURE, "forged.example") + received(T1) + DATE + BODY
    assert message_date(header) == T2
    assert local_date_from_headers(header_and_blank_line(header)) == FUTURE


def test_an_unparseable_received_date_falls_through_to_the_next_one_down() -> None:
    header = (
        b"Received: by mx.example.org; not a date at all\r\n"
        b"Received: by mx2.example.org (no semicolon, so no date)\r\n"
        b"Received: by mx3.example.org; Tue, 31 Feb 2024 25:61:00 +0000\r\n"
        + received(T1)
        + DATE
        + BODY
    )
    assert message_date(header) == T1


def test_no_received_falls_back_to_date() -> None:
    assert message_date(b"Subject: x\r\n" + DATE + BODY) == DATE_VALUE
    assert message_date(b"Received: by a; garbled\r\n" + DATE + BODY) == DATE_VALUE
    assert received_date(b"Subject: x\r\n" + DATE + BODY) is None


def test_no_received_and_no_date_gives_none() -> None:
    assert message_date(b"Subject: x\r\n" + BODY) is None
    assert message_date(b"Subject: x\r\nDate: yesterday\r\n" + BODY) is None
    assert message_date(b"") is None


def test_dates_before_1970_are_not_taken() -> None:
    header = b"Received: by a; Mon, 1 Jan 1900 00:00:00 +0000\r\n" + received(T1)
    assert message_date(header) == T1


@given(st.lists(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1))))
def test_in_the_usual_order_the_rule_agrees_with_the_one_it_replaced(
    hops: list[datetime],
) -> None:
    """Each hop stamps a later time on top of the earlier ones: the topmost is then also the
    latest, so for ordinary mail the mbox/Maildir dates do not change."""
    stamps = sorted((h.replace(microsecond=0, tzinfo=UTC) for h in hops), reverse=True)
    header = b"".join(received(s) for s in stamps) + DATE + BODY
    assert message_date(header) == local_date_from_headers(header_and_blank_line(header))
