"""Message rules: each changes only what a target refuses, says what it did, and leaves every
other message byte-exact; the engine counts the changes and still recognises changed messages."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.checkpoint import Journal
from migrator.engine import CopyOptions, Engine
from migrator.rules import (
    BARE_LF,
    FINAL_CRLF,
    FOLDED,
    NUL,
    MessageRules,
    fold_long_lines,
    loose_key,
)
from tests.unit.memstore import MemoryStore

ALL = MessageRules(bare_lf=True, final_crlf=True, max_line_length=998, nul=True)


def test_rules_off_change_nothing():
    data = b"Subject: x\r\n\r\nbare\nlf\0 and " + b"y" * 5000
    assert MessageRules().apply(data) == (data, ())
    assert not MessageRules().active and ALL.active


def test_a_clean_message_is_untouched_and_the_same_object():
    data = b"Subject: x\r\n\r\nhello\r\n"
    out, changes = ALL.apply(data)
    assert out is data and changes == ()


def test_bare_lfs_among_crlf_become_crlf():
    out, changes = ALL.apply(b"Subject: x\r\n\r\none\ntwo\r\nthree\n")
    assert out == b"Subject: x\r\n\r\none\r\ntwo\r\nthree\r\n" and changes == (BARE_LF,)


def test_a_message_written_with_lf_alone_is_no_change():
    # mbox and Maildir keep LF: that is line-ending translation, which the store does anyway
    data = b"Subject: x\n\nbody\n"
    assert ALL.apply(data) == (data, ())


def test_a_final_crlf_is_added():
    assert ALL.apply(b"Subject: x\r\n\r\nno end") == (
        b"Subject: x\r\n\r\nno end\r\n",
        (FINAL_CRLF,),
    )
    assert ALL.apply(b"Subject: x\n\nno end")[0].endswith(b"no end\n")


def test_nul_bytes_are_removed():
    assert ALL.apply(b"Subject: x\r\n\r\na\0b\r\n") == (b"Subject: x\r\n\r\nab\r\n", (NUL,))


def test_long_body_lines_fold_after_a_space_or_at_the_limit():
    words = b" ".join(b"word%d" % i for i in range(3000))
    data = b"Subject: x\r\n\r\n" + words + b"\r\n" + b"z" * 2500 + b"\r\n"
    out, changes = ALL.apply(data)
    assert changes == (FOLDED,)
    lines = out.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    body = out.split(b"\r\n\r\n", 1)[1]
    # removing the inserted breaks gives the text back
    assert body.replace(b"\r\n", b"") == (words + b"z" * 2500)
    assert b"\r\n".join(lines[2:]).startswith(b"word0 word1")
    first_z = next(i for i, line in enumerate(lines) if line.startswith(b"z"))
    assert all(line.endswith(b" ") for line in lines[2 : first_z - 1])  # soft breaks
    assert [len(line) for line in lines[first_z:-1]] == [998, 998, 504]  # no space: cut


def test_long_header_lines_are_folded_as_rfc_5322_folds():
    to = b", ".join(b"person%d@example.org" % i for i in range(200))
    data = b"To: " + to + b"\r\nSubject: x\r\n\r\nbody\r\n"
    out, changes = ALL.apply(data)
    assert changes == (FOLDED,)
    header = out.split(b"\r\n\r\n", 1)[0]
    lines = header.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:-1])  # continuations
    unfolded = re.sub(rb"\r\n(?=[ \t])", b"", header)
    assert unfolded == b"To: " + to + b"\r\nSubject: x"


def test_a_20000_character_line_with_bare_lfs_is_counted_once_with_each_rule():
    data = b"Subject: big\r\n\r\nstart\n" + b"a" * 20_000 + b"\r\nend"
    out, changes = MessageRules(bare_lf=True, final_crlf=True, max_line_length=9900).apply(data)
    assert set(changes) == {BARE_LF, FOLDED, FINAL_CRLF}
    assert max(len(line) for line in out.split(b"\r\n")) <= 9900
    assert b"\n" not in out.replace(b"\r\n", b"")


def test_an_unreasonable_limit_is_refused():
    with pytest.raises(ValueError):
        MessageRules(max_line_length=20)


@settings(max_examples=200)
@given(
    st.lists(
        st.binary(max_size=400).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")), max_size=8
    ),
    st.integers(min_value=78, max_value=300),
)
def test_folding_keeps_every_byte_and_bounds_every_line(lines, limit):
    data = b"Subject: x\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    out = fold_long_lines(data, limit)
    assert all(len(line) <= limit for line in out.split(b"\r\n"))
    assert out.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"") == b"".join(lines)
    if all(len(line) <= limit for line in data.split(b"\r\n")):
        assert out is data


def test_loose_keys_drop_the_size():
    assert loose_key("mid:<a:b@x>:1234") == "mid:<a:b@x>"
    assert loose_key("hdr:abcd:99") == "hdr:abcd"


# -- in the engine --------------------------------------------------------------------------------


def sample() -> tuple[MemoryStore, bytes, bytes]:
    src = MemoryStore(label="src")
    ruled = (
        b"Message-ID: <long@example.org>\r\nSubject: long\r\n\r\nhead\nx" + b"y" * 20_000 + b"\r\n"
    )
    clean = b"Message-ID: <clean@example.org>\r\nSubject: clean\r\n\r\nfine\r\n"
    src.add(("INBOX",), ruled)
    src.add(("INBOX",), clean)
    return src, ruled, clean


def test_the_engine_counts_changed_messages_and_leaves_others_byte_exact(tmp_path):
    src, ruled, clean = sample()
    dst = MemoryStore(label="dst")
    rules = MessageRules(bare_lf=True, max_line_length=9900)
    journal = Journal.open(tmp_path / "j.sqlite")
    summary = Engine(lambda: src, lambda: dst, journal, CopyOptions(rules=rules)).run()
    journal.close()
    assert summary.ok and summary.total("copied") == 2
    assert summary.total("changed") == 1
    assert summary.changes() == {BARE_LF: 1, FOLDED: 1}
    assert any("message rules on" in n for n in summary.notices)
    bodies = dst.bodies(("INBOX",))
    assert clean in bodies and ruled not in bodies
    (changed,) = [b for b in bodies if b != clean]
    assert max(len(line) for line in changed.split(b"\r\n")) <= 9900
    # with the journal lost, the changed message is still recognised in the target
    journal = Journal.open(tmp_path / "lost.sqlite")
    again = Engine(lambda: src, lambda: dst, journal, CopyOptions(rules=rules)).run()
    journal.close()
    assert again.total("copied") == 0 and again.total("skipped") == 2


def test_without_rules_the_engine_copies_byte_exact():
    src, ruled, clean = sample()
    dst = MemoryStore(label="dst")
    summary = Engine(lambda: src, lambda: dst, Journal.in_memory(), CopyOptions()).run()
    assert summary.total("changed") == 0 and not summary.changes()
    assert sorted(dst.bodies(("INBOX",))) == sorted([ruled, clean])
