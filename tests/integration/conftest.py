"""Fixtures that run REAL private Dovecot servers (see tests/dovecot.py); no mocks.

* ``dovecot_root`` (session): the directory holding all of the below (not under pytest's temp dir).
* ``dovecot_tmp`` (function): a fresh directory Dovecot can reach (use it, not ``tmp_path``, for
  servers a test starts and for trees a test has Dovecot serve).
* ``tls_files`` (session): a CA and a certificate for localhost/127.0.0.1.
* ``dovecot_source`` (session): separator '/', maildir.
* ``dovecot_target`` (session): separator '.', maildir.
* ``dovecot_prefixed`` (session): personal namespace ``prefix = INBOX.``, separator '.' (cPanel,
  Courier and many ISPs serve mail this way).
* ``cyrus_standard`` / ``cyrus_alt`` (session): Cyrus IMAP 3.6 (tests/cyrus.py) with
  ``altnamespace: no`` (Debian's default: ``INBOX.`` and '.') and ``altnamespace: yes`` ('' and
  '/'). Without Cyrus's pieces these FAIL too: ``bash tests/run.sh`` installs them.
* ``account(server)`` (function): a fresh user with a random password on *server*, e.g.
  ``src = account(dovecot_source)``; ``src.client()`` is a logged-in IMAPClient (logged out at
  teardown), ``src.url("imaps")`` an endpoint for the CLI.

Every test in this directory is marked ``dovecot``.  Without Dovecot 2.3 the fixtures FAIL (they do
not skip): run ``bash tests/run.sh``, which installs it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:
    sys.path.insert(0, str(_REPO))

from tests.cyrus import CyrusServer, CyrusUnavailable, check_cyrus  # noqa: E402
from tests.dovecot import (  # noqa: E402
    DovecotServer,
    DovecotUnavailable,
    TlsFiles,
    check_dovecot,
    make_ca,
    traversable_tempdir,
)

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.dovecot)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """On failure, show the tail of each Dovecot log the test used (its errors explain most)."""
    report = yield
    if report.failed:
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, DovecotServer | CyrusServer):
                tail = "\n".join(value.log_text().splitlines()[-40:])
                report.sections.append((f"Dovecot log: {name} ({value.log_path})", tail))
    return report


def _require_dovecot() -> None:
    problem = None
    try:
        check_dovecot()
    except DovecotUnavailable as e:
        problem = str(e)
    if problem is not None:  # outside the except block: one clear message, no chained traceback
        pytest.fail(f"{problem}\nThe integration tests need real Dovecot servers.", pytrace=False)


@pytest.fixture(scope="session")
def dovecot_root(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A session directory (0755, in /tmp but outside pytest's temp dir: see
    ``traversable_tempdir``) holding the servers; removed at the end unless a test failed."""
    root = traversable_tempdir("migrator-tests-")
    yield root
    if request.session.testsfailed:
        print(f"\nDovecot servers' files kept for inspection: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dovecot_tmp(dovecot_root: Path, request: pytest.FixtureRequest) -> Path:
    """Like ``tmp_path``, but Dovecot can always reach it: use it for servers a test starts
    itself and for archives/maildirs a test points a Dovecot at (with ``server.adopt``)."""
    name = re.sub(r"[^\w-]", "_", request.node.name)[:40]
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=dovecot_root / "tests"))
    os.chmod(d, 0o755)
    return d


@pytest.fixture(scope="session")
def tls_files(dovecot_root: Path) -> TlsFiles:
    (dovecot_root / "tests").mkdir(exist_ok=True)
    return make_ca(dovecot_root / "tls")


