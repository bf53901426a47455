"""OAuth2 for IMAP and POP3: the SASL strings (XOAUTH2, OAUTHBEARER), and getting tokens.

``migrator auth login PROFILE:USER`` signs the user in with the provider, with the user's own
client id (an app they registered: see README), by one of two flows:

- authorisation code with PKCE (RFC 7636) on a loopback redirect (RFC 8252): a browser opens the
  provider's page, which sends the code back to a one-shot HTTP listener on 127.0.0.1;
- device code (RFC 8628), Microsoft's preference for terminals: the user types a short code on
  a web page, from any device, while we poll.

The refresh token is kept in the system keyring (service ``migrator-oauth2``, user
``PROFILE:USER``) with what is needed to use it; ``RefreshingToken`` turns it into access tokens,
refreshed a minute before they expire, and is what a store calls at each login.

No token is ever part of an error message. Nothing here prints: the caller passes ``show`` and
``open_url`` callables.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Protocol

from migrator.errors import ConfigError, ConnectError

KEYRING_SERVICE = "migrator-oauth2"
#: An access token this close to its expiry is refreshed before use.
REFRESH_MARGIN = 60.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


# -- SASL ---------------------------------------------------------------------------------------


def xoauth2(user: str, token: str) -> str:
    """The XOAUTH2 initial response (Google, Microsoft), before base64."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01"


