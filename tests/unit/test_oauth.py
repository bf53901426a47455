"""OAuth2: the SASL strings, PKCE, the browser (loopback) and device flows and token refresh
against a small fake provider on 127.0.0.1, the keyring record, which login a side chooses, and
`migrator auth login` end to end. No token ever appears in an error."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import pytest
from typer.testing import CliRunner

from migrator.cli import app
from migrator.credentials import SecretSources, choose_login
from migrator.errors import ConfigError
from migrator.oauth import (
    KEYRING_SERVICE,
    Client,
    Endpoints,
    KeyringStore,
    OAuthError,
    RefreshingToken,
    Tokens,
    authorization_code_flow,
    device_code_flow,
    oauthbearer,
    pkce_pair,
    save_login,
    xoauth2,
)


def test_sasl_strings():
    assert (
        xoauth2("alice@example.org", "tok") == "user=alice@example.org\x01auth=Bearer tok\x01\x01"
    )
    assert oauthbearer("a,b=c", "tok", "imap.example.org", 993) == (
        "n,a=a=2Cb=3Dc,\x01host=imap.example.org\x01port=993\x01auth=Bearer tok\x01\x01"
    )


def test_pkce_pair_is_s256():
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128
    digest = hashlib.sha256(verifier.encode()).digest()
    assert challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def test_tokens_never_show_in_a_repr():
    assert "secret" not in repr(Tokens("secret-access", 0.0, "secret-refresh"))


# -- a fake provider ------------------------------------------------------------------------------


class Provider:
    """Authorize, token and device endpoints, keeping what they were sent."""

    def __init__(self) -> None:
        self.challenges: dict[str, str] = {}
        self.refresh_tokens = {"rt-1"}
        self.issued = 0
        self.pending_polls = 2
        self.requests: list[dict[str, str]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def reply(self, status: int, data: dict[str, Any]) -> None:
                body = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                provider.requests.append(query)
                assert query["code_challenge_method"] == "S256"
                assert query["redirect_uri"].startswith("http://127.0.0.1:")
                provider.challenges["code-1"] = query["code_challenge"]
                target = (
                    query["redirect_uri"]
                    + "?"
                    + urllib.parse.urlencode({"code": "code-1", "state": query["state"]})
                )
                self.send_response(302)
                self.send_header("Location", target)
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
                provider.requests.append(form)
                if self.path == "/devicecode":
                    self.reply(
                        200,
                        {
                            "device_code": "dc-1",
                            "user_code": "ABCD-EFGH",
                            "verification_uri": "https://example.org/device",
                            "interval": 1,
                            "expires_in": 600,
                        },
                    )
                    return
                grant = form.get("grant_type")
                if grant == "authorization_code":
                    digest = hashlib.sha256(form["code_verifier"].encode()).digest()
                    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
                    if provider.challenges.get(form["code"]) != expected:
                        self.reply(400, {"error": "invalid_grant"})
                        return
                    self.reply(200, provider.tokens(refresh=True))
                elif grant == "refresh_token":
                    if form["refresh_token"] not in provider.refresh_tokens:
                        self.reply(400, {"error": "invalid_grant", "error_description": "gone"})
                        return
                    self.reply(200, provider.tokens(refresh=True))
                elif grant == "urn:ietf:params:oauth:grant-type:device_code":
                    if provider.pending_polls:
                        provider.pending_polls -= 1
                        self.reply(400, {"error": "authorization_pending"})
                        return
                    self.reply(200, provider.tokens(refresh=True))
                else:
                    self.reply(400, {"error": "unsupported_grant_type"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def tokens(self, refresh: bool) -> dict[str, Any]:
        self.issued += 1
        data: dict[str, Any] = {"access_token": f"at-{self.issued}", "expires_in": 3600}
        if refresh:
            token = f"rt-{self.issued + 1}"
            self.refresh_tokens.add(token)
            data["refresh_token"] = token
        return data

    def endpoints(self) -> Endpoints:
        return Endpoints(
            token_url=f"{self.url}/token",
            scopes=("mail", "offline_access"),
            authorize_url=f"{self.url}/authorize",
            device_url=f"{self.url}/devicecode",
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.close()


def follow(url: str) -> None:
    """What a browser does: the provider's page redirects to our loopback listener."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert b"signed in" in response.read()


