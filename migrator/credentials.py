"""Where a side's password comes from, first found wins (SPEC.md "Credentials"):
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
            return value
        if sources.password_file is not None:
            return _read_file(sources.password_file, side)
        if sources.password_cmd:
            return _run_command(sources.password_cmd, side)
        if (value := _from_keyring(keyring_user)) is not None:
            return value
        if interactive:
            return getpass.getpass(f"Password for {label}: ")
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
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigError(f"--{side}-password-file {path}: the file is empty")
    return value


def _run_command(command: str, side: str) -> str:
    try:
        done = subprocess.run(
            shlex.split(command), capture_output=True, text=True, timeout=120, check=False
        )
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--{side}-password-cmd could not run: {type(exc).__name__}") from None
    if done.returncode != 0:
        # Its output is not shown: it may hold half a secret.
        raise ConfigError(f"--{side}-password-cmd failed with exit code {done.returncode}")
    value = done.stdout.rstrip("\r\n")
    if not value:
        raise ConfigError(f"--{side}-password-cmd printed nothing")
    return value


def _from_keyring(user: str) -> str | None:
    try:
        import keyring
    except ImportError:
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, user)
    except Exception:  # no usable backend: the keyring is simply not a source here
        return None
