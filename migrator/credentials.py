"""Where a side's password comes from, first found wins (README "Endpoints", **Passwords**):
the environment, a password file, a password command, the system keyring, a hidden prompt.

The result is a callable: stores call it at each login, so a secret is never an argument on a
command line, an attribute in a repr, or part of an error message.
"""

from __future__ import annotations

import getpass
import shlex
import subprocess
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from migrator.errors import ConfigError
from migrator.scrub import remember

KEYRING_SERVICE = "migrator"


@dataclass(frozen=True)
class SecretSources:
    side: str  # "source" or "target"
    password_file: Path | None = None
    password_cmd: str | None = None


def env_name(side: str) -> str:
    return f"MIGRATOR_{side.upper()}_PASSWORD"


def secret_provider(
    sources: SecretSources,
    label: str,
    keyring_user: str,
    env: Mapping[str, str],
    interactive: bool,
) -> Callable[[], str]:
    """A callable returning the password, resolved at first use and kept for the run (a command is
    re-run at every login, so rotating secrets work)."""
    lock = threading.Lock()
    cache: list[str] = []

    def resolve() -> str:
        side = sources.side
        if value := env.get(env_name(side)):
            return _one_line(value, env_name(side))
        if sources.password_file is not None:
            return _read_file(sources.password_file, side)
        if sources.password_cmd:
            return _run_command(sources.password_cmd, side)
        if (value := _from_keyring(keyring_user)) is not None:
            return _one_line(value, f"{label}: the keyring's password")
        if interactive:
            return _one_line(getpass.getpass(f"Password for {label}: "), "the password typed")
        raise ConfigError(
            f"{label}: no password; set {env_name(side)}, or use --{side}-password-file or "
            f"--{side}-password-cmd, or store it in the system keyring "
            f"(service {KEYRING_SERVICE!r}, user {keyring_user!r})"
        )

    def secret() -> str:
        if (
            sources.password_cmd
            and not env.get(env_name(sources.side))
            and not (sources.password_file)
        ):
            return _run_command(sources.password_cmd, sources.side)
        with lock:
            if not cache:
                cache.append(resolve())
            return cache[0]

    return secret


def _read_file(path: Path, side: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"--{side}-password-file {path}: cannot read it ({exc.strerror})"
        ) from None
    value = _one_line(text, f"--{side}-password-file {path}")
    if not value:
        raise ConfigError(f"--{side}-password-file {path}: the file is empty")
    return value


def _run_command(command: str, side: str, what: str = "password-cmd") -> str:
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--{side}-{what} could not run: {type(exc).__name__}") from None
    if done.returncode != 0:
        # Its output is not shown: it may hold half a secret.
        raise ConfigError(f"--{side}-{what} failed with exit code {done.returncode}")
    value = _one_line(done.stdout, f"--{side}-{what}")
    if not value:
        raise ConfigError(f"--{side}-{what} printed nothing")
    return value


def _one_line(value: str, where: str) -> str:
    """A secret is one line: the newline that ends a file or a command's output is dropped
    (one, as a shell's $(...) would), and any other CR, LF or NUL is refused before it can
    reach a server, where it would end the LOGIN line and start a command of its own. The
    secret is remembered for scrubbing (migrator.scrub)."""
    if value.endswith("\r\n"):
        value = value[:-2]
    elif value.endswith("\n"):
        value = value[:-1]
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(
            f"{where}: the password or token holds a line break or NUL character (more than "
            "one line?); a secret must be one line"
        )
    remember(value)
    return value


def oauth2_env_name(side: str) -> str:
    return f"MIGRATOR_{side.upper()}_OAUTH2_TOKEN"


def token_provider(
    side: str,
    token_cmd: str | None,
    env: Mapping[str, str],
    stored: Callable[[], str] | None = None,
) -> Callable[[], str] | None:
    """Where a side's OAuth2 access token comes from, first found wins: the environment
    (MIGRATOR_SOURCE_OAUTH2_TOKEN), a token command (run again at every login, so that a run
    outlives a token), the sign-in ``migrator auth login`` stored (refreshed as needed). None
    when there is none of these."""
    if value := env.get(oauth2_env_name(side)):
        token = _one_line(value.strip(), oauth2_env_name(side))
        return lambda: token
    if token_cmd:
        return lambda: _run_command(token_cmd, side, "oauth2-token-cmd")
    return stored


def _remembered(token: Callable[[], str]) -> Callable[[], str]:
    """``token``, each value it gives checked to be one line and remembered for scrubbing (a
    stored sign-in refreshes its token during a run)."""
    return lambda: _one_line(token(), "the OAuth2 access token")


def _from_keyring(user: str) -> str | None:
    try:
        import keyring
    except ImportError:
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, user)
    except Exception:  # no usable backend: the keyring is simply not a source here
        return None


OAUTH2_MECHANISMS = ("xoauth2", "oauthbearer")
AUTH_CHOICES = ("password", "plain", "login", "oauth2", *OAUTH2_MECHANISMS)


@dataclass(frozen=True)
class Login:
    """How a side logs in: the callable giving its password or access token at each login, and
    the mechanism (ServerAccess.auth)."""

    secret: Callable[[], str]
    auth: str


def choose_login(
    sources: SecretSources,
    label: str,
    keyring_user: str,
    env: Mapping[str, str],
    interactive: bool,
    *,
    token_cmd: str | None = None,
    auth: str | None = None,
    stored_token: Callable[[], str] | None = None,
    oauth_mechanism: str = "xoauth2",
    password_mechanism: str = "password",
    oauth_only: bool = False,
    sign_in: str = "",
) -> Login:
    """OAuth2 or a password, first found wins: a token given for this run (environment or token
    command); a password given for this run (environment, file, command); the sign-in `migrator
    auth login` stored (``stored_token``); then the password's keyring and prompt. ``auth``
    (--source-auth) forces one kind, and names the mechanism; ``oauth_only`` says the provider
    takes nothing but OAuth2, so that a missing token is reported as such."""
    if auth is not None and auth not in AUTH_CHOICES:
        raise ConfigError(f"--{sources.side}-auth {auth!r}: use one of {', '.join(AUTH_CHOICES)}")
    side = sources.side
    given_token = token_provider(side, token_cmd, env)
    given_password = bool(env.get(env_name(side)) or sources.password_file or sources.password_cmd)
    wants_oauth = auth in ("oauth2", *OAUTH2_MECHANISMS)
    mechanism = auth if auth in OAUTH2_MECHANISMS else oauth_mechanism
    if auth not in ("password", "plain", "login"):
        token = given_token
        if token is None and (wants_oauth or not given_password):
            token = stored_token
        if token is not None:
            return Login(_remembered(token), mechanism)
        if wants_oauth or (oauth_only and not given_password):
            raise ConfigError(
                f"{label}: no OAuth2 access token; set {oauth2_env_name(side)}, use "
                f"--{side}-oauth2-token-cmd"
                + (f", or sign in once with `{sign_in}`" if sign_in else "")
            )
    secret = secret_provider(sources, label, keyring_user, env, interactive)
    return Login(secret, auth if auth in ("plain", "login") else password_mechanism)