def test_the_browser_flow_uses_pkce_and_the_loopback_redirect(provider):
    tokens = authorization_code_flow(
        provider.endpoints(), Client("my-app"), "alice@example.org", follow, timeout=20
    )
    assert tokens.access_token == "at-1" and tokens.refresh_token == "rt-2"
    authorize = provider.requests[0]
    assert authorize["client_id"] == "my-app" and authorize["login_hint"] == "alice@example.org"
    assert authorize["scope"] == "mail offline_access"
    exchange = provider.requests[1]
    assert exchange["grant_type"] == "authorization_code" and "client_secret" not in exchange


def test_a_refused_browser_sign_in_is_one_clear_error(provider):
    def deny(url: str) -> None:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
        back = (
            query["redirect_uri"]
            + "?"
            + urllib.parse.urlencode({"error": "access_denied", "state": query["state"]})
        )
        urllib.request.urlopen(back, timeout=10).read()

    with pytest.raises(OAuthError, match="the sign-in was refused: access_denied"):
        authorization_code_flow(provider.endpoints(), Client("my-app"), "a", deny, timeout=20)


def test_the_device_flow_shows_the_code_and_polls(provider):
    shown: list[str] = []
    slept: list[float] = []
    tokens = device_code_flow(
        provider.endpoints(), Client("my-app"), shown.append, sleep=slept.append
    )
    assert tokens.access_token == "at-1"
    assert shown == ["To sign in, open https://example.org/device and enter the code ABCD-EFGH"]
    assert slept == [1.0, 1.0, 1.0]  # two "authorization_pending", then the tokens


class MemoryStore:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_access_tokens_are_refreshed_when_due_and_rotated_refresh_tokens_kept(provider):
    store = MemoryStore()
    save_login(
        store, "gmail:alice", provider.endpoints(), Client("app", "s3"), Tokens("x", 0, "rt-1")
    )
    clock = Clock()
    token = RefreshingToken(store, "gmail:alice", "gmail:alice", clock)
    assert token() == "at-1"
    assert token() == "at-1"  # still valid: no second request
    assert provider.issued == 1
    record = json.loads(store.data["gmail:alice"])
    assert record["refresh_token"] == "rt-2" and record["client_secret"] == "s3"
    clock.now += 3600 - 30  # inside the last minute: refreshed
    assert token() == "at-2"
    refresh = [r for r in provider.requests if r.get("grant_type") == "refresh_token"]
    assert [r["refresh_token"] for r in refresh] == ["rt-1", "rt-2"]


def test_a_revoked_sign_in_says_to_sign_in_again_without_showing_tokens(provider):
    store = MemoryStore()
    save_login(
        store, "gmail:alice", provider.endpoints(), Client("app"), Tokens("x", 0, "rt-secret-9")
    )
    with pytest.raises(OAuthError) as info:
        RefreshingToken(store, "gmail:alice", "gmail:alice@gmail.com")()
    text = str(info.value)
    assert "invalid_grant" in text and "migrator auth login gmail:alice" in text
    assert "rt-secret-9" not in text and info.value.exit_status == 3


def test_no_stored_sign_in_is_a_usage_error():
    with pytest.raises(ConfigError, match="no OAuth2 sign-in stored"):
        RefreshingToken(MemoryStore(), "gmail:bob", "gmail:bob")()


def test_an_unreachable_provider_is_a_connect_error():
    with pytest.raises(OAuthError, match=r"cannot reach 127\.0\.0\.1:9"):
        device_code_flow(
            Endpoints("http://127.0.0.1:9/token", ("s",), None, "http://127.0.0.1:9/dev"),
            Client("app"),
            print,
        )


# -- which login a side uses ---------------------------------------------------------------------


def login(env: dict[str, str], **kw: Any):
    sources = SecretSources("source", kw.pop("password_file", None), kw.pop("password_cmd", None))
    return choose_login(sources, "gmail:alice", "alice@imap", env, False, **kw)


def test_a_token_in_the_environment_means_oauth2():
    chosen = login({"MIGRATOR_SOURCE_OAUTH2_TOKEN": "tok\n"})
    assert chosen.auth == "xoauth2" and chosen.secret() == "tok"
    chosen = login({"MIGRATOR_SOURCE_OAUTH2_TOKEN": "tok"}, oauth_mechanism="oauthbearer")
    assert chosen.auth == "oauthbearer"


