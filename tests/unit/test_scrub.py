"""Secrets scrubbed from server text (migrator/scrub.py) and refused when they span lines
(migrator/credentials.py)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator import scrub
from migrator.credentials import SecretSources, secret_provider
from migrator.errors import ConfigError
from migrator.oauth import sasl_initial


@pytest.fixture(autouse=True)
def _fresh() -> None:
    scrub.forget_all()


def test_every_form_of_a_remembered_secret_is_masked() -> None:
    secret, user = 's3cret "pw" \\ ä€', "alice"
    scrub.remember(secret, user, "imap.example", 993)
    plain = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
    bearer = sasl_initial("xoauth2", user, secret, "imap.example", 993)
    quoted = secret.replace("\\", "\\\\").replace('"', '\\"')  # as LOGIN sends it
    for said in (
        f'NO bad password echo: {user} "{quoted}"',
        f"NO echo {plain}",
        f"NO echo {base64.b64encode(secret.encode()).decode()}",
        f"NO echo {base64.b64encode(bearer.encode()).decode()}",
        f"NO {secret[:9]} was cut",
        str([f"x {secret} y".encode()]),
    ):
        shown = scrub.server_text(said)
        assert "***" in shown, said
        assert secret[:8] not in shown and plain not in shown


def test_server_text_is_decoded_one_line_and_bounded() -> None:
    assert scrub.server_text("LOGIN command error: NO [b'bad \\xc3\\xa4 one', b'two']") == (
        "LOGIN command error: NO bad ä one two"
    )
    assert scrub.server_text(b"a\r\nb\tc") == "a b c"
    assert len(scrub.server_text("x" * 5000)) == scrub.SERVER_TEXT_LIMIT


@settings(max_examples=200, deadline=None)
@given(
    secret=st.text(min_size=8, max_size=40).filter(lambda s: not any(c in s for c in "\r\n\0")),
    before=st.text(max_size=30),
    after=st.text(max_size=30),
)
def test_a_secret_anywhere_in_any_text_never_survives(secret: str, before: str, after: str) -> None:
    scrub.forget_all()
    scrub.remember(secret, "bob")
    assert secret not in scrub.scrub(before + secret + after)
    assert secret[: max(8, len(secret) // 2)] not in scrub.scrub(before + secret + after)


def test_text_without_secrets_is_unchanged() -> None:
    scrub.remember("correct horse battery", "bob")
    text = "NO [AUTHENTICATIONFAILED] Authentication failed."
    assert scrub.server_text(text) == text


def test_the_protocol_log_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    scrub.remember("hunter2-hunter2", "bob")
    logger = logging.getLogger("test.scrub")
    logger.addFilter(scrub.ScrubFilter())
    with caplog.at_level(logging.DEBUG, "test.scrub"):
        logger.debug("> %s", b'A1 LOGIN bob "hunter2-hunter2"')
    assert "hunter2" not in caplog.text and "***" in caplog.text


def _secret_from_command(tmp_path: Path, output: str) -> str:
    script = tmp_path / "pw.sh"
    script.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\n")
    script.chmod(0o700)
    sources = SecretSources("source", password_cmd=str(script))
    return secret_provider(sources, "src", "u", {}, False)()


def test_one_trailing_newline_is_dropped_and_any_other_line_break_refused(tmp_path: Path) -> None:
    assert _secret_from_command(tmp_path, "pw\n") == "pw"
    assert _secret_from_command(tmp_path, "pw\r\n") == "pw"
    for bad in ("pw\n\n", "pw\nA1 DELETE INBOX", "p\rw"):
        with pytest.raises(ConfigError, match="line break") as caught:
            _secret_from_command(tmp_path, bad)
        assert "DELETE" not in str(caught.value) and "pw" not in str(caught.value)


def test_a_password_from_the_environment_with_a_line_break_is_refused() -> None:
    sources = SecretSources("source")
    provider = secret_provider(sources, "src", "u", {"MIGRATOR_SOURCE_PASSWORD": "a\nb"}, False)
    with pytest.raises(ConfigError, match=r"MIGRATOR_SOURCE_PASSWORD.*line break"):
        provider()
