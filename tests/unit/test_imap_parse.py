import imaplib
import io
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response

from migrator.model import MessageRef
from migrator.stores.imap import (
    batches_by_size,
    expand_uid_set,
    parse_appenduid,
    parse_bodies,
    parse_meta,
    read_fetch_answers,
    uid_set,
)


def test_appenduid_single_and_ranges():
    assert parse_appenduid(b"[APPENDUID 38505 3955] APPEND completed") == (38505, [3955])
    assert parse_appenduid(b"[APPENDUID 1700000000 5:7,9] Append completed.") == (
        1700000000,
        [5, 6, 7, 9],
    )
    assert parse_appenduid(b"APPEND completed") is None


def test_uid_set_is_compact():
    assert uid_set([5, 1, 2, 3, 9, 10, 12]) == "1:3,5,9:10,12"


@given(st.sets(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=200))
def test_uid_set_round_trips(uids):
    assert expand_uid_set(uid_set(uids)) == sorted(uids)


@given(st.lists(st.integers(min_value=0, max_value=5000), max_size=60))
def test_batches_bounded_by_bytes_and_count_keep_order(sizes):
    refs = [MessageRef(str(i), s) for i, s in enumerate(sizes)]
    batches = list(batches_by_size(refs, 10_000, 7))
    assert [r for b in batches for r in b] == refs
    for batch in batches:
        assert len(batch) <= 7
        assert len(batch) == 1 or sum(r.size for r in batch) <= 10_000


MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
flag = st.sampled_from([b"\\Seen", b"\\Answered", b"\\Flagged", b"\\Draft", b"\\Deleted"]) | (
    st.from_regex(rb"\A[A-Za-z$][A-Za-z0-9$_.-]{0,12}\Z", fullmatch=True)
)
internaldate = st.builds(
    lambda d, m, y, h, mi, s, sign, zh, zm: (
        b'"%2d-%s-%04d %02d:%02d:%02d %s%02d%02d"'
        % (d, MONTHS[m].encode(), y, h, mi, s, sign, zh, zm)
    ),
    st.integers(1, 28),
    st.integers(0, 11),
    st.integers(1970, 2100),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.sampled_from([b"+", b"-"]),
    st.integers(0, 14),
    st.sampled_from([0, 30, 45]),
)


@st.composite
def meta_line(draw: st.DrawFn, seq: int) -> bytes:
    items = [
        b"UID %d" % draw(st.integers(1, 2**32 - 1)),
        b"RFC822.SIZE %d" % draw(st.integers(0, 2**40)),
        b"FLAGS (%s)" % b" ".join(draw(st.lists(flag, max_size=6, unique=True))),
        b"INTERNALDATE " + draw(internaldate),
    ]
    # Half in the order asked for (the shape most servers answer, parsed by one pattern).
    ordered = items if draw(st.booleans()) else draw(st.permutations(items))
    return b"%d (%s)" % (seq, b" ".join(ordered))


@given(
    st.lists(st.integers(1, 100_000), max_size=8, unique=True).flatmap(
        lambda seqs: st.tuples(*(meta_line(n) for n in seqs))
    )
)
def test_meta_parse_is_imapclients(lines: tuple[bytes, ...]) -> None:
    """The fast listing parser gives what imapclient's parser gives, dates with their zones."""
    expected = parse_fetch_response(list(lines), False, True)
    got = parse_meta(list(lines))
    assert got is not None
    assert got == expected
    for uid, item in got.items():
        assert item[b"INTERNALDATE"].utcoffset() == expected[uid][b"INTERNALDATE"].utcoffset()


