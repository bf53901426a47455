"""The pure parts of the POP3 store, on byte literals: listings, dates, digests, dot-stuffing."""

from __future__ import annotations

import base64
import hashlib
import io
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.headers import (
    header_block,
    header_digest,
    header_fields_ordered,
    message_date,
    received_date,
)
from migrator.scrub import forget_all, remember
from migrator.stores.pop3wire import (
    Wire,
    apop_digest,
    parse_capa,
    parse_list,
    parse_uidl,
    sasl_plain,
    server_said,
    unstuff,
)

PST = timezone(timedelta(hours=-8))


# --- listings -------------------------------------------------------------------------------


def test_parse_uidl_keeps_server_order() -> None:
    lines = [b"1 000000016b099dec", b"2 whqtswO00WBw418f9t5JxYwZ", b"10 abc"]
    assert parse_uidl(lines) == [
        (1, "000000016b099dec"),
        (2, "whqtswO00WBw418f9t5JxYwZ"),
        (10, "abc"),
    ]


def test_parse_uidl_ignores_blank_and_garbage_lines() -> None:
    assert parse_uidl([b"", b"x y", b"3", b" 4 abc "]) == [(4, "abc")]


def test_parse_uidl_repeated_uidl_still_names_one_message_each() -> None:
    assert parse_uidl([b"1 same", b"2 other", b"3 same", b"4 same"]) == [
        (1, "same"),
        (2, "other"),
        (3, "same#2"),
        (4, "same#3"),
    ]


def test_parse_list_sizes_are_octets_as_sent() -> None:
    assert parse_list([b"1 5153", b"2 120", b"bogus", b"3 x"]) == {1: 5153, 2: 120}


def test_parse_capa_names_upper_case_with_arguments() -> None:
    caps = parse_capa([b"TOP", b"uidl", b"SASL PLAIN LOGIN", b"IMPLEMENTATION Dovecot x", b""])
    assert caps == {
        "TOP": [],
        "UIDL": [],
        "SASL": ["PLAIN", "LOGIN"],
        "IMPLEMENTATION": ["Dovecot", "x"],
    }


# --- the wire: dot-stuffing and line endings -------------------------------------------------


def test_unstuff_removes_one_leading_dot_and_keeps_crlf() -> None:
    raw = [b"Subject: x\r\n", b"\r\n", b"..\r\n", b"..leading dot\r\n", b"...two\r\n", b"end\r\n"]
    assert unstuff(raw) == b"Subject: x\r\n\r\n.\r\n.leading dot\r\n..two\r\nend\r\n"


def test_unstuff_turns_bare_lf_into_crlf_and_keeps_other_bytes() -> None:
    raw = [b"a\n", b"b\r\r\n", b"\xff\x00 8-bit\r\n"]
    assert unstuff(raw) == b"a\r\nb\r\r\n\xff\x00 8-bit\r\n"


def test_unstuff_long_lines_are_untouched() -> None:
    line = b"x" * 100_000 + b"\r\n"
    assert unstuff([line]) == line


def test_unstuff_empty_message() -> None:
    assert unstuff([]) == b""


#: Lines as a server sends them: already dot-stuffed, CRLF mostly, now and then a bare LF.
wire_line = st.builds(
    lambda text, dots, end: b"." * dots + text + end,
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"").lstrip(b".")),
    st.integers(0, 3).map(lambda n: n if n != 1 else 2),  # a lone "." line would end the answer
    st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]),
)


@given(st.lists(wire_line, max_size=30), st.integers(1, 64))
def test_body_reads_exactly_one_answer_as_the_line_by_line_reading_did(
    lines: list[bytes], buffer: int
) -> None:
    """Buffer-sized reads give the bytes that unstuffing the lines one by one gives, and leave
    the next pipelined answer where it was, whatever the buffer size cuts through."""
    stream = b"".join(lines) + b".\r\n+OK next\r\n"
    file = io.BufferedReader(io.BytesIO(stream), buffer_size=buffer)  # type: ignore[arg-type]
    wire = Wire(SimpleNamespace(file=file))  # type: ignore[arg-type]
    assert wire.body() == unstuff(lines)
    assert file.read() == b"+OK next\r\n"


# --- headers and dates ----------------------------------------------------------------------

HEADER = (
    b"Return-Path: <a@example.org>\r\n"
    b"Received: from mx.example.org by mail.example.net with ESMTPS id 123;\r\n"
    b"\tTue, 14 Nov 2023 09:12:03 -0800 (PST)\r\n"
    b"Received: from client by mx.example.org; Tue, 14 Nov 2023 09:11:00 -0800\r\n"
    b"Date: Mon, 13 Nov 2023 10:00:00 +0000\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
)


def test_header_block_stops_at_the_blank_line() -> None:
    assert header_block(HEADER + b"body\r\n") == HEADER[:-2]
    assert header_block(b"A: 1\n\nbody\n") == b"A: 1\n"
    assert header_block(b"A: 1\r\n") == b"A: 1\r\n"


