from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.endpoints import (
    ArchiveEndpoint,
    ProfileEndpoint,
    ServerEndpoint,
    open_store,
    parse_endpoint,
)
from migrator.errors import ConfigError


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "imaps://alice@mail.example.org",
            ServerEndpoint("imap", "implicit", "alice", "mail.example.org", 993),
        ),
        ("imap://alice@h:1143", ServerEndpoint("imap", "starttls", "alice", "h", 1143)),
        ("imap://alice@h?tls=none", ServerEndpoint("imap", "none", "alice", "h", 143)),
        (
            "pop3s://bob@pop.example.org",
            ServerEndpoint("pop3", "implicit", "bob", "pop.example.org", 995),
        ),
        ("pop3://bob@h", ServerEndpoint("pop3", "starttls", "bob", "h", 110)),
        (
            "IMAPS://me@corp.com@Mail.Corp.com:10993",
            ServerEndpoint("imap", "implicit", "me@corp.com", "mail.corp.com", 10993),
        ),
        ("imaps://me%40corp.com@h", ServerEndpoint("imap", "implicit", "me@corp.com", "h", 993)),
        ("imaps://u@[::1]:1993", ServerEndpoint("imap", "implicit", "u", "::1", 1993)),
        ("mbox:/srv/archive", ArchiveEndpoint("mbox", Path("/srv/archive"))),
        ("maildir:relative/dir", ArchiveEndpoint("maildir", Path("relative/dir"))),
        ("gmail:alice@gmail.com", ProfileEndpoint("gmail", "alice@gmail.com")),
        ("outlook:bob@contoso.com", ProfileEndpoint("outlook", "bob@contoso.com")),
    ],
)
def test_every_endpoint_form(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("imaps://alice:hunter2@h", "password in the URL is refused"),
        ("ftp://alice@h", "unknown scheme 'ftp'"),
        ("imaps://h", "missing user"),
        ("imaps://u@h:99999", "bad port"),
        ("imaps://u@h?tls=none", "not understood"),
        ("imap://u@h?foo=1", "unknown option"),
        ("imaps://u@h/INBOX", "use --folder"),
        ("mbox:", "missing path"),
        ("just words", "is not an endpoint"),
    ],
)
def test_bad_endpoints_say_what_to_do(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_endpoint(text)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12))
def test_password_never_echoed_in_errors(secret):
    try:
        parse_endpoint(f"imaps://alice:{secret}X@host")
    except ConfigError as exc:
        if len(secret) > 3:
            assert f"{secret}X" not in str(exc)


def test_round_trip_of_server_endpoint_text():
    ep = parse_endpoint("imap://a%40b@h:1143?tls=none")
    assert parse_endpoint(str(ep).replace("a@b@", "a%40b@")) == ep


def test_a_profile_endpoint_without_its_profile_is_a_usage_error():
    with pytest.raises(ConfigError) as info:
        open_store(parse_endpoint("gmail:alice@gmail.com"), None, "source")
    assert info.value.exit_status == 2


@given(
    st.sampled_from(["imaps", "imap", "pop3s", "ftp", "smtp"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=4, max_size=16),
)
def test_no_scheme_echoes_a_password_with_any_characters(scheme, secret):
    try:
        parse_endpoint(f"{scheme}://alice:{secret}Q@host")
    except ConfigError as exc:
        assert f"{secret}Q" not in str(exc)
