"""Provider profiles: what a mail provider's servers want, as data.

A profile is one TOML file named after it (``gmail.toml`` is the profile ``gmail``): hosts, ports
and TLS for IMAP and POP3, the ways to log in, folders to skip or avoid, limits, message rules and
quirks. The shipped ones live in the repository's ``profiles/`` directory (installed with the
package as ``migrator/shipped_profiles``); a file of the same name in the user's own profiles
directory overrides them setting by setting, and a new name there adds a profile.

Every file is checked against SCHEMA; an error names the file, the setting and what is expected.
Each setting remembers where it came from (file, and the comment written after it), so that
``migrator profiles show`` can say why a number is what it is.

Standard library only (the caller passes the user's directory in).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migrator.errors import ConfigError, did_you_mean

TLS_MODES = ("implicit", "starttls")
AUTH_METHODS = ("password", "app-password", "oauth2")
MECHANISMS = ("login", "plain", "xoauth2", "oauthbearer")
OAUTH2_FLOWS = ("code", "device")
SPECIAL_KEYS = ("sent", "drafts", "trash", "junk", "archive")

_NAME = re.compile(r"^[a-z][a-z0-9._-]*$")
_HOST = re.compile(r"^[A-Za-z0-9._:-]+$")

# -- the schema -------------------------------------------------------------------------------

Check = Callable[[Any], str | None]  # None when the value is right, else what is expected


def _str(value: Any) -> str | None:
    return None if isinstance(value, str) else "a string"


def _host(value: Any) -> str | None:
    ok = isinstance(value, str) and bool(_HOST.match(value))
    return None if ok else "a host name such as imap.example.org"


def _port(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536
    return None if ok else "a port number (1-65535)"


def _positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive whole number"


def _positive_number(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive number"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _url(value: Any) -> str | None:
    ok = isinstance(value, str) and value.startswith(("https://", "http://"))
    return None if ok else "an http(s):// URL"


def _one_of(choices: Sequence[str]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)

    return check


def _list_of(item: Check, what: str) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, list) and all(item(v) is None for v in value)
        return None if ok else f"a list of {what}"

    return check


def _special(value: Any) -> str | None:
    ok = isinstance(value, dict) and all(
        k in SPECIAL_KEYS and isinstance(v, str) for k, v in value.items()
    )
    return None if ok else "a table of folder names with keys " + ", ".join(SPECIAL_KEYS)


_SERVER: dict[str, Check] = {"host": _host, "port": _port, "tls": _one_of(TLS_MODES)}

#: section -> setting -> check; top-level settings under "".
SCHEMA: dict[str, dict[str, Check]] = {
    "": {"description": _str, "website": _url},
    "imap": _SERVER,
    "pop3": _SERVER,
    "auth": {
        "methods": _list_of(_one_of(AUTH_METHODS), "of " + ", ".join(AUTH_METHODS)),
        "mechanism": _one_of(MECHANISMS),
    },
    "oauth2": {
        "authorize_url": _url,
        "token_url": _url,
        "device_url": _url,
        "scopes": _list_of(_str, "strings"),
        "flow": _one_of(OAUTH2_FLOWS),
        "client_id": _str,
    },
    "folders": {
        "skip": _list_of(_str, "folder names"),
        "all_mail": _str,
        "reserved": _list_of(_str, "folder names"),
        "special": _special,
    },
    "limits": {
        "max_message_size": _positive_int,
        "connections": _positive_int,
        "upload_bytes_per_day": _positive_int,
        "download_bytes_per_day": _positive_int,
        "bytes_per_second": _positive_int,
        "messages_per_second": _positive_number,
        "max_line_length": _positive_int,
    },
    "rules": {"bare_lf": _bool, "final_crlf": _bool, "fold_long_lines": _bool, "nul": _bool},
    "quirks": {"seen_on_fetch": _bool, "gmail_ids": _bool},
}

#: Settings a complete profile (after merging) must have.
REQUIRED = ("description", "imap.port", "imap.tls", "auth.methods")


# -- the values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    host: str | None
    port: int
    tls: str


@dataclass(frozen=True)
class OAuth2Settings:
    authorize_url: str | None
    token_url: str
    device_url: str | None
    scopes: tuple[str, ...]
    flow: str
    client_id: str | None = None


@dataclass(frozen=True)
class Limits:
    max_message_size: int | None = None
    connections: int | None = None
    upload_bytes_per_day: int | None = None
    download_bytes_per_day: int | None = None
    bytes_per_second: int | None = None
    messages_per_second: float | None = None
    max_line_length: int | None = None


@dataclass(frozen=True)
class RuleSwitches:
    bare_lf: bool = False
    final_crlf: bool = False
    fold_long_lines: bool = False
    nul: bool = False

    @property
    def any(self) -> bool:
        return self.bare_lf or self.final_crlf or self.fold_long_lines or self.nul


@dataclass(frozen=True)
class Setting:
    """One setting as `profiles show` prints it."""

    key: str  # "limits.max_message_size"
    value: Any
    source: str  # the file it was read from
    note: str  # the comment written after it, if any


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    website: str | None
    imap: ServerSettings
    pop3: ServerSettings | None
    auth_methods: tuple[str, ...]
    mechanism: str
    oauth2: OAuth2Settings | None
    skip: tuple[str, ...] = ()
    all_mail: str | None = None
    reserved: tuple[str, ...] = ()
    special: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    rules: RuleSwitches = field(default_factory=RuleSwitches)
    seen_on_fetch: bool = False
    gmail_ids: bool = False
    settings: tuple[Setting, ...] = ()
    files: tuple[Path, ...] = ()

    @property
    def oauth2_capable(self) -> bool:
        return "oauth2" in self.auth_methods and self.oauth2 is not None

    @property
    def oauth2_mechanism(self) -> str:
        """The SASL mechanism for an OAuth2 token: the profile's, when it names one."""
        return self.mechanism if self.mechanism in ("xoauth2", "oauthbearer") else "xoauth2"

    def server(self, protocol: str = "imap") -> ServerSettings:
        server = self.imap if protocol == "imap" else self.pop3
        if server is None:
            raise ConfigError(f"profile {self.name}: the provider offers no {protocol.upper()}")
        return server


