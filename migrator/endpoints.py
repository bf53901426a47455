"""Endpoint strings -> what they name, and the one place that turns them into concrete stores.

imaps://USER@HOST[:PORT]   imap://USER@HOST[:PORT][?tls=none]
pop3s://USER@HOST[:PORT]   pop3://USER@HOST[:PORT][?tls=none]
mbox:PATH                  maildir:PATH                 PROFILE:USER
"""

from __future__ import annotations

import importlib
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote

from migrator.errors import ConfigError, NotSupportedError, closest
from migrator.profiles import Profile
from migrator.stores.base import ServerAccess, Source, Target
from migrator.stores.tls import BufferedTlsSocket

DEFAULT_PORTS = {"imaps": 993, "imap": 143, "pop3s": 995, "pop3": 110}


@dataclass(frozen=True)
class ServerEndpoint:
    protocol: str  # "imap" or "pop3"
    tls: str  # "implicit", "starttls" or "none"
    user: str
    host: str
    port: int

    def __str__(self) -> str:
        scheme = self.protocol + ("s" if self.tls == "implicit" else "")
        query = "?tls=none" if self.tls == "none" else ""
        return f"{scheme}://{self.user}@{_host_text(self.host)}:{self.port}{query}"


@dataclass(frozen=True)
class ArchiveEndpoint:
    kind: str  # "mbox" or "maildir"
    path: Path

    def __str__(self) -> str:
        return f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class ProfileEndpoint:
    profile: str
    user: str

    def __str__(self) -> str:
        return f"{self.profile}:{self.user}"


Endpoint = ServerEndpoint | ArchiveEndpoint | ProfileEndpoint

#: Every endpoint form, as typed before the rest.
SCHEMES = ("imaps://", "imap://", "pop3s://", "pop3://", "mbox:", "maildir:")
SCHEMES_HELP = "use " + ", ".join(SCHEMES) + " or PROFILE:USER (`migrator profiles list`)"


def scheme_hint(word: str) -> str:
    """`` (did you mean 'mbox:'?)`` when ``word`` looks like a mistyped scheme's name."""
    names = {scheme.rstrip(":/"): scheme for scheme in SCHEMES}
    match = closest(word.lower(), names)
    return f" (did you mean {names[match]!r}?)" if match else ""


def unknown_scheme(text: str, word: str) -> ConfigError:
    return ConfigError(f"{text}: unknown scheme {word!r}{scheme_hint(word)}; {SCHEMES_HELP}")


_SERVER = re.compile(r"^(?P<scheme>imaps?|pop3s?)://(?P<rest>.*)$", re.IGNORECASE)
_PROFILE = re.compile(r"^(?P<name>[a-z][a-z0-9._-]*):(?P<user>[^/].*)$", re.IGNORECASE)


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_endpoint(text: str) -> Endpoint:
    """Parse one endpoint; ConfigError names the endpoint and says what form is expected."""
    text = text.strip()
    if m := _SERVER.match(text):
        return _parse_server(text, m["scheme"].lower(), m["rest"])
    for kind in ("mbox", "maildir"):
        if text.lower().startswith(kind + ":"):
            path = text[len(kind) + 1 :]
            if path.startswith("//"):
                path = path[2:]
            if not path:
                raise ConfigError(f"{text}: missing path; write {kind}:PATH")
            return ArchiveEndpoint(kind, Path(path).expanduser())
    if "://" in text:
        raise unknown_scheme(_redact(text), text.split("://", 1)[0])
    if m := _PROFILE.match(text):
        return ProfileEndpoint(m["name"].lower(), unquote(m["user"]))
    word, colon, _ = text.partition(":")
    if colon and re.fullmatch(r"[a-z][a-z0-9._+-]*", word, re.IGNORECASE):
        raise unknown_scheme(text, word)
    raise ConfigError(
        f"{text!r} is not an endpoint; use imaps://USER@HOST, pop3s://USER@HOST, mbox:PATH, "
        "maildir:PATH or PROFILE:USER"
    )


def _parse_server(text: str, scheme: str, rest: str) -> ServerEndpoint:
    # A password may hold any character ('/', '?', '@'), so look for one before anything else,
    # and never show it: every message below uses the redacted text.
    userinfo_all = rest.rpartition("@")[0]
    if ":" in userinfo_all:
        raise ConfigError(
            f"{_redact(text)}: a password in the URL is refused (it would show in the process "
            "list and shell history); use MIGRATOR_SOURCE_PASSWORD/MIGRATOR_TARGET_PASSWORD, "
            "--source-password-file or the keyring"
        )
    rest, _, query = rest.partition("?")
    authority, slash, path = rest.partition("/")
    if slash and path:
        raise ConfigError(
            f"{_redact(text)}: a folder in the URL is not supported; use --folder instead"
        )
    userinfo, at, hostport = authority.rpartition("@")
    if not at or not userinfo:
        raise ConfigError(f"{_redact(text)}: missing user; write {scheme}://USER@HOST")
    if ":" in userinfo:
        raise ConfigError(
            f"{_redact(text)}: a password in the URL is refused (it would show in the process "
            "list and shell history); use MIGRATOR_SOURCE_PASSWORD/MIGRATOR_TARGET_PASSWORD, "
            "--source-password-file or the keyring"
        )
    user = unquote(userinfo)
    host, port = _split_hostport(text, hostport)
    protocol = scheme.rstrip("s") if scheme in ("imaps", "pop3s") else scheme
    tls = "implicit" if scheme.endswith("s") else "starttls"
    options = parse_qs(query, keep_blank_values=True)
    for key in options:
        if key != "tls":
            raise ConfigError(f"{_redact(text)}: unknown option {key!r}; only ?tls=none exists")
    if "tls" in options:
        value = options["tls"][-1].lower()
        if value != "none" or tls == "implicit":
            raise ConfigError(
                f"{_redact(text)}: ?tls={value} is not understood; only {protocol}://...?tls=none "
                "turns TLS off"
            )
        tls = "none"
    return ServerEndpoint(protocol, tls, user, host, port or DEFAULT_PORTS[scheme])