def test_header_fields_unfold_and_keep_repeats_in_order() -> None:
    fields = header_fields_ordered(HEADER)
    assert [name for name, _ in fields] == [
        b"return-path",
        b"received",
        b"received",
        b"date",
        b"subject",
    ]
    assert fields[1][1].endswith(b"; Tue, 14 Nov 2023 09:12:03 -0800 (PST)")


def test_received_date_is_the_topmost_one_after_its_last_semicolon() -> None:
    assert received_date(HEADER) == datetime(2023, 11, 14, 9, 12, 3, tzinfo=PST)


def test_received_date_skips_a_garbled_newest_date() -> None:
    header = (
        b"Received: by a; not a date at all\r\n"
        b"Received: by b (comment; with semicolon); Wed, 1 Feb 2023 01:02:03 +0100\r\n"
    )
    assert received_date(header) == datetime(
        2023, 2, 1, 1, 2, 3, tzinfo=timezone(timedelta(hours=1))
    )


def test_received_without_zone_is_read_as_utc() -> None:
    header = b"Received: by a; 14 Nov 2023 09:12:03 -0000\r\n"
    assert received_date(header) == datetime(2023, 11, 14, 9, 12, 3, tzinfo=UTC)


def test_message_date_falls_back_to_date_then_none() -> None:
    assert message_date(b"Date: Mon, 13 Nov 2023 10:00:00 +0000\r\nSubject: x\r\n\r\n") == (
        datetime(2023, 11, 13, 10, 0, tzinfo=UTC)
    )
    assert message_date(b"Received: by a (no date here)\r\nSubject: x\r\n\r\n") is None
    assert message_date(b"Date: yesterday\r\n\r\n") is None
    assert message_date(b"") is None


def test_message_date_ignores_body_lines() -> None:
    data = b"Subject: x\r\n\r\nReceived: by z; Tue, 14 Nov 2023 09:12:03 +0000\r\n"
    assert message_date(data) is None


def test_message_date_is_timezone_aware() -> None:
    date = message_date(HEADER)
    assert date is not None and date.utcoffset() is not None


# --- identity without UIDL ------------------------------------------------------------------


def test_header_digest_is_stable_and_ignores_mutable_fields_and_whitespace() -> None:
    base = b"Received: by a; Tue, 14 Nov 2023 09:12:03 +0000\r\nSubject: hi  there\r\n\r\n"
    touched = (
        b"Received: by a;\r\n Tue, 14 Nov 2023 09:12:03 +0000\r\nSubject: hi there\r\n"
        b"Status: RO\r\nX-UIDL: 77\r\nContent-Length: 12\r\n\r\n"
    )
    assert header_digest(base) == header_digest(touched)
    assert header_digest(base).startswith("hdr-")


def test_header_digest_differs_when_a_real_field_differs() -> None:
    a = b"Received: by a; Tue, 14 Nov 2023 09:12:03 +0000\r\nSubject: one\r\n\r\n"
    b = b"Received: by a; Tue, 14 Nov 2023 09:12:04 +0000\r\nSubject: one\r\n\r\n"
    assert header_digest(a) != header_digest(b)


# --- login ----------------------------------------------------------------------------------


def test_sasl_plain_initial_response() -> None:
    assert base64.b64decode(sasl_plain("alice@example.org", "pä:ss w")) == (
        b"\0alice@example.org\0p\xc3\xa4:ss w"
    )


def test_apop_digest_uses_the_greeting_timestamp() -> None:
    # The example of RFC 1939, section 7.
    greeting = b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>"
    assert apop_digest(greeting, "tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    assert apop_digest(b"+OK Dovecot ready.", "x") is None
    expected = hashlib.md5(b"<a@b>pw").hexdigest()
    assert apop_digest(b"+OK <a@b>", "pw") == expected


@pytest.mark.parametrize(
    ("text", "secret", "shown"),
    [
        ("-ERR [AUTH] Authentication failed.\r\n", "pw", "-ERR [AUTH] Authentication failed."),
        ("-ERR bad password hunter2 for you", "hunter2", "-ERR bad password *** for you"),
        ("-ERR multi\nline", "", "-ERR multi line"),
    ],
)
def test_scrub_never_shows_the_password_and_stays_one_line(
    text: str, secret: str, shown: str
) -> None:
    forget_all()  # other tests remembered theirs
    remember(secret)  # as credentials.py does when it reads it
    assert server_said(text) == shown


def test_a_retr_may_bring_twice_its_list_size_and_never_more_than_the_largest_message():
    from migrator.stores.base import LARGEST_MESSAGE
    from migrator.stores.pop3wire import retr_limit

    assert retr_limit(120) == 240 + 64 * 1024
    assert retr_limit(-5) == 64 * 1024
    assert retr_limit(10**12) == LARGEST_MESSAGE


def test_a_multiline_answer_past_its_limit_is_cut_off_unread():
    from migrator.stores.pop3wire import TooLong

    conn = SimpleNamespace(file=io.BufferedReader(io.BytesIO(b"y" * 500_000 + b"\r\n.\r\n")))
    with pytest.raises(TooLong):
        Wire(conn).body(limit=100_000)  # type: ignore[arg-type]
    assert conn.file.tell() <= 100_000 + 8192