# -- reading files ----------------------------------------------------------------------------


def _comment(line: str) -> str:
    """The text of a trailing '# comment' on a TOML line, ignoring '#' inside strings."""
    quote: str | None = None
    escaped = False
    for i, c in enumerate(line):
        if escaped:
            escaped = False
        elif quote:
            if c == "\\" and quote == '"':
                escaped = True
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c == "#":
            return line[i + 1 :].strip()
    return ""


_SECTION = re.compile(r"^\s*\[([A-Za-z0-9_.-]+)\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


def comments(text: str) -> dict[str, str]:
    """ "section.key" -> the comment written on the key's line."""
    notes: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if m := _SECTION.match(line):
            section = m[1]
            continue
        if m := _KEY.match(line):
            note = _comment(line)
            if note:
                notes[f"{section}.{m[1]}" if section else m[1]] = note
    return notes


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"profile {path}: cannot read it ({exc.strerror})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile {path}: not valid TOML ({exc})") from None
    validate(data, path)
    return data, comments(text)


def validate(data: Mapping[str, Any], path: Path | str) -> None:
    """Check one file's settings against SCHEMA (a user's override may hold only some)."""
    for key, value in data.items():
        if isinstance(value, dict) and key in SCHEMA and key != "":
            checks = SCHEMA[key]
            for sub, subvalue in value.items():
                if sub not in checks:
                    raise ConfigError(
                        f"profile {path}: unknown setting [{key}] {sub}; known: "
                        + ", ".join(checks)
                    )
                problem = checks[sub](subvalue)
                if problem:
                    raise ConfigError(
                        f"profile {path}: [{key}] {sub} must be {problem}, not {subvalue!r}"
                    )
        elif key in SCHEMA[""]:
            problem = SCHEMA[""][key](value)
            if problem:
                raise ConfigError(f"profile {path}: {key} must be {problem}, not {value!r}")
        elif key in SCHEMA:
            raise ConfigError(f"profile {path}: [{key}] must be a table")
        else:
            known = [*SCHEMA[""], *(f"[{s}]" for s in SCHEMA if s)]
            raise ConfigError(
                f"profile {path}: unknown setting {key!r}; known: " + ", ".join(known)
            )