def test_a_token_command_runs_at_every_login(tmp_path):
    counter = tmp_path / "n"
    counter.write_text("0")
    script = tmp_path / "tok.sh"
    script.write_text(f'n=$(($(cat {counter})+1)); echo $n > {counter}; echo "token-$n"\n')
    chosen = login({}, token_cmd=f"sh {script}")
    assert [chosen.secret(), chosen.secret()] == ["token-1", "token-2"]


def test_a_password_given_for_the_run_wins_over_a_stored_sign_in():
    chosen = login({"MIGRATOR_SOURCE_PASSWORD": "pw"}, stored_token=lambda: "stored")
    assert chosen.auth == "password" and chosen.secret() == "pw"
    chosen = login({}, stored_token=lambda: "stored")
    assert chosen.auth == "xoauth2" and chosen.secret() == "stored"


def test_auth_forces_a_kind():
    chosen = login(
        {"MIGRATOR_SOURCE_OAUTH2_TOKEN": "t", "MIGRATOR_SOURCE_PASSWORD": "pw"}, auth="plain"
    )
    assert chosen.auth == "plain" and chosen.secret() == "pw"
    with pytest.raises(ConfigError, match="no OAuth2 access token"):
        login({"MIGRATOR_SOURCE_PASSWORD": "pw"}, auth="oauthbearer")
    with pytest.raises(ConfigError, match="--source-auth 'kerberos'"):
        login({}, auth="kerberos")


def test_an_oauth2_only_provider_without_a_token_says_how_to_sign_in():
    with pytest.raises(ConfigError) as info:
        login({}, oauth_only=True, sign_in="migrator auth login outlook:bob --client-id ID")
    assert "MIGRATOR_SOURCE_OAUTH2_TOKEN" in str(info.value)
    assert "migrator auth login outlook:bob" in str(info.value)


# -- migrator auth login --------------------------------------------------------------------------


class MemoryKeyring(keyring.backend.KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.data.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.data[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.data.pop((service, username), None)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    yield ring
    keyring.set_keyring(previous)


def user_profile(config: Path, provider: Provider, flow: str) -> None:
    directory = config / "migrator" / "profiles"
    directory.mkdir(parents=True)
    (directory / "fakemail.toml").write_text(
        f"""description = "A fake provider"
[imap]
host = "127.0.0.1"
port = 993  # test
tls = "implicit"
[auth]
methods = ["oauth2"]
mechanism = "oauthbearer"
[oauth2]
authorize_url = "{provider.url}/authorize"
token_url = "{provider.url}/token"
device_url = "{provider.url}/devicecode"
scopes = ["mail"]
flow = "{flow}"
"""
    )


@pytest.mark.parametrize("flow", ["code", "device"])
def test_auth_login_keeps_the_refresh_token_in_the_keyring(
    flow, provider, memory_keyring, tmp_path, monkeypatch
):
    user_profile(tmp_path, provider, flow)
    monkeypatch.setattr("webbrowser.open", follow)
    monkeypatch.setattr("time.sleep", lambda s: None)
    result = CliRunner().invoke(
        app,
        ["auth", "login", "fakemail:alice@example.org", "--client-id", "my-app"],
        env={"XDG_CONFIG_HOME": str(tmp_path), "MIGRATOR_OAUTH2_CLIENT_SECRET": "s3cr3t"},
    )
    assert result.exit_code == 0, result.output
    assert "signed in as alice@example.org" in result.output
    record = json.loads(memory_keyring.data[(KEYRING_SERVICE, "fakemail:alice@example.org")])
    assert record["refresh_token"].startswith("rt-") and record["client_id"] == "my-app"
    assert record["client_secret"] == "s3cr3t"
    assert "rt-" not in result.output and "at-1" not in result.output
    # and a copy's login now finds it
    token = RefreshingToken(KeyringStore(), "fakemail:alice@example.org", "fakemail:alice")
    assert token().startswith("at-")


def test_auth_login_wants_a_client_id_and_an_oauth2_profile(tmp_path):
    result = CliRunner().invoke(
        app, ["auth", "login", "gmail:alice@gmail.com"], env={"XDG_CONFIG_HOME": str(tmp_path)}
    )
    assert result.exit_code == 2 and "--client-id" in result.output
    result = CliRunner().invoke(
        app,
        ["auth", "login", "yahoo:bob@yahoo.com", "--client-id", "x"],
        env={"XDG_CONFIG_HOME": str(tmp_path)},
    )
    assert result.exit_code == 2 and "does not use OAuth2" in result.output
