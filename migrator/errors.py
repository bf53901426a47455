"""Errors graded by scope, as mbsync grades them: the engine decides what to do by the class.

- ConfigError: the user must change the command (exit 2).
- ConnectError: cannot reach or log in to a server (exit 3); never retried blindly.
- StoreError: a store failed mid-run; ``transient`` ones are retried after reconnecting (a store
  raising one has already closed the connection it lost; the next call or connect() opens anew).
- FolderError: one folder cannot be used; the run goes on with the others.
- MessageError: one message was refused; it is recorded as failed and the run goes on.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    PARTIAL = 1
    USAGE = 2
    CONNECT = 3
    INTERRUPTED = 130


class MigratorError(Exception):
    """Base class: its message is one line a user can act on."""

    exit_status = ExitStatus.PARTIAL


class ConfigError(MigratorError):
    exit_status = ExitStatus.USAGE


class NotSupportedError(ConfigError):
    """An endpoint form that this version cannot serve yet."""


class ConnectError(MigratorError):
    exit_status = ExitStatus.CONNECT


class StoreError(MigratorError):
    def __init__(
        self, message: str, *, transient: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.transient = transient or retry_after is not None
        #: Seconds the server asked us to wait before trying again ("Suggested Backoff Time").
        self.retry_after = retry_after


class FolderError(MigratorError):
    pass


class MessageError(MigratorError):
    pass


class JournalError(MigratorError):
    """The checkpoint cannot be opened or written; nothing may be copied without it."""

    exit_status = ExitStatus.USAGE


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a mistyped word most likely meant, if any is close enough."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to a mistyped word, or nothing."""
    match = closest(word, choices)
    return f" (did you mean {match!r}?)" if match else ""