def oauthbearer(user: str, token: str, host: str, port: int) -> str:
    """The OAUTHBEARER initial response (RFC 7628), before base64."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    return f"n,a={authzid},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01"


def sasl_initial(mechanism: str, user: str, token: str, host: str, port: int) -> str:
    if mechanism == "oauthbearer":
        return oauthbearer(user, token, host, port)
    return xoauth2(user, token)


# -- talking to the provider ------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """The app the user registered with the provider."""

    client_id: str
    client_secret: str | None = None


@dataclass(frozen=True)
class Endpoints:
    token_url: str
    scopes: tuple[str, ...]
    authorize_url: str | None = None
    device_url: str | None = None


@dataclass(frozen=True)
class Tokens:
    access_token: str
    expires_at: float
    refresh_token: str | None = None

    def __repr__(self) -> str:  # never show a token
        return f"Tokens(expires_at={self.expires_at:.0f})"


class OAuthError(ConnectError):
    """The provider refused (exit 3), with its error code and description, never a token."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def _post(url: str, fields: dict[str, str], timeout: float) -> dict[str, Any]:
    body = urllib.parse.urlencode(fields).encode()
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return _json(response.read(), url)
    except urllib.error.HTTPError as exc:
        data = _json(exc.read(), url, exc.code)
        code = str(data.get("error", exc.code))
        if code in ("authorization_pending", "slow_down"):
            return data
        detail = str(data.get("error_description", "")).splitlines()[0:1]
        raise OAuthError(
            f"{_host(url)} refused: {code}" + (f" ({detail[0][:200]})" if detail else ""), code
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OAuthError(f"cannot reach {_host(url)} ({reason})") from None


def _json(raw: bytes, url: str, status: int | None = None) -> dict[str, Any]:
    try:
        data = json.loads(raw.decode("utf-8") or "{}")
    except (UnicodeDecodeError, ValueError):
        raise OAuthError(
            f"{_host(url)} answered{f' HTTP {status}' if status else ''} with something that is "
            "not JSON"
        ) from None
    if not isinstance(data, dict):
        raise OAuthError(f"{_host(url)} answered with unexpected JSON")
    return data


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _tokens(data: dict[str, Any], url: str, clock: Callable[[], float]) -> Tokens:
    token = data.get("access_token")
    if not isinstance(token, str) or not token:
        raise OAuthError(f"{_host(url)} sent no access token")
    try:
        lifetime = float(data.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600.0
    refresh = data.get("refresh_token")
    return Tokens(token, clock() + lifetime, refresh if isinstance(refresh, str) else None)


def _client_fields(client: Client) -> dict[str, str]:
    fields = {"client_id": client.client_id}
    if client.client_secret:
        fields["client_secret"] = client.client_secret
    return fields


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636)."""
    verifier = secrets.token_urlsafe(64)[:96]
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class _Redirect:
    """A one-shot HTTP listener on 127.0.0.1 that catches the provider's redirect."""

    def __init__(self, state: str) -> None:
        self.state = state
        self.result: dict[str, str] | None = None
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                got = {k: v[-1] for k, v in query.items()}
                if got.get("state") != outer.state or not ("code" in got or "error" in got):
                    self.send_error(400, "not the sign-in answer migrator is waiting for")
                    return
                outer.result = got
                ok = "code" in got
                said = "signed in; you may close this page" if ok else "sign-in failed"
                page = f"<html><body><p>migrator: {said}.</p></body></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                outer.done.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.server.timeout = 0.5
        self.port = self.server.server_address[1]

    def wait(self, timeout: float) -> dict[str, str] | None:
        deadline = time.monotonic() + timeout
        try:
            while not self.done.is_set() and time.monotonic() < deadline:
                self.server.handle_request()
        finally:
            self.server.server_close()
        return self.result


def authorization_code_flow(
    endpoints: Endpoints,
    client: Client,
    login_hint: str,
    open_url: Callable[[str], None],
    timeout: float = 300.0,
    clock: Callable[[], float] = time.time,
) -> Tokens:
    """Sign in through a browser: PKCE, a loopback redirect, the code exchanged for tokens.
    ``open_url`` shows the page to the user (a browser, or printing the link)."""
    if not endpoints.authorize_url:
        raise ConfigError("this provider's profile has no authorize_url; use the device flow")
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(24)
    listener = _Redirect(state)
    redirect_uri = f"http://127.0.0.1:{listener.port}/"
    query = {
        "response_type": "code",
        "client_id": client.client_id,
        "redirect_uri": redirect_uri,
        "scope": " ".join(endpoints.scopes),
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": login_hint,
        # Google returns a refresh token only with offline access and consent.
        "access_type": "offline",
        "prompt": "consent",
    }
    separator = "&" if "?" in endpoints.authorize_url else "?"
    url = endpoints.authorize_url + separator + urllib.parse.urlencode(query)
    waiter = threading.Thread(target=open_url, args=(url,), daemon=True)
    waiter.start()
    result = listener.wait(timeout)
    if result is None:
        raise OAuthError(f"no answer from the sign-in page within {timeout:.0f}s; try again")
    if "error" in result:
        detail = result.get("error_description", "")[:200]
        raise OAuthError(
            f"the sign-in was refused: {result['error']}" + (f" ({detail})" if detail else ""),
            result["error"],
        )
    fields = {
        "grant_type": "authorization_code",
        "code": result["code"],
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        **_client_fields(client),
    }
    return _tokens(_post(endpoints.token_url, fields, 30.0), endpoints.token_url, clock)


def device_code_flow(
    endpoints: Endpoints,
    client: Client,
    show: Callable[[str], None],
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] | None = None,
) -> Tokens:
    """Sign in on another device: show the code and the page, then poll until the user is done
    (RFC 8628)."""
    if not endpoints.device_url:
        raise ConfigError("this provider's profile has no device_url; use the browser flow")
    fields = {"scope": " ".join(endpoints.scopes), **_client_fields(client)}
    start = _post(endpoints.device_url, fields, 30.0)
    try:
        device_code = str(start["device_code"])
        user_code = str(start["user_code"])
        page = str(start.get("verification_uri") or start["verification_url"])
    except KeyError:
        raise OAuthError(f"{_host(endpoints.device_url)} sent an incomplete device code") from None
    interval = float(start.get("interval", 5))
    deadline = clock() + float(start.get("expires_in", 900))
    show(f"To sign in, open {page} and enter the code {user_code}")
    poll = {"grant_type": DEVICE_GRANT, "device_code": device_code, **_client_fields(client)}
    while clock() < deadline:
        (sleep or time.sleep)(interval)
        data = _post(endpoints.token_url, poll, 30.0)
        error = data.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += 5
            continue
        return _tokens(data, endpoints.token_url, clock)
    raise OAuthError("the device code expired before the sign-in was finished; try again")


