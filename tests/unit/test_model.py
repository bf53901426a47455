import hashlib
import re

from hypothesis import given
from hypothesis import strategies as st

from migrator.model import crlf_size, header_fields, message_key, to_crlf, unfold
from tests.unit.archive_helpers import spliced


def test_key_uses_message_id_and_size():
    assert message_key(b"Message-ID: <a@b>\r\nSubject: x\r\n\r\nbody", 42) == "mid:<a@b>:42"


def test_key_is_the_same_for_lf_and_crlf_headers_and_folded_lines():
    crlf = b"Subject: hello\r\n world\r\nFrom: a@b\r\nDate: x\r\n\r\nbody\r\n"
    lf = crlf.replace(b"\r\n", b"\n")
    assert message_key(crlf, 100) == message_key(lf, 100)
    assert message_key(crlf, 100).startswith("hdr:")
    assert message_key(crlf, 100) != message_key(crlf.replace(b"hello", b"bye"), 100)


def test_header_fields_stop_at_the_body():
    fields = header_fields(b"Subject: a\r\n\r\nMessage-ID: <not@header>\r\n")
    assert b"message-id" not in fields


@given(st.binary(max_size=300))
def test_crlf_size_is_the_length_after_conversion(data):
    assert crlf_size(data) == len(to_crlf(data))


@given(st.binary(max_size=300))
def test_to_crlf_is_idempotent_and_keeps_existing_crlf(data):
    once = to_crlf(data)
    assert to_crlf(once) == once
    assert once.replace(b"\r\n", b"\n") == data.replace(b"\r\n", b"\n")


# The identity key is stored in journals, so a faster way to compute it must give the same
# answer as the plain one it replaced: a regex unfold, then every line split in Python.
_REFERENCE_FOLD = re.compile(rb"\r?\n[ \t]+")


def reference_header_fields(header: bytes) -> dict[bytes, bytes]:
    end = len(header)
    for sep in (b"\r\n\r\n", b"\n\n"):
        if (pos := header.find(sep)) >= 0:
            end = pos
            break
    fields: dict[bytes, bytes] = {}
    for line in _REFERENCE_FOLD.sub(b" ", header[:end]).splitlines():
        name, sep, value = line.partition(b":")
        if sep and name and b" " not in name.strip():
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def reference_message_key(header: bytes, size: int) -> str:
    fields = reference_header_fields(header)
    mid = fields.get(b"message-id", b"").strip()
    if mid:
        return f"mid:{mid.decode('utf-8', 'replace')}:{size}"
    digest = hashlib.sha256()
    for name in (b"date", b"from", b"to", b"subject"):
        digest.update(name + b"\0" + b" ".join(fields.get(name, b"").split()) + b"\0")
    return f"hdr:{digest.hexdigest()[:32]}:{size}"


header_text = spliced(
    [
        b"Message-ID",
        b"message-id",
        b"Date",
        b"FROM",
        b"To",
        b"Subject",
        b"X-To",
        b"Received",
        b":",
        b": ",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\r\n",
        b"\v",
        b"\f",
        b"<a@b>",
        b"x",
        b"\xff",
    ]
)


@given(header_text | st.binary(max_size=200))
def test_unfold_joins_exactly_what_the_plain_regex_joins(block: bytes) -> None:
    assert unfold(block) == _REFERENCE_FOLD.sub(b" ", block)


@given(header_text | st.binary(max_size=200), st.integers(min_value=0, max_value=10**9))
def test_message_key_is_the_key_the_plain_header_parser_gives(header: bytes, size: int) -> None:
    assert header_fields(header) == reference_header_fields(header)
    assert message_key(header, size) == reference_message_key(header, size)