def test_meta_parse_leaves_other_shapes_to_imapclient() -> None:
    date = b'INTERNALDATE "01-Jan-2020 00:00:00 +0000"'
    ok = b"1 (UID 5 RFC822.SIZE 10 FLAGS () " + date + b")"
    assert parse_meta([ok]) == {
        5: {
            b"SEQ": 1,
            b"RFC822.SIZE": 10,
            b"FLAGS": (),
            b"INTERNALDATE": parse_fetch_response([ok], False, True)[5][b"INTERNALDATE"],
        }
    }
    for other in (
        [(b"1 (UID 5 BODY[] {3}", b"abc"), b")"],  # a literal
        [b"1 (UID 5 X-GM-THRID 12 " + date + b")"],  # an item it does not know
        [b"1 (RFC822.SIZE 10 " + date + b")"],  # no UID
        [b'1 (UID 5 INTERNALDATE "31-Feb-2020 00:00:00 +0000")'],  # no such day
        [b'1 (UID 5 INTERNALDATE "01-Foo-2020 00:00:00 +0000")'],
        [b"1 (UID 5 FLAGS (\\Seen)"],  # unbalanced
    ):
        assert parse_meta(other) is None


def test_meta_parse_reads_the_modseq_condstore_sends_with_flags() -> None:
    line = b"1 (UID 5 FLAGS (\\Seen $x) MODSEQ (12345))"
    assert parse_meta([line]) == {5: {b"SEQ": 1, b"FLAGS": (b"\\Seen", b"$x"), b"MODSEQ": (12345,)}}
    assert parse_meta([line]) == {
        uid: {k: v for k, v in item.items()}
        for uid, item in parse_fetch_response([line], False, True).items()
    }