def refresh(
    endpoints: Endpoints, client: Client, refresh_token: str, clock: Callable[[], float] = time.time
) -> Tokens:
    fields = {
        "grant_type": "refresh_token",
        "refresh_token": refresh_token,
        **_client_fields(client),
    }
    if endpoints.scopes:
        fields["scope"] = " ".join(endpoints.scopes)
    return _tokens(_post(endpoints.token_url, fields, 30.0), endpoints.token_url, clock)


# -- keeping the refresh token ----------------------------------------------------------------


class TokenStore(Protocol):
    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...


class KeyringStore:
    """The system keyring (pip install 'mailbox-migrator[keyring]')."""

    def _keyring(self) -> Any:
        try:
            import keyring
        except ImportError:
            raise ConfigError(
                "OAuth2 sign-in keeps its refresh token in the system keyring: "
                "pip install 'mailbox-migrator[keyring]'"
            ) from None
        return keyring

    def get(self, key: str) -> str | None:
        try:
            return self._keyring().get_password(KEYRING_SERVICE, key)  # type: ignore[no-any-return]
        except ConfigError:
            return None
        except Exception:  # no usable backend: nothing stored
            return None

    def set(self, key: str, value: str) -> None:
        keyring = self._keyring()
        try:
            keyring.set_password(KEYRING_SERVICE, key, value)
        except Exception as exc:
            raise ConfigError(
                f"cannot write to the system keyring ({type(exc).__name__}); set one up "
                "(e.g. gnome-keyring, KWallet, or keyrings.alt) and sign in again"
            ) from None


def store_key(profile: str, user: str) -> str:
    return f"{profile}:{user}"


def save_login(
    store: TokenStore, key: str, endpoints: Endpoints, client: Client, tokens: Tokens
) -> None:
    if not tokens.refresh_token:
        raise OAuthError(
            "the provider sent no refresh token (for Google, the consent screen must grant "
            "offline access; for Microsoft, the offline_access scope): nothing was saved"
        )
    record = {
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "refresh_token": tokens.refresh_token,
        "token_url": endpoints.token_url,
        "scopes": list(endpoints.scopes),
    }
    store.set(key, json.dumps(record))


def has_login(store: TokenStore, key: str) -> bool:
    return bool(store.get(key))


class RefreshingToken:
    """A callable giving a valid access token: refreshed from the stored refresh token when the
    one in hand is about to expire (and the new refresh token saved, when the provider rotates
    it). Called by a store at each login."""

    def __init__(
        self,
        store: TokenStore,
        key: str,
        label: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.key = key
        self.label = label
        self.clock = clock
        self._current: Tokens | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            current = self._current
            if current is None or current.expires_at - REFRESH_MARGIN <= self.clock():
                current = self._current = self._refresh()
            return current.access_token

    def _refresh(self) -> Tokens:
        raw = self.store.get(self.key)
        if not raw:
            raise ConfigError(
                f"{self.label}: no OAuth2 sign-in stored; run `migrator auth login {self.key}`"
            )
        try:
            record = json.loads(raw)
            client = Client(record["client_id"], record.get("client_secret"))
            endpoints = Endpoints(record["token_url"], tuple(record.get("scopes", ())))
            refresh_token = record["refresh_token"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                f"{self.label}: the stored OAuth2 sign-in is damaged; run "
                f"`migrator auth login {self.key}` again"
            ) from None
        try:
            tokens = refresh(endpoints, client, refresh_token, self.clock)
        except OAuthError as exc:
            if exc.code in ("invalid_grant", "invalid_client", "unauthorized_client"):
                raise OAuthError(
                    f"{self.label}: the stored OAuth2 sign-in was refused ({exc.code}): it expired "
                    f"or was revoked; run `migrator auth login {self.key}` again",
                    exc.code,
                ) from None
            raise OAuthError(f"{self.label}: cannot refresh the OAuth2 token: {exc}") from None
        if tokens.refresh_token and tokens.refresh_token != refresh_token:
            record["refresh_token"] = tokens.refresh_token
            self.store.set(self.key, json.dumps(record))
        return tokens
