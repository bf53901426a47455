"""MboxStore: mboxrd both ways, bookkeeping headers, layouts, locking and torn-tail recovery."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from migrator.errors import ConfigError, FolderError, MessageError, StoreError
from migrator.model import INBOX, Folder, MessageRef, crlf_size, message_key
from migrator.stores import mbox as mbox_module
from migrator.stores import mboxformat
from migrator.stores.localfiles import header_block, to_lf
from migrator.stores.mbox import VALIDITY, MboxStore
from migrator.stores.mboxformat import (
    _sender,
    _split_header,
    decode_record,
    format_from_line,
    is_from_line,
    parse_from_date,
    quote,
    render_message,
    render_parts,
    unquote,
)
from tests.children import wait_for_child
from tests.unit.archive_helpers import (
    SIMPLE,
    any_bytes,
    copied_flags,
    crlf,
    dates,
    flag_sets,
    messages,
    mode,
    ref_for,
    same_instant,
    scratch_dir,
    spliced,
)

ARCHIVE = ("Archive", "2023")
WHEN = datetime(2023, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))


def store_at(path: Path, **kwargs: object) -> MboxStore:
    store = MboxStore(path, **kwargs)  # type: ignore[arg-type]
    store.connect()
    return store


def read_all(store: MboxStore, folder: tuple[str, ...]) -> list[tuple[MessageRef, Any]]:
    store.open_folder(folder)
    refs = list(store.list_messages(folder))
    return list(store.fetch(folder, refs))


def degenerate(message: bytes) -> bool:
    """The one shape that gains a newline: no empty line, no final newline, starts folded."""
    header, rest = _split_header(to_lf(message))
    return not rest and bool(header) and not header.endswith(b"\n") and header[:1] in b" \t"


# -- mboxrd quoting and From_ lines -------------------------------------------------------------


@given(any_bytes)
def test_unquote_undoes_quote(data: bytes) -> None:
    assert unquote(quote(data)) == data


@given(st.lists(st.sampled_from([b"From a", b">From b", b">>From c", b"x", b""]), max_size=12))
def test_quoted_text_has_no_from_lines(lines: list[bytes]) -> None:
    quoted = quote(b"\n".join(lines))
    assert not any(line.startswith(b"From ") for line in quoted.split(b"\n"))


def test_quote_examples() -> None:
    assert quote(b"From a\n>From b\nxFrom c\n From d") == b">From a\n>>From b\nxFrom c\n From d"


@given(dates())
def test_from_line_date_round_trips_with_its_zone(when: datetime) -> None:
    line = format_from_line(when)
    assert is_from_line(line)
    parsed = parse_from_date(line)
    assert parsed == when and parsed.utcoffset() == when.utcoffset()


def test_from_line_formats_like_asctime() -> None:
    assert format_from_line(WHEN) == b"From MAILER-DAEMON Sat May  6 07:08:09 2023 +0200\n"
    assert format_from_line(WHEN, "a@b").startswith(b"From a@b Sat")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"From - Thu Nov 29 22:33:52 2001\n", datetime(2001, 11, 29, 22, 33, 52)),
        (b"From a@b  Thu Nov  1 02:03:04 2001\n", datetime(2001, 11, 1, 2, 3, 4)),
        (b"From a@b Thu Nov 29 22:33:52 EEST 2001\n", datetime(2001, 11, 29, 22, 33, 52)),
        (b"From a@b Thu Nov 29 22:33 2001\n", datetime(2001, 11, 29, 22, 33)),
    ],
)
def test_zoneless_from_lines_are_local_time(line: bytes, expected: datetime) -> None:
    assert parse_from_date(line) == expected.astimezone()


@pytest.mark.parametrize("line", [b"From here on\n", b"From: a@b\n", b"Fromage\n", b"From \n"])
def test_body_lines_are_not_separators(line: bytes) -> None:
    assert not is_from_line(line)


# -- one record ---------------------------------------------------------------------------------


@settings(max_examples=300)
@given(messages, flag_sets, dates())
def test_record_round_trip(message: bytes, flags: frozenset[str], when: datetime) -> None:
    decoded = decode_record(render_message(message, flags, when))
    expected = to_lf(message) + (b"\n" if degenerate(message) else b"")
    assert decoded.content == expected
    assert decoded.flags == copied_flags(flags)
    assert decoded.date == when
    assert decoded.error is None


@given(any_bytes, flag_sets)
def test_record_round_trip_of_arbitrary_bytes(message: bytes, flags: frozenset[str]) -> None:
    decoded = decode_record(render_message(message, flags, WHEN))
    expected = to_lf(message) + (b"\n" if degenerate(message) else b"")
    assert decoded.content == expected
    assert decoded.flags == copied_flags(flags)


@settings(max_examples=300)
@given(st.one_of(messages, any_bytes), flag_sets, st.integers(min_value=1, max_value=40))
def test_record_in_pieces_is_the_record_whole(
    message: bytes, flags: frozenset[str], span: int
) -> None:
    """A large message is rendered a piece at a time; cutting it anywhere changes no byte."""
    whole = render_message(message, flags, WHEN)
    with patch.object(mboxformat, "RENDER_SPAN", span):
        pieces = list(render_parts(message, flags, WHEN))
    assert b"".join(pieces) == whole


def test_large_message_is_rendered_without_a_whole_copy() -> None:
    body = b"".join(b"line %d of a big attachment, From here on\r\n" % n for n in range(100_000))
    message = b"Subject: big\r\nFrom: a@example.org\r\n\r\n" + body
    pieces = list(render_parts(message, {"\\Seen"}, WHEN))
    assert len(message) > 4 * mboxformat.RENDER_SPAN
    assert max(map(len, pieces)) <= mboxformat.RENDER_SPAN + 200
    assert decode_record(b"".join(pieces)).content == to_lf(message)


def test_record_layout_is_what_mutt_and_dovecot_read() -> None:
    record = render_message(
        crlf("Subject: s", "Status: RO", "", "From me", "bye"),
        {"\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted", "\\Recent", "$Work"},
        WHEN,
    )
    assert record == (
        b"From MAILER-DAEMON Sat May  6 07:08:09 2023 +0200\n"
        b"Subject: s\n"
        b"X-Migrator-Kept-Status: RO\n"
        b"Status: RO\n"
        b"X-Status: AFT\n"
        b"X-Keywords: $Work\n"
        b"\n"
        b">From me\n"
        b"bye\n"
        b"\n"
    )


def test_unseen_message_gets_status_o_and_sender_from_return_path() -> None:
    record = render_message(SIMPLE, set(), WHEN)
    assert record.startswith(b"From alice@example.org Sat May  6")
    assert b"\nStatus: O\n" in record and b"X-Status" not in record


_PLAIN_RETURN_PATH = re.compile(
    rb"^return-path:[ \t]*<?([!-;=?-~]*@[!-;=?-~]*)>?[ \t]*\r?$", re.IGNORECASE | re.MULTILINE
)


@given(
    spliced(
        [
            b"Return-Path:",
            b"return-PATH:",
            b" ",
            b"\t",
            b"<",
            b">",
            b"a@b",
            b"@",
            b"x",
            b"\r",
            b"\n",
            b"\r\n",
            b"From: c@d",
            b"\xff",
        ],
        max_size=20,
    )
)
def test_sender_is_what_the_plain_line_anchored_pattern_finds(header: bytes) -> None:
    """_sender searches from a literal LF for speed; it must find what ^...$ finds."""
    match = _PLAIN_RETURN_PATH.search(header)
    assert _sender(header) == (match[1].decode("ascii") if match else "MAILER-DAEMON")


def test_message_without_internaldate_takes_received_then_date() -> None:
    received = crlf(
        "Received: by a; Tue, 02 Jan 2024 10:00:00 +0000",
        "Received: by b; Tue, 02 Jan 2024 11:00:00 +0000",
        "Date: Mon, 01 Jan 2024 00:00:00 +0000",
        "",
        "x",
    )
    # The topmost Received header is the newest, whatever date a lower one carries
    # (migrator.headers; tests/unit/test_headers.py pins the rule).
    assert decode_record(render_message(received, set(), None)).date == datetime(
        2024, 1, 2, 10, tzinfo=UTC
    )
    dated = crlf("Date: Mon, 01 Jan 2024 00:00:00 +0000", "", "x")
    assert decode_record(render_message(dated, set(), None)).date == datetime(
        2024, 1, 1, tzinfo=UTC
    )


# -- the store: round trips ---------------------------------------------------------------------


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(messages, flag_sets, dates()), min_size=1, max_size=6))
def test_append_then_read_round_trip(batch: list[tuple[bytes, frozenset[str], datetime]]) -> None:
    with scratch_dir() as tmp:
        store = store_at(Path(tmp) / "archive")
        store.ensure_folder(ARCHIVE)
        items = [(ref_for(m, f, d, str(i)), m) for i, (m, f, d) in enumerate(batch)]
        results = store.append(ARCHIVE, items[:2])
        results += store.append(ARCHIVE, items[2:])
        assert all(r.ok for r in results)
        got = read_all(store, ARCHIVE)
        assert len(got) == len(batch)
        for (ref, data), (message, flags, when) in zip(got, batch, strict=True):
            expected = to_lf(message) + (b"\n" if degenerate(message) else b"")
            assert data == expected
            assert ref.flags == copied_flags(flags)
            assert ref.date == when
            assert ref.size == crlf_size(expected)
            # What an IMAP source computes from BODY[HEADER] and RFC822.SIZE of the same message.
            assert ref.key == message_key(header_block(expected), crlf_size(expected))


def test_round_trip_keeps_from_lines_and_bookkeeping_named_fields(tmp_path: Path) -> None:
    message = crlf(
        "From: a@b",
        "Status: RO",
        "X-Keywords: original",
        "Content-Length: 3",
        "X-Migrator-Kept-Status: nested",
        "Subject: x",
        "",
        "From the top",
        ">From quoted",
        "end",
        end=False,
    )
    store = store_at(tmp_path / "a")
    store.append(INBOX, [(ref_for(message, {"\\Seen"}, WHEN), message)])
    [(ref, data)] = read_all(store, INBOX)
    assert data == to_lf(message)
    assert ref.flags == {"\\Seen"}
    assert ref.key == message_key(message, crlf_size(message))


def test_folder_tree_files_and_modes(tmp_path: Path) -> None:
    os.umask(0)
    try:
        store = store_at(tmp_path / "a")
        store.ensure_folder(INBOX)
        store.ensure_folder(ARCHIVE)
        store.append(ARCHIVE, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    finally:
        os.umask(0o022)
    root = tmp_path / "a"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "Archive",
        "Archive/2023.mbox",
        "INBOX.mbox",
    ]
    assert mode(root) == mode(root / "Archive") == 0o700
    assert mode(root / "INBOX.mbox") == mode(root / "Archive/2023.mbox") == 0o600
    assert store.list_folders() == [
        Folder(("Archive",), None, False),
        Folder(ARCHIVE, None, True),
        Folder(INBOX, None, True),
    ]


def test_folder_with_messages_and_children(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    for folder in (("Sent",), ("Sent", "old"), ("Entwürfe",)):
        store.ensure_folder(folder)
        store.append(folder, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    assert (tmp_path / "Sent.mbox").is_file() and (tmp_path / "Sent/old.mbox").is_file()
    assert (tmp_path / "Entwürfe.mbox").is_file()
    assert store.list_folders() == [
        Folder(("Entwürfe",), None, True),
        Folder(("Sent",), "\\Sent", True),
        Folder(("Sent", "old"), None, True),
    ]
    assert [d for _, d in read_all(store, ("Sent", "old"))] == [to_lf(SIMPLE)]


@pytest.mark.parametrize("level", [".hidden", "a.sbd", "", "a/b"])
def test_unstorable_folder_names(tmp_path: Path, level: str) -> None:
    with pytest.raises(FolderError):
        store_at(tmp_path).ensure_folder(("x", level))


def test_ids_survive_growth_flag_rewrites_and_removals(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    one, two = crlf("Subject: 1", "", "a"), crlf("Subject: 2", "", "b")
    store.append(INBOX, [(ref_for(one, date=WHEN), one), (ref_for(two, date=WHEN), two)])
    first = [r.id for r, _ in read_all(store, INBOX)]
    three = crlf("Subject: 3", "", "c")
    store.append(INBOX, [(ref_for(three, date=WHEN), three)])
    grown = [r.id for r, _ in read_all(store, INBOX)]
    assert grown[:2] == first and len(set(grown)) == 3
    # mutt marks the first message read: every offset after it shifts.
    path = tmp_path / "INBOX.mbox"
    path.write_bytes(path.read_bytes().replace(b"Status: O\n", b"Status: RO\n", 1))
    again = read_all(store, INBOX)
    assert [r.id for r, _ in again] == grown
    assert again[0][0].flags == {"\\Seen"}
    # Another program expunges the first message.
    data = path.read_bytes()
    path.write_bytes(data[data.index(b"\nFrom ", 1) + 1 :])
    assert [r.id for r, _ in read_all(store, INBOX)] == grown[1:]


def test_identical_messages_get_distinct_ids(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)] * 2)
    ids = [r.id for r, _ in read_all(store, INBOX)]
    assert ids[0].endswith(":0") and ids[1].endswith(":1") and ids[0][:-2] == ids[1][:-2]
    assert store.open_folder(INBOX).validity == VALIDITY
    assert [r.id for r in store.list_messages(INBOX, skip={ids[0]})] == [ids[1]]


def test_index_lists_identity_keys(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    assert list(store.index(INBOX)) == []
    ref = ref_for(SIMPLE, date=WHEN)
    store.append(INBOX, [(ref, SIMPLE)])
    assert list(store.index(INBOX)) == [ref.key]


def test_fetch_finds_a_message_that_moved_and_reports_one_that_left(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    one, two = crlf("Subject: 1", "", "a"), crlf("Subject: 2", "", "b")
    store.append(INBOX, [(ref_for(one, date=WHEN), one), (ref_for(two, date=WHEN), two)])
    store.open_folder(INBOX)
    refs = list(store.list_messages(INBOX))
    path = tmp_path / "INBOX.mbox"
    data = path.read_bytes()
    second = data.index(b"\nFrom ", 1) + 1
    path.write_bytes(data[second:] + data[:second])  # reordered: offsets are wrong now
    assert [d for _, d in store.fetch(INBOX, refs)] == [to_lf(one), to_lf(two)]
    path.write_bytes(data[second:])
    got = list(store.fetch(INBOX, refs))
    assert isinstance(got[0][1], MessageError) and got[1][1] == to_lf(two)


# -- single file ----------------------------------------------------------------------------------


def test_single_file_is_one_folder_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "all.mbox"
    store = store_at(path)
    assert store.list_folders() == [Folder(INBOX)]
    store.ensure_folder(ARCHIVE)
    store.append(ARCHIVE, [(ref_for(SIMPLE, {"\\Seen"}, WHEN), SIMPLE)])
    other = crlf("Subject: other", "", "x")
    store.append(("Sent",), [(ref_for(other, date=WHEN), other)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.mbox"]
    assert mode(path) == 0o600
    source = store_at(path, create=False)
    assert source.list_folders() == [Folder(INBOX)]
    assert [d for _, d in read_all(source, INBOX)] == [to_lf(SIMPLE), to_lf(other)]


def test_existing_file_without_suffix_is_a_single_mbox(tmp_path: Path) -> None:
    path = tmp_path / "mbox"
    path.write_bytes(b"From a@b Thu Nov 29 22:33:52 2001\nSubject: x\n\nbody\n\n")
    store = store_at(path)
    assert store.list_folders() == [Folder(INBOX)]
    assert [d for _, d in read_all(store, INBOX)] == [b"Subject: x\n\nbody\n"]


def test_missing_source_and_unreadable_root_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        store_at(tmp_path / "nowhere", create=False)
    monkeypatch.setattr(mbox_module.os, "access", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="permission denied"):
        store_at(tmp_path)


def test_unreadable_folder_file_is_a_folder_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    real = os.access
    monkeypatch.setattr(
        mbox_module.os, "access", lambda p, m, **k: not str(p).endswith(".mbox") and real(p, m)
    )
    with pytest.raises(FolderError, match="permission denied"):
        store.open_folder(INBOX)


# -- foreign files: Thunderbird, Dovecot, damage -------------------------------------------------


def test_thunderbird_profile_as_source(tmp_path: Path) -> None:
    tb = tmp_path / "Local Folders"
    (tb / "Archive.sbd").mkdir(parents=True)
    (tb / "Inbox").write_bytes(
        b"From - Thu Nov 29 22:33:52 2001\n"
        b"X-Mozilla-Status: 0005\nX-Mozilla-Status2: 00000000\nX-Mozilla-Keys: $label1\n"
        b"Subject: read and flagged\n\nbody\n\n"
        b"From - Thu Nov 29 22:34:00 2001\n"
        b"X-Mozilla-Status: 0009\nSubject: expunged, awaiting compaction\n\nbody\n\n"
        b"From - Thu Nov 29 22:35:00 2001\n"
        b"X-Mozilla-Status: 1002\nSubject: replied and forwarded\n\nbody\n\n"
    )
    for name in ("Inbox.msf", "Trash.msf", "popstate.dat", "msgFilterRules.dat", "Archive.msf"):
        (tb / name).write_bytes(b"// not mail\n")
    (tb / "Trash").write_bytes(b"")
    (tb / "Archive").write_bytes(b"")
    (tb / "Archive.sbd" / "2023").write_bytes(
        b"From - Mon Jan  2 10:00:00 2023\nSubject: old\n\nbody\n\n"
    )
    (tb / "Archive.sbd" / "2023.msf").write_bytes(b"index")
    (tb / "notes.txt").write_bytes(b"just a file\n")
    store = store_at(tb, create=False)
    assert store.list_folders() == [
        Folder(("Archive",), "\\Archive", True),
        Folder(ARCHIVE, None, True),
        Folder(INBOX, None, True),
        Folder(("Trash",), "\\Trash", True),
    ]
    inbox = read_all(store, INBOX)
    assert [ref.flags for ref, _ in inbox] == [
        {"\\Seen", "\\Flagged", "$label1"},
        {"\\Answered", "$Forwarded"},
    ]
    assert inbox[0][1].startswith(b"X-Mozilla-Status: 0005\n")
    assert [d for _, d in read_all(store, ARCHIVE)] == [b"Subject: old\n\nbody\n"]
    assert read_all(store, ("Trash",)) == []
    assert store.open_folder(INBOX).count == 2


#: What Dovecot 2.3 wrote for an APPEND of a message with From lines (mboxcl2: no quoting).
DOVECOT_WRITTEN = (
    b"From alice@vm  Thu Nov 29 19:33:52 2001\n"
    b"Subject: t\n"
    b"Message-ID: <a@b>\n"
    b"X-IMAPbase: 1795792475 0000000001 kw1 $Label2\n"
    b"X-UID: 1\n"
    b"Status: RO\n"
    b"X-Status: F\n"
    b"X-Keywords: kw1 $Label2" + b" " * 50 + b"\n"
    b"Content-Length: 35\n"
    b"\n"
    b"From here\n"
    b">From there\n"
    b">>From x\n"
    b"end\n"
    b"\n"
    b"From alice@vm  Thu Nov 29 19:34:00 2001\n"
    b"Subject: second\n"
    b"X-UID: 2\n"
    b"Status: O\n"
    b"Content-Length: 5\n"
    b"\n"
    b"body\n"
    b"\n"
)


def test_dovecot_written_mbox_is_read_by_content_length(tmp_path: Path) -> None:
    (tmp_path / "INBOX").write_bytes(DOVECOT_WRITTEN)
    store = store_at(tmp_path, create=False)
    got = read_all(store, INBOX)
    assert [d for _, d in got] == [
        b"Subject: t\nMessage-ID: <a@b>\n\nFrom here\n>From there\n>>From x\nend\n",
        b"Subject: second\n\nbody\n",
    ]
    assert got[0][0].flags == {"\\Seen", "\\Flagged", "kw1", "$Label2"}
    assert same_instant(got[0][0].date, datetime(2001, 11, 29, 19, 33, 52).astimezone())


def test_c_client_pseudo_message_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "INBOX").write_bytes(
        b"From MAILER-DAEMON Thu Nov 29 19:33:52 2001\n"
        b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
        b"X-IMAP: 1234 0000000002\n\nThis text is part of the internal format\n\n"
        b"From a@b Thu Nov 29 19:33:52 2001\nSubject: real\n\nx\n\n"
    )
    assert [d for _, d in read_all(store_at(tmp_path), INBOX)] == [b"Subject: real\n\nx\n"]


def test_truncated_last_message_is_a_message_failure(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    one = crlf("Subject: 1", "", "a")
    store.append(INBOX, [(ref_for(one, date=WHEN), one), (ref_for(SIMPLE, date=WHEN), SIMPLE)])
    path = tmp_path / "INBOX.mbox"
    path.write_bytes(path.read_bytes()[:-30])
    got = read_all(store, INBOX)
    assert got[0][1] == to_lf(one)
    assert isinstance(got[1][1], MessageError) and "cut off" in str(got[1][1])
    assert list(store.index(INBOX)) == [ref_for(one).key]


@pytest.mark.parametrize(
    "content", [b"Subject: no From_ line\n\nbody\n", b"\x00\x01binary garbage", b"  \nFromage\n"]
)
def test_file_without_from_line_first_is_a_folder_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "INBOX.mbox").write_bytes(content)
    with pytest.raises(FolderError, match="not an mbox file"):
        store_at(tmp_path).open_folder(INBOX)


def test_empty_and_blank_led_files(tmp_path: Path) -> None:
    (tmp_path / "INBOX.mbox").write_bytes(b"")
    (tmp_path / "Other.mbox").write_bytes(b"\n\nFrom a@b Thu Nov 29 19:33:52 2001\n\nx\n\n")
    store = store_at(tmp_path)
    assert store.open_folder(INBOX).count == 0
    assert [d for _, d in read_all(store, ("Other",))] == [b"\nx\n"]


def test_missing_folder_is_a_folder_error(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="does not exist"):
        store_at(tmp_path).open_folder(("Nope",))


def test_appending_after_a_file_without_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "INBOX.mbox"
    path.write_bytes(b"From a@b Thu Nov 29 19:33:52 2001\nSubject: x\n\nno newline")
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    assert [d for _, d in read_all(store, INBOX)] == [b"Subject: x\n\nno newline", to_lf(SIMPLE)]


# -- Dovecot keyword list -------------------------------------------------------------------------


def test_first_message_lists_keywords_for_dovecot_and_later_ones_are_added_in_place(
    tmp_path: Path,
) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, {"$a"}, WHEN), SIMPLE)])
    path = tmp_path / "INBOX.mbox"
    before = path.read_bytes()
    assert b"\nX-IMAPbase: " in before and b" 0000000000 $a " in before
    other = crlf("Subject: 2", "", "x")
    store.append(INBOX, [(ref_for(other, {"$b", "$a"}, WHEN), other)])
    after = path.read_bytes()
    assert b" 0000000000 $a $b " in after
    assert len(after[: len(before)]) == len(before)
    assert after.index(b"\nStatus") == before.index(b"\nStatus")  # nothing moved
    assert [r.flags for r, _ in read_all(store, INBOX)] == [{"$a"}, {"$a", "$b"}]
    assert [d for _, d in read_all(store, INBOX)] == [to_lf(SIMPLE), to_lf(other)]


# -- crash safety ---------------------------------------------------------------------------------


def _killed_mid_append(store_path: Path, items: list[tuple[MessageRef, bytes]]) -> None:
    """Fork a writer that dies (SIGKILL-like, no cleanup) half-way through writing its batch."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            real = mbox_module.write_parts

            def dying_write(fd: int, parts: list[bytes]) -> None:
                data = b"".join(parts)
                real(fd, [data[: len(data) // 2]])
                os.kill(os.getpid(), signal.SIGKILL)

            mbox_module.write_parts = dying_write  # type: ignore[assignment]
            store_at(store_path).append(INBOX, items)
        finally:
            os._exit(3)
    assert os.WIFSIGNALED(wait_for_child(pid))


def test_killed_append_is_cut_off_and_redone(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    one = crlf("Message-ID: <1@x>", "", "a")
    store.append(INBOX, [(ref_for(one, date=WHEN), one)])
    point = store.resume_point(INBOX)
    committed = (tmp_path / "INBOX.mbox").read_bytes()
    assert point is not None and point.startswith(f"{len(committed)}:")
    batch = [(ref_for(m, date=WHEN), m) for m in (SIMPLE, crlf("Message-ID: <3@x>", "", "c"))]
    _killed_mid_append(tmp_path, batch)
    torn = (tmp_path / "INBOX.mbox").read_bytes()
    assert len(torn) > len(committed) and torn.startswith(committed)
    assert (tmp_path / ".INBOX.mbox.migrator-append").exists()
    assert (tmp_path / "INBOX.mbox.lock").exists()  # the dead writer's dotlock, stale now
    rerun = store_at(tmp_path)
    rerun.recover(INBOX, point)
    assert (tmp_path / "INBOX.mbox").read_bytes() == committed
    assert not (tmp_path / ".INBOX.mbox.migrator-append").exists()
    rerun.append(INBOX, batch)
    got = read_all(rerun, INBOX)
    assert [d for _, d in got] == [to_lf(one), to_lf(SIMPLE), b"Message-ID: <3@x>\n\nc\n"]


def test_batch_written_whole_but_not_finished_is_not_counted_then_cut(tmp_path: Path) -> None:
    """Killed after the last byte, before the fsync: index() must not report those messages as
    present (the engine reconciles before it recovers), and recover() then removes them."""
    store = store_at(tmp_path)
    one = crlf("Message-ID: <1@x>", "", "a")
    store.append(INBOX, [(ref_for(one, date=WHEN), one)])
    point = store.resume_point(INBOX)
    committed = (tmp_path / "INBOX.mbox").read_bytes()
    batch = [(ref_for(SIMPLE, date=WHEN), SIMPLE)]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            calls = 0
            real = os.fsync

            def dying_fsync(fd: int) -> None:
                nonlocal calls
                calls += 1
                if calls == 3:  # sidecar, its directory, then the batch itself
                    os.kill(os.getpid(), signal.SIGKILL)
                real(fd)

            os.fsync = dying_fsync  # type: ignore[assignment]
            store_at(tmp_path).append(INBOX, batch)
        finally:
            os._exit(3)
    wait_for_child(pid)
    assert (tmp_path / "INBOX.mbox").read_bytes().count(b"\nFrom ") == 1  # whole batch is there
    rerun = store_at(tmp_path)
    assert list(rerun.index(INBOX)) == [ref_for(one).key]
    rerun.recover(INBOX, point)
    assert (tmp_path / "INBOX.mbox").read_bytes() == committed
    rerun.append(INBOX, batch)
    assert [d for _, d in read_all(rerun, INBOX)] == [to_lf(one), to_lf(SIMPLE)]


def test_next_append_recovers_even_without_recover_call(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    committed = (tmp_path / "INBOX.mbox").read_bytes()
    _killed_mid_append(tmp_path, [(ref_for(SIMPLE, date=WHEN), SIMPLE)] * 3)
    other = crlf("Subject: next", "", "x")
    store_at(tmp_path).append(INBOX, [(ref_for(other, date=WHEN), other)])
    data = (tmp_path / "INBOX.mbox").read_bytes()
    assert data.startswith(committed) and data.count(b"\nFrom ") == 1


def test_recover_keeps_what_others_appended_and_what_it_cannot_trust(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    point = store.resume_point(INBOX)
    path = tmp_path / "INBOX.mbox"
    with open(path, "ab") as handle:  # procmail delivers a message between our runs
        handle.write(b"From x@y Thu Nov 29 19:33:52 2001\nSubject: delivered\n\nhi\n\n")
    after = path.read_bytes()
    store_at(tmp_path).recover(INBOX, point)
    assert path.read_bytes() == after
    # A sidecar whose file changed in front since (rewritten by a mail client): keep every byte.
    (tmp_path / ".INBOX.mbox.migrator-append").write_text(
        f'{{"offset": 10, "inode": {path.stat().st_ino}, "tail": "0000"}}'
    )
    store_at(tmp_path).recover(INBOX, point)
    assert path.read_bytes() == after
    assert not (tmp_path / ".INBOX.mbox.migrator-append").exists()


def test_recover_never_cuts_below_the_journal_point(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    first = store.resume_point(INBOX)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    second = store.resume_point(INBOX)
    path = tmp_path / "INBOX.mbox"
    data = path.read_bytes()
    inode = path.stat().st_ino
    # A stale sidecar pointing before a committed batch must not cost that batch.
    import hashlib

    start = int(first.split(":")[0])  # type: ignore[union-attr]
    tail = hashlib.blake2b(data[max(0, start - 64) : start], digest_size=8).hexdigest()
    (tmp_path / ".INBOX.mbox.migrator-append").write_text(
        f'{{"offset": {start}, "inode": {inode}, "tail": "{tail}"}}'
    )
    store_at(tmp_path).recover(INBOX, second)
    assert path.read_bytes() == data


def test_failed_write_leaves_no_partial_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_at(tmp_path)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    committed = (tmp_path / "INBOX.mbox").read_bytes()
    real = mbox_module.write_parts

    def full_disk(fd: int, parts: list[bytes]) -> None:
        real(fd, [b"".join(parts)[:10]])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mbox_module, "write_parts", full_disk)
    with pytest.raises(StoreError, match="No space left"):
        store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)] * 3)
    assert (tmp_path / "INBOX.mbox").read_bytes() == committed
    assert not list(tmp_path.glob(".*migrator-append")) and not list(tmp_path.glob("*.lock"))


# -- locking --------------------------------------------------------------------------------------


def test_live_dotlock_makes_the_writer_wait_then_give_up(tmp_path: Path) -> None:
    store = store_at(tmp_path, lock_timeout=0.3)
    store.ensure_folder(INBOX)
    (tmp_path / "INBOX.mbox.lock").write_text(f"{os.getpid()}\n")
    started = time.monotonic()
    with pytest.raises(StoreError, match="locked") as raised:
        store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    assert raised.value.transient and time.monotonic() - started >= 0.3
    assert (tmp_path / "INBOX.mbox").read_bytes() == b""


def test_fcntl_lock_held_by_another_process(tmp_path: Path) -> None:
    store = store_at(tmp_path, lock_timeout=0.3)
    store.ensure_folder(INBOX)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child holds the lock like mutt would
        fd = os.open(tmp_path / "INBOX.mbox", os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        os.write(ready_w, b"x")
        time.sleep(5)
        os._exit(0)
    try:
        os.read(ready_r, 1)
        with pytest.raises(StoreError, match="locked"):
            store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
        assert not (tmp_path / "INBOX.mbox.lock").exists()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        with contextlib.suppress(OSError):
            os.close(ready_r)
            os.close(ready_w)
    store.append(INBOX, [(ref_for(SIMPLE, date=WHEN), SIMPLE)])
    assert len(read_all(store, INBOX)) == 1
