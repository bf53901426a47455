"""``store_kind``: every store the contract suite holds to its promises, one parameter each.

memory, mbox and maildir need nothing; the servers are the integration tests' session fixtures
(tests/integration/conftest.py, imported below), started once and only when a test of theirs
runs: IMAP on each server of the server matrix (two Dovecots, two Cyrus namespaces) and POP3 on
Dovecot (a source only). Cyrus is skipped, with the reason, when it is not installed (``bash
tests/run.sh`` installs it). Each test gets new users and new directories, so the tests are
independent of one another. A new store or server is one more entry in KINDS.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.contract.kinds import (
    ImapKind,
    MaildirKind,
    MboxKind,
    MemoryKind,
    Pop3Kind,
    ServerKind,
    StoreKind,
)
from tests.cyrus import CyrusUnavailable, check_cyrus
from tests.integration.conftest import (  # noqa: F401  (fixtures, shared with the integration tests)
    account,
    cyrus_alt,
    cyrus_standard,
    dovecot_prefixed,
    dovecot_root,
    dovecot_target,
    tls_files,
)


def _memory(request: pytest.FixtureRequest, tmp: Path) -> StoreKind:
    return MemoryKind()


def _mbox(request: pytest.FixtureRequest, tmp: Path) -> StoreKind:
    return MboxKind(tmp)


def _maildir(request: pytest.FixtureRequest, tmp: Path) -> StoreKind:
    return MaildirKind(tmp)


def _imap(fixture: str) -> Callable[[pytest.FixtureRequest, Path], StoreKind]:
    """IMAP on the session's server ``fixture`` (tests/integration/conftest.py)."""

    def make(request: pytest.FixtureRequest, tmp: Path) -> StoreKind:
        if fixture.startswith("cyrus"):
            reason = _cyrus_missing()
            if reason is not None:
                pytest.skip(f"IMAP on Cyrus: {reason}")
        server = request.getfixturevalue(fixture)
        return ImapKind(f"IMAP on {fixture}", server, request.getfixturevalue("account"))

    return make


def _pop3_dovecot(request: pytest.FixtureRequest, tmp: Path) -> StoreKind:
    server = request.getfixturevalue("dovecot_target")
    return Pop3Kind("pop3-dovecot", server, request.getfixturevalue("account"))


@functools.cache
def _cyrus_missing() -> str | None:
    """Why Cyrus cannot run here (asked once a session), or None."""
    try:
        check_cyrus()
    except CyrusUnavailable as exc:
        return str(exc)
    return None


#: Every kind of store by name: its class (what it promises) and how to make it.
KINDS: dict[str, tuple[type[StoreKind], Callable[[pytest.FixtureRequest, Path], StoreKind]]] = {
    "memory": (MemoryKind, _memory),
    "mbox": (MboxKind, _mbox),
    "maildir": (MaildirKind, _maildir),
    # The server matrix: Dovecot without a namespace prefix ('.') and with "INBOX." ('.'),
    # Cyrus with altnamespace no ("INBOX." and '.') and yes ('' and '/').
    "imap-dovecot": (ImapKind, _imap("dovecot_target")),
    "imap-dovecot-prefixed": (ImapKind, _imap("dovecot_prefixed")),
    "imap-cyrus": (ImapKind, _imap("cyrus_standard")),
    "imap-cyrus-alt": (ImapKind, _imap("cyrus_alt")),
    "pop3-dovecot": (Pop3Kind, _pop3_dovecot),
}
#: The fixtures a promise asks for, and which kinds of store each runs over.
ROLES: dict[str, Callable[[type[StoreKind]], bool]] = {
    "store_kind": lambda kind: True,
    "target_kind": lambda kind: kind.target,
    "deleting_kind": lambda kind: kind.can_delete,
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each promise over every kind of store that makes it (servers marked ``dovecot``)."""
    for fixture, makes in ROLES.items():
        if fixture in metafunc.fixturenames:
            params = [
                pytest.param(
                    name,
                    id=name,
                    marks=[pytest.mark.dovecot] if issubclass(cls, ServerKind) else [],
                )
                for name, (cls, _) in KINDS.items()
                if makes(cls)
            ]
            metafunc.parametrize(fixture, params, indirect=True)


def _kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    return KINDS[request.param][1](request, tmp_path)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    """Any kind of store, as a source (see tests/contract/kinds.py)."""
    return _kind(request, tmp_path)


@pytest.fixture
def target_kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    """A kind of store that is a target too."""
    return _kind(request, tmp_path)


@pytest.fixture
def deleting_kind(request: pytest.FixtureRequest, tmp_path: Path) -> StoreKind:
    """A kind of store that deletes source messages."""
    return _kind(request, tmp_path)
