from hypothesis import given
from hypothesis import strategies as st

from migrator.model import crlf_size, header_fields, message_key, to_crlf


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