def _server(root: Path, separator: str, tls: TlsFiles) -> Iterator[DovecotServer]:
    _require_dovecot()
    server = DovecotServer(root, separator=separator, tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dovecot_source(dovecot_root: Path, tls_files: TlsFiles) -> Iterator[DovecotServer]:
    yield from _server(dovecot_root / "source", "/", tls_files)


@pytest.fixture(scope="session")
def dovecot_target(dovecot_root: Path, tls_files: TlsFiles) -> Iterator[DovecotServer]:
    yield from _server(dovecot_root / "target", ".", tls_files)


@pytest.fixture(scope="session")
def dovecot_prefixed(dovecot_root: Path, tls_files: TlsFiles) -> Iterator[DovecotServer]:
    _require_dovecot()
    server = DovecotServer(dovecot_root / "prefixed", separator=".", prefix="INBOX.", tls=tls_files)
    try:
        server.start()
        yield server
    finally:
        server.close()


def _cyrus(root: Path, tls: TlsFiles, altnamespace: bool) -> Iterator[CyrusServer]:
    problem = None
    try:
        check_cyrus()
    except CyrusUnavailable as e:
        problem = str(e)
    if problem is not None:
        pytest.fail(f"{problem}\nThe server matrix needs a real Cyrus IMAP.", pytrace=False)
    server = CyrusServer(root, tls=tls, altnamespace=altnamespace)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cyrus_standard(dovecot_root: Path, tls_files: TlsFiles) -> Iterator[CyrusServer]:
    """Cyrus as Debian configures it: altnamespace no, personal prefix INBOX., separator '.'."""
    yield from _cyrus(dovecot_root / "cyrus-standard", tls_files, False)


@pytest.fixture(scope="session")
def cyrus_alt(dovecot_root: Path, tls_files: TlsFiles) -> Iterator[CyrusServer]:
    """Cyrus as upstream configures it: altnamespace yes, no prefix, separator '/'."""
    yield from _cyrus(dovecot_root / "cyrus-alt", tls_files, True)


@dataclass
class Account:
    user: str
    password: str
    server: DovecotServer | CyrusServer
    _clients: list[Any] = field(default_factory=list, repr=False)

    @property
    def separator(self) -> str:
        return self.server.separator

    @property
    def prefix(self) -> str:
        """The personal namespace prefix ("" or "INBOX.")."""
        return self.server.prefix

    def seed(self, msgs: Any) -> None:
        """tests.corpus.seed_imap in this account, under its personal namespace."""
        from tests.corpus import seed_imap

        seed_imap(self.client(), msgs, self.separator, prefix=self.prefix)

    def snapshot(self, **kwargs: Any) -> Any:
        """tests.corpus.snapshot_imap of this account's personal namespace."""
        from tests.corpus import snapshot_imap

        return snapshot_imap(self.client(), prefix=self.prefix, **kwargs)

    def client(self, **kwargs: Any) -> Any:
        """A logged-in IMAPClient over imaps (CA verified); logged out at teardown."""
        c = self.server.client(self.user, self.password, **kwargs)
        self._clients.append(c)
        return c

    def pop3(self, **kwargs: Any) -> Any:
        """A logged-in ``poplib.POP3_SSL`` (CA verified); the caller quits it."""
        return self.server.pop3(self.user, self.password, **kwargs)

    def url(self, scheme: str = "imaps") -> str:
        """``imaps://USER@127.0.0.1:PORT`` (also imap, pop3, pop3s, imap-nostarttls, ...)."""
        return self.server.url(scheme, self.user)

    def uidvalidity(self, folder: str) -> int:
        return self.server.uidvalidity(self.user, folder)

    def set_uidvalidity(self, folder: str, value: int | None = None, **kw: Any) -> int:
        return self.server.set_uidvalidity(self.user, folder, value, **kw)

    def _close(self) -> None:
        for c in self._clients:
            with contextlib.suppress(Exception):
                c.logout()
        self._clients.clear()


@pytest.fixture
def account() -> Iterator[Callable[..., Account]]:
    """Factory: ``account(server, *, mail=None, prefix="u")`` -> a new user on *server*."""
    made: list[Account] = []

    def make(
        server: DovecotServer | CyrusServer, *, mail: str | None = None, prefix: str = "u"
    ) -> Account:
        user = f"{prefix}{secrets.token_hex(6)}"
        password = secrets.token_urlsafe(12)
        server.add_user(user, password, mail=mail)
        acct = Account(user, password, server)
        made.append(acct)
        return acct

    yield make
    for acct in made:
        acct._close()