@given(
    st.lists(
        st.tuples(st.integers(1, 2**32 - 1), st.binary(max_size=200)),
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_body_parse_is_imapclients(messages: list[tuple[int, bytes]]) -> None:
    data: list[object] = []
    for seq, (uid, body) in enumerate(messages, 1):
        data += [(b"%d (UID %d BODY[] {%d}" % (seq, uid, len(body)), body), b")"]
    assert parse_bodies(data) == parse_fetch_response(data, False, True)


def test_body_parse_leaves_other_shapes_to_imapclient() -> None:
    body = (b"1 (UID 5 BODY[] {3}", b"abc")
    assert parse_bodies([body, b")"]) == {5: {b"SEQ": 1, b"BODY[]": b"abc"}}
    for other in (
        [body, b")", b"2 (FLAGS (\\Seen))"],  # an unsolicited flag update
        [(b"1 (BODY[] {3}", b"abc"), b" UID 5)"],  # UID after the body
        [body],  # no closing parenthesis
        [body, b" FLAGS (\\Seen))"],
    ):
        assert parse_bodies(other) is None


# -- reading a FETCH command's answers ----------------------------------------------------------


class ScriptedImap(imaplib.IMAP4):
    """imaplib reading a server's bytes from memory: the greeting, then ``answers``."""

    def __init__(self, answers: bytes, buffer_size: int) -> None:
        self._script = b"* OK [CAPABILITY IMAP4rev1] ready\r\n" + answers
        self._buffer_size = buffer_size
        super().__init__()
        self.tagpre, self.tagnum = b"T", 1  # tags the script can name: T1, T2, ...
        self.tagre = re.compile(rb"(?P<tag>T\d+) (?P<type>[A-Z]+) (?P<data>.*)", re.ASCII)
        self.state = "SELECTED"

    def open(self, host: str = "", port: int = 0, timeout: float | None = None) -> None:
        self.file = io.BufferedReader(io.BytesIO(self._script), self._buffer_size)  # type: ignore[arg-type]

    def send(self, data: bytes) -> None:
        pass

    def _get_capabilities(self) -> None:
        self.capabilities = ("IMAP4REV1",)


def untagged_fetch(draw: st.DrawFn, seq: int) -> bytes:
    """One untagged response of the shapes a FETCH can bring, literals included."""
    kind = draw(st.sampled_from(["body", "two", "flags", "exists", "alert", "odd"]))
    body = draw(st.binary(max_size=300) | st.sampled_from([b"", b"x)\r\n", b"{3}\r\nabc"]))
    if kind == "body":
        return b"* %d FETCH (UID %d BODY[] {%d}\r\n%b)\r\n" % (seq, seq + 7, len(body), body)
    if kind == "two":
        return b"* %d FETCH (UID %d BODY[HEADER] {%d}\r\n%b BODY[TEXT] {2}\r\nhi)\r\n" % (
            seq,
            seq,
            len(body),
            body,
        )
    if kind == "flags":
        return b"* %d FETCH (FLAGS (\\Seen $Work) UID %d)\r\n" % (seq, seq)
    if kind == "exists":
        return b"* %d EXISTS\r\n" % seq
    if kind == "alert":
        return b"* OK [ALERT] mind the {gap}\r\n"
    return b"* %d FETCH\r\n" % seq  # no data at all: imaplib's to read


@st.composite
def fetch_answers(draw: st.DrawFn) -> bytes:
    responses = [untagged_fetch(draw, n) for n in range(1, draw(st.integers(0, 8)) + 1)]
    done = draw(st.sampled_from([b"T1 OK done\r\n", b"T1 NO [SERVERBUG] nope\r\n"]))
    return b"".join(responses) + done


def fetch_plainly(imap: imaplib.IMAP4, fast: bool) -> tuple[str, list, dict]:
    tag = imap._command("UID", "FETCH", "1:*", "(BODY.PEEK[])")
    if fast:
        read_fetch_answers(imap, tag)
    typ, data = imap._command_complete("FETCH", tag)
    typ, data = imap._untagged_response(typ, data, "FETCH")
    return typ, data, dict(imap.untagged_responses)


@given(fetch_answers(), st.sampled_from([16, 40, 100, 8192]))
def test_fetch_answers_are_stored_as_imaplib_stores_them(answers: bytes, buffer: int) -> None:
    """Whatever mix of responses arrives, and wherever the read buffer cuts them, the caller
    gets what imaplib's own loop gives: same items, same order, same leftovers."""
    assert fetch_plainly(ScriptedImap(answers, buffer), fast=True) == fetch_plainly(
        ScriptedImap(answers, 8192), fast=False
    )


def test_fetch_answers_cut_short_are_a_lost_connection() -> None:
    imap = ScriptedImap(b"* 1 FETCH (UID 1 BODY[] {10}\r\nonly5", 8192)
    tag = imap._command("UID", "FETCH", "1", "(BODY.PEEK[])")
    with pytest.raises(imaplib.IMAP4.abort):
        read_fetch_answers(imap, tag)


def test_fetch_answers_with_a_bye_are_a_lost_connection() -> None:
    imap = ScriptedImap(b"* 1 FETCH (UID 1 BODY[] {2}\r\nhi)\r\n* BYE shutting down\r\n", 8192)
    tag = imap._command("UID", "FETCH", "1", "(BODY.PEEK[])")
    with pytest.raises(imaplib.IMAP4.abort, match="shutting down"):
        read_fetch_answers(imap, tag)


def test_complete_bodies_keeps_only_the_answers_that_arrived_whole():
    from migrator.stores.imap import complete_bodies

    data = [
        (b"1 (UID 11 BODY[] {3}", b"abc"),
        b")",
        (b"2 (UID 12 BODY[] {3}", b"def"),  # its closing never came: the FETCH broke off
    ]
    assert complete_bodies(data) == {11: b"abc"}
    assert complete_bodies([]) == {}


def test_a_literal_larger_than_the_run_takes_is_refused_before_anything_is_read():
    import io
    import types

    from migrator.stores.imap.wire import LiteralTooBig, read_literal

    def connection(allowed: int | None) -> types.SimpleNamespace:
        raw = io.BufferedReader(io.BytesIO(b"x" * 100))  # type: ignore[arg-type]
        return types.SimpleNamespace(file=raw, _migrator_allowed=allowed, abort=imaplib.IMAP4.abort)

    imap = connection(None)
    with pytest.raises(LiteralTooBig, match="99999999999 bytes") as caught:
        read_literal(imap, 99_999_999_999, "7")
    assert caught.value.single and caught.value.uid == "7" and imap.file.tell() == 0
    # within a FETCH's allowance: read, and the allowance shrinks; past it: refused, not single
    imap = connection(60)
    assert read_literal(imap, 50) == b"x" * 50 and imap._migrator_allowed == 10
    with pytest.raises(LiteralTooBig) as caught:
        read_literal(imap, 20)
    assert not caught.value.single


def test_an_imaplib_refusal_is_shown_in_the_servers_words():
    from migrator.stores.imap.parse import server_words

    said = "LOGIN command error: NO [b'[AUTHENTICATIONFAILED] Authentication failed.']"
    assert server_words(said) == "NO [AUTHENTICATIONFAILED] Authentication failed."
    assert server_words("STARTTLS command error: BAD [b'what']") == "BAD what"


def _store_with(prefix, delimiter, namespaces):
    from migrator.stores.base import ServerAccess
    from migrator.stores.imap import ImapStore

    store = ImapStore(ServerAccess("h", 1, "u", "none", None, lambda: "x"))
    store.prefix, store.delimiter, store._namespaces = prefix, delimiter, namespaces
    return store


CYRUS_STANDARD = ("INBOX.", ".", [("user.", ".", "other"), ("", ".", "shared")])
CYRUS_ALT = ("", "/", [("Other Users/", "/", "other"), ("Shared Folders/", "/", "shared")])
DOVECOT_PREFIXED = ("INBOX.", ".", [])
DOVECOT_PLAIN = ("", "/", [("shared/", "/", "shared")])


@pytest.mark.parametrize(
    ("server", "name", "path", "namespace"),
    [
        (CYRUS_STANDARD, "INBOX", ("INBOX",), None),
        (CYRUS_STANDARD, "INBOX.Archive.2023", ("Archive", "2023"), None),
        (CYRUS_STANDARD, "INBOX.Reçus", ("Reçus",), None),
        (CYRUS_STANDARD, "shared.ro", ("Shared Folders", "shared", "ro"), "shared"),
        (CYRUS_STANDARD, "user.bob.Sent", ("Other Users", "bob", "Sent"), "other"),
        (CYRUS_ALT, "Archive/2023", ("Archive", "2023"), None),
        (CYRUS_ALT, "Shared Folders/shared/ro", ("Shared Folders", "shared", "ro"), "shared"),
        (CYRUS_ALT, "Other Users/bob", ("Other Users", "bob"), "other"),
        (DOVECOT_PREFIXED, "INBOX.Sent", ("Sent",), None),
        (DOVECOT_PLAIN, "INBOX/Sent", ("INBOX", "Sent"), None),
        (DOVECOT_PLAIN, "shared/alice/x", ("Shared Folders", "alice", "x"), "shared"),
    ],
)
def test_listed_names_are_placed_relative_to_their_namespace(server, name, path, namespace):
    prefix, delimiter, namespaces = server
    store = _store_with(prefix, delimiter, namespaces)
    assert store._place(name, delimiter) == (path, namespace)
    if namespace is None:  # and written back as the server spells it
        assert store._own_name(path) == name


def test_a_namespace_root_is_no_folder():
    store = _store_with(*CYRUS_ALT)
    assert store._place("Shared Folders/", "/") is None


def test_a_refused_namespace_leaves_no_prefix_and_the_listed_delimiter():
    """A server that offers NAMESPACE but refuses it (or answers garbage) is taken as one
    without a prefix, its delimiter learnt from LIST, rather than failing the login."""
    from imapclient.exceptions import IMAPClientError

    class Refusing:
        def namespace(self):
            raise IMAPClientError("NAMESPACE command error: BAD [b'Unknown command']")

        def list_folders(self, directory, pattern):
            return [((b"\\Noselect",), b".", "")]

    store = _store_with("stale.", "/", [("x/", "/", "shared")])
    store._client = Refusing()
    store._caps = frozenset({"NAMESPACE"})
    store._learn_namespace()
    assert (store.prefix, store.delimiter, store._namespaces) == ("", ".", [])