def _flatten(data: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in SCHEMA and key != "":
            for sub, subvalue in value.items():
                flat[f"{key}.{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def build(
    name: str, layers: Sequence[tuple[Path, Mapping[str, Any], Mapping[str, str]]]
) -> Profile:
    """A profile from its files, later ones overriding earlier ones setting by setting."""
    flat: dict[str, Any] = {}
    origin: dict[str, tuple[Path, str]] = {}
    for path, data, notes in layers:
        for key, value in _flatten(data).items():
            flat[key] = value
            origin[key] = (path, notes.get(key, ""))
    where = layers[-1][0]
    for key in REQUIRED:
        if key not in flat:
            section, _, sub = key.rpartition(".")
            shown = f"[{section}] {sub}" if section else sub
            raise ConfigError(f"profile {where}: {shown} is missing")
    if "oauth2" in flat["auth.methods"] and "oauth2.token_url" not in flat:
        raise ConfigError(f"profile {where}: [auth] methods lists oauth2 but [oauth2] is missing")
    if flat.get("oauth2.flow") == "device" and "oauth2.device_url" not in flat:
        raise ConfigError(f"profile {where}: [oauth2] flow = 'device' needs device_url")
    code_flow = flat.get("oauth2.flow", "code") == "code" and "oauth2.token_url" in flat
    if code_flow and "oauth2.authorize_url" not in flat:
        raise ConfigError(f"profile {where}: [oauth2] flow = 'code' needs authorize_url")

    if flat.get("rules.fold_long_lines") and flat.get("limits.max_line_length", 0) < 78:
        raise ConfigError(
            f"profile {where}: [rules] fold_long_lines needs [limits] max_line_length of 78 or more"
        )

    def server(section: str) -> ServerSettings | None:
        if f"{section}.port" not in flat:
            return None
        return ServerSettings(
            flat.get(f"{section}.host"), flat[f"{section}.port"], flat.get(f"{section}.tls", "")
        )

    imap = server("imap")
    assert imap is not None
    pop3 = server("pop3")
    if pop3 is not None and not pop3.tls:
        raise ConfigError(f"profile {where}: [pop3] tls is missing")
    oauth2 = None
    if "oauth2.token_url" in flat:
        oauth2 = OAuth2Settings(
            authorize_url=flat.get("oauth2.authorize_url"),
            token_url=flat["oauth2.token_url"],
            device_url=flat.get("oauth2.device_url"),
            scopes=tuple(flat.get("oauth2.scopes", ())),
            flow=flat.get("oauth2.flow", "code"),
            client_id=flat.get("oauth2.client_id"),
        )
    limits = Limits(**{k: flat[f"limits.{k}"] for k in SCHEMA["limits"] if f"limits.{k}" in flat})
    rules = RuleSwitches(**{k: flat[f"rules.{k}"] for k in SCHEMA["rules"] if f"rules.{k}" in flat})
    settings = tuple(
        Setting(key, flat[key], str(origin[key][0]), origin[key][1]) for key in _ordered(flat)
    )
    return Profile(
        name=name,
        description=flat["description"],
        website=flat.get("website"),
        imap=imap,
        pop3=pop3,
        auth_methods=tuple(flat["auth.methods"]),
        mechanism=flat.get("auth.mechanism", "login"),
        oauth2=oauth2,
        skip=tuple(flat.get("folders.skip", ())),
        all_mail=flat.get("folders.all_mail"),
        reserved=tuple(flat.get("folders.reserved", ())),
        special=dict(flat.get("folders.special", {})),
        limits=limits,
        rules=rules,
        seen_on_fetch=bool(flat.get("quirks.seen_on_fetch", False)),
        gmail_ids=bool(flat.get("quirks.gmail_ids", False)),
        settings=settings,
        files=tuple(path for path, _, _ in layers),
    )


def _ordered(flat: Mapping[str, Any]) -> list[str]:
    order = {section: i for i, section in enumerate(SCHEMA)}

    def key(name: str) -> tuple[int, int, str]:
        section, _, sub = name.rpartition(".")
        subs = list(SCHEMA.get(section, {}))
        return (order.get(section, 99), subs.index(sub) if sub in subs else 99, name)

    return sorted(flat, key=key)


# -- the catalogue ----------------------------------------------------------------------------


def shipped_dir() -> Path:
    """Where the profiles that come with migrator are: inside the installed package, or the
    repository's ``profiles/`` when running from a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "shipped_profiles", here.parent / "profiles"):
        if candidate.is_dir():
            return candidate
    return here / "shipped_profiles"


class ProfileCatalog:
    """The shipped profiles and the user's own, by name."""

    def __init__(self, directories: Iterable[Path]) -> None:
        #: Searched in order; a later directory's file overrides an earlier one's.
        self.directories = [d for d in directories if d is not None]
        self._cache: dict[str, Profile] = {}

    def files(self, name: str) -> list[Path]:
        return [d / f"{name}.toml" for d in self.directories if (d / f"{name}.toml").is_file()]

    def names(self) -> list[str]:
        found: set[str] = set()
        for d in self.directories:
            if d.is_dir():
                found.update(p.stem for p in d.glob("*.toml"))
        return sorted(found)

    def get(self, name: str) -> Profile:
        name = name.lower()
        if name in self._cache:
            return self._cache[name]
        if not _NAME.match(name):
            raise ConfigError(f"{name!r} is not a profile name (letters, digits, '.', '-', '_')")
        files = self.files(name)
        if not files:
            raise ConfigError(
                f"unknown profile {name!r}{did_you_mean(name, self.names())}; `migrator profiles "
                "list` shows them, and your own go in "
                f"{self.directories[-1] if self.directories else 'the config directory'}"
            )
        layers = [(path, *_read(path)) for path in files]
        profile = build(name, layers)
        self._cache[name] = profile
        return profile

    def all(self) -> list[Profile]:
        return [self.get(name) for name in self.names()]

    def origin(self, name: str) -> str:
        """'shipped', 'user' or 'user (overrides shipped)', for `profiles list`."""
        files = self.files(name)
        shipped = [f for f in files if f.parent == self.directories[0]]
        if len(files) > len(shipped):
            return "user (overrides shipped)" if shipped else "user"
        return "shipped"


def load_catalog(user_dir: Path | None, shipped: Path | None = None) -> ProfileCatalog:
    """The shipped profiles, overridden by those in ``user_dir`` (the CLI passes the platform's
    config directory, e.g. ~/.config/migrator/profiles)."""
    dirs = [shipped or shipped_dir()]
    if user_dir is not None:
        dirs.append(user_dir)
    return ProfileCatalog(dirs)


# -- what a profile changes in a copy -----------------------------------------------------------


@dataclass(frozen=True)
class FolderAdjustments:
    """Extra folder selection and renaming that the two sides' profiles ask for."""

    exclude: tuple[str, ...] = ()
    include: tuple[str, ...] = ()
    renames: Mapping[str, str] = field(default_factory=dict)
    notices: tuple[str, ...] = ()


def folder_adjustments(
    source: Profile | None,
    target: Profile | None,
    include: Sequence[str],
    renames: Mapping[str, str],
    all_mail_into: str | None,
) -> FolderAdjustments:
    """Gmail-style label folders skipped (or All Mail alone copied into one folder), and folder
    names the target reserves renamed. A folder the user names with --folder or --map is never
    skipped or renamed behind their back."""
    exclude: list[str] = []
    extra_include: list[str] = []
    new_renames: dict[str, str] = {}
    notices: list[str] = []
    if all_mail_into is not None:
        if source is None or not source.all_mail:
            raise ConfigError(
                "--all-mail needs a source whose profile has an All Mail folder (gmail:USER)"
            )
        extra_include.append(source.all_mail)
        new_renames[source.all_mail] = all_mail_into
        notices.append(f"copying {source.all_mail} alone, into {all_mail_into} (--all-mail)")
    elif source is not None and source.skip:
        skipped = [name for name in source.skip if name not in include and name not in renames]
        exclude.extend(skipped)
        if skipped:
            notices.append(
                f"profile {source.name}: leaving out {', '.join(skipped[:3])}"
                + (" (and their localised names)" if len(skipped) > 3 else "")
                + "; each message is copied once per label folder (--all-mail FOLDER copies "
                "All Mail alone instead)"
            )
    if target is not None:
        for name in target.reserved:
            if name not in renames:
                new_renames[name] = f"{name} (migrated)"
    return FolderAdjustments(tuple(exclude), tuple(extra_include), new_renames, tuple(notices))