def _split_hostport(text: str, hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        host, _, tail = hostport[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else (tail or "")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise ConfigError(f"{_redact(text)}: missing host")
    if not port_text:
        return host.lower(), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{_redact(text)}: bad port {port_text!r}")
    return host.lower(), int(port_text)


def _redact(text: str) -> str:
    """The endpoint as it may be shown: a password written in it is replaced by ***."""
    scheme, sep, rest = text.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return text
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


@dataclass(frozen=True)
class AccessOptions:
    """Per side: how to trust its certificate and where its secret comes from."""

    secret: Callable[[], str]
    ca_file: Path | None = None
    insecure: bool = False
    timeout: float = 60.0
    #: How to log in (ServerAccess.auth): "password", "plain", "login", "xoauth2", "oauthbearer".
    auth: str = "password"
    #: The provider profile of this side (PROFILE:USER, or --source-profile/--target-profile).
    profile: Profile | None = None


def make_ssl_context(ca_file: Path | None, insecure: bool) -> ssl.SSLContext:
    """Verified TLS by default: the system trust store (SSL_CERT_FILE honoured) or ``ca_file``."""
    if insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {ca_file}: {exc}") from None
    else:
        context = ssl.create_default_context()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.sslsocket_class = BufferedTlsSocket
    return context


#: endpoint kind -> (module, class) of the store that serves it; imported only when used.
_STORES = {
    "imap": ("migrator.stores.imap", "ImapStore"),
    "pop3": ("migrator.stores.pop3", "Pop3Store"),
    "mbox": ("migrator.stores.mbox", "MboxStore"),
    "maildir": ("migrator.stores.maildir", "MaildirStore"),
}


def _store_class(kind: str, endpoint: Endpoint) -> type:
    module_name, class_name = _STORES[kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise NotSupportedError(f"{endpoint}: {kind} is not supported yet") from None
    return getattr(module, class_name)  # type: ignore[no-any-return]


def resolve_profile(endpoint: ProfileEndpoint, profile: Profile, role: str) -> ServerEndpoint:
    """The IMAP server a PROFILE:USER endpoint names: the profile's host, port and TLS."""
    server = profile.imap
    if not server.host:
        raise ConfigError(
            f"{endpoint}: the profile {profile.name} has no fixed host (each of its servers has "
            f"its own); write imaps://{endpoint.user}@HOST --{role}-profile {profile.name}"
        )
    return ServerEndpoint("imap", server.tls, endpoint.user, server.host.lower(), server.port)


def server_access(
    endpoint: ServerEndpoint, access: AccessOptions, label: str | None = None
) -> ServerAccess:
    context = None if endpoint.tls == "none" else make_ssl_context(access.ca_file, access.insecure)
    return ServerAccess(
        host=endpoint.host,
        port=endpoint.port,
        user=endpoint.user,
        tls=endpoint.tls,
        ssl_context=context,
        secret=access.secret,
        timeout=access.timeout,
        label=label or str(endpoint),
        auth=getattr(access, "auth", "password"),
    )


def open_store(endpoint: Endpoint, access: AccessOptions | None, role: str) -> Source | Target:
    """A store for ``endpoint``, not yet connected. ``role`` is "source" or "target"."""
    label = None
    profile: Profile | None = getattr(access, "profile", None)
    if isinstance(endpoint, ProfileEndpoint):
        if profile is None or profile.name != endpoint.profile:
            raise ConfigError(f"{endpoint}: the profile {endpoint.profile!r} is not loaded")
        label = str(endpoint)
        endpoint = resolve_profile(endpoint, profile, role)
    if isinstance(endpoint, ArchiveEndpoint):
        # A source archive must exist (a typo must not "copy" an empty tree); a target is made.
        store = _store_class(endpoint.kind, endpoint)(endpoint.path, create=role == "target")
    else:
        if access is None:
            raise ConfigError(f"{endpoint}: no credentials")
        quirks: dict[str, bool] = {}
        if profile is not None and endpoint.protocol == "imap":
            quirks = {"restore_seen": profile.seen_on_fetch, "gmail_ids": profile.gmail_ids}
        store = _store_class(endpoint.protocol, endpoint)(
            server_access(endpoint, access, label), **quirks
        )
    wanted = Source if role == "source" else Target
    if not isinstance(store, wanted):
        raise ConfigError(f"{endpoint}: cannot be used as a {role}")
    return store
