"""Private, real Cyrus IMAP 3.6 servers for the integration tests (the server matrix).

No pytest here, like ``tests/dovecot.py``.  Typical use::

    tmp = traversable_tempdir()
    tls = make_ca(tmp / "tls")
    with CyrusServer(tmp / "cyrus", altnamespace=False, tls=tls) as server:
        server.add_user("alice", "s3cret")
        client = server.client("alice", "s3cret")      # imaps, CA verified

Each server is one ``cyrmaster -D -C ROOT/imapd.conf -M ROOT/cyrus.conf`` process, our child:
SIGTERM'd by ``stop()``, at interpreter exit, and (PR_SET_PDEATHSIG) when the thread that started
it dies.  Everything it writes lives under ROOT (configs, configdirectory, spool, sasldb, TLS key,
the master's log).  Must run as root: the master binds, then runs as the system user ``cyrus``.

What has to be installed (``bash tests/run.sh`` does it, see /work/shared/CYRUS.md): cyrus-common
(cyrmaster, ctl_cyrusdb), sasl2-bin (saslpasswd2) and ``imapd`` unpacked, not installed, from the
cyrus-imapd .deb of the same version into ``$MIGRATOR_CYRUS_CACHE`` (default
/var/cache/migrator-tests): Debian's cyrus-imapd package conflicts with dovecot-imapd.

Two configurations, as the issue's matrix asks:

* ``altnamespace=False``: Debian's own default (``altnamespace: no``, ``unixhierarchysep: no``):
  personal namespace ``INBOX.`` with '.', other users under ``user.``, shared folders at the top.
* ``altnamespace=True``: upstream's default (``yes``/``yes``): personal namespace ``""`` with '/',
  ``Other Users/`` and ``Shared Folders/``.

``munge8bit: no`` in both: by default Cyrus rewrites every 8-bit header byte to 'X' on APPEND
(a silent change of the message); the README's Servers section says so.
"""

from __future__ import annotations

import atexit
import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from tests.dovecot import (
    TlsFiles,
    _die_with_parent,
    _free_ports,
    _make_traversable,
    _tail,
    client_ssl_context,
)

__all__ = ["CyrusError", "CyrusServer", "CyrusUnavailable", "check_cyrus", "imapd_path"]

MASTER = Path("/usr/sbin/cyrmaster")
CTL_CYRUSDB = Path("/usr/lib/cyrus/bin/ctl_cyrusdb")
ADMIN = "cyrus"
#: The sasldb realm; Cyrus looks users up under its servername.
SERVERNAME = "cyrus-test"

INSTALL_HINT = (
    "run the project's test command, `bash tests/run.sh`, which installs cyrus-common, "
    "cyrus-admin and sasl2-bin and unpacks imapd from cyrus-imapd (never installing that package, "
    "which would remove dovecot-imapd)"
)


class CyrusError(RuntimeError):
    """A private Cyrus failed to start, stop or answer."""


class CyrusUnavailable(CyrusError):
    """Cyrus's pieces are not installed (see INSTALL_HINT)."""


def _cache() -> Path:
    return Path(os.environ.get("MIGRATOR_CYRUS_CACHE", "/var/cache/migrator-tests"))


def _cyrus_version() -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "cyrus-common"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise CyrusUnavailable(f"cyrus-common is not installed ({exc}): {INSTALL_HINT}") from None


def imapd_path() -> Path:
    """The unpacked imapd of cyrus-common's version (it links cyrus-common's library)."""
    return _cache() / f"cyrus-imapd-{_cyrus_version()}" / "x/usr/lib/cyrus/bin/imapd"


def check_cyrus() -> str:
    """Cyrus's version; CyrusUnavailable when a piece is missing."""
    version = _cyrus_version()
    for need in (MASTER, CTL_CYRUSDB, imapd_path()):
        if not (need.is_file() and os.access(need, os.X_OK)):
            raise CyrusUnavailable(f"{need} is missing: {INSTALL_HINT}")
    if shutil.which("saslpasswd2") is None:
        raise CyrusUnavailable(f"saslpasswd2 (sasl2-bin) is missing: {INSTALL_HINT}")
    try:
        pwd.getpwnam("cyrus")
    except KeyError:
        raise CyrusUnavailable(f"no system user 'cyrus': {INSTALL_HINT}") from None
    return version


_RUNNING: set[CyrusServer] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.stop()


class CyrusServer:
    """One private Cyrus 3.6 instance under *root* (see the module docstring)."""

    host = "127.0.0.1"

    def __init__(
        self,
        root: os.PathLike[str] | str,
        *,
        tls: TlsFiles,
        altnamespace: bool = False,
        admin_password: str = "adminpw",
        start_timeout: float = 30.0,
    ) -> None:
        if os.geteuid() != 0:
            raise CyrusUnavailable("tests/cyrus.py must run as root (cyrmaster binds, then drops)")
        self.version = check_cyrus()
        self.root = Path(root).resolve()
        self.altnamespace = altnamespace
        #: Hierarchy separator and personal namespace prefix the users see.
        self.separator = "/" if altnamespace else "."
        self.prefix = "" if altnamespace else "INBOX."
        self.admin_password = admin_password
        self.start_timeout = start_timeout
        self.tls = tls
        self.ca_file = tls.ca_file
        self.conf_path = self.root / "imapd.conf"
        self.cyrus_conf = self.root / "cyrus.conf"
        self.log_path = self.root / "master.log"
        self.sasldb = self.root / "sasldb2"
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.imap_port, self.imaps_port = _free_ports(2)
        self._layout()

    # -- layout ----------------------------------------------------------------------------------

    def _layout(self) -> None:
        root = self.root
        for d in (root, root / "conf" / "socket", root / "spool", root / "tls"):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o755)
        _make_traversable(root)
        shutil.copyfile(self.tls.cert_file, root / "tls" / "cert.pem")
        shutil.copyfile(self.tls.key_file, root / "tls" / "key.pem")
        os.chmod(root / "tls" / "cert.pem", 0o644)
        os.chmod(root / "tls" / "key.pem", 0o600)
        yes_no = "yes" if self.altnamespace else "no"
        self.conf_path.write_text(
            f"""\
# Written by tests/cyrus.py; private test instance, loopback only.
configdirectory: {root}/conf
partition-default: {root}/spool
defaultpartition: default
servername: {SERVERNAME}
admins: {ADMIN}
altnamespace: {yes_no}
unixhierarchysep: {yes_no}
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {self.sasldb}
sasl_mech_list: PLAIN LOGIN
tls_server_cert: {root}/tls/cert.pem
tls_server_key: {root}/tls/key.pem
tls_versions: tls1_2 tls1_3
munge8bit: no
delete_mode: immediate
expunge_mode: immediate
syslog_prefix: cyrus-test
"""
        )
        imapd = imapd_path()
        conf = self.conf_path
        self.cyrus_conf.write_text(
            f"""\
START {{
  recover cmd="{CTL_CYRUSDB} -C {conf} -r"
}}
SERVICES {{
  imap  cmd="{imapd} -C {conf}" listen="{self.host}:{self.imap_port}" prefork=0
  imaps cmd="{imapd} -s -C {conf}" listen="{self.host}:{self.imaps_port}" prefork=0
}}
"""
        )
        for f in (self.conf_path, self.cyrus_conf):
            os.chmod(f, 0o644)
        self._saslpasswd(ADMIN, self.admin_password)
        uid, gid = pwd.getpwnam("cyrus").pw_uid, grp.getgrnam("mail").gr_gid
        for path in (root / "conf", root / "spool", root / "tls"):
            for p in (path, *path.rglob("*")):
                os.chown(p, uid, gid)
        os.chmod(root / "conf", 0o750)
        os.chmod(root / "spool", 0o750)

    def _saslpasswd(self, user: str, password: str) -> None:
        try:
            subprocess.run(
                ["saslpasswd2", "-f", str(self.sasldb), "-u", SERVERNAME, "-c", "-p", user],
                input=password.encode(),
                capture_output=True,
                timeout=30,
                check=True,
            )
        except subprocess.CalledProcessError as exc:
            raise CyrusError(f"saslpasswd2 failed: {exc.stderr.decode(errors='replace')}") from None
        os.chown(self.sasldb, pwd.getpwnam("cyrus").pw_uid, grp.getgrnam("mail").gr_gid)
        os.chmod(self.sasldb, 0o640)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def ports(self) -> dict[str, int]:
        return {"imap": self.imap_port, "imaps": self.imaps_port}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> CyrusServer:
        with self._lock:
            if self.running:
                return self
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed by stop()
            parent = os.getpid()
            self._proc = subprocess.Popen(
                [
                    str(MASTER),
                    "-C",
                    str(self.conf_path),
                    "-M",
                    str(self.cyrus_conf),
                    "-p",
                    str(self.root / "master.pid"),
                    "-D",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: _die_with_parent(parent),
            )
            _RUNNING.add(self)
            try:
                self._wait_ready()
            except BaseException:
                self.stop()
                raise
            return self

    def _wait_ready(self) -> None:
        """Wait for the greeting, not the port: the master listens even when imapd dies."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                raise CyrusError(
                    f"cyrmaster exited with status {rc} during start-up\n{_tail(self.log_path)}"
                )
            try:
                with socket.create_connection((self.host, self.imap_port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(256).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise CyrusError(
                    f"Cyrus did not greet on port {self.imap_port} within "
                    f"{self.start_timeout:.0f}s\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master: it kills its imapd children and exits."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            _RUNNING.discard(self)
            if self._log is not None:
                self._log.close()
                self._log = None

    close = stop

    def __enter__(self) -> CyrusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<CyrusServer {self.root} altnamespace={self.altnamespace} ports={self.ports}>"

    # -- users and folders -----------------------------------------------------------------------

    def url(self, scheme: str, user: str) -> str:
        return f"{scheme}://{user}@{self.host}:{self.ports[scheme]}"

    def mailbox_name(self, folder: str) -> str:
        """A '/'-separated personal folder name (as tests/corpus.py writes them) as the user
        spells it on this server: ``Archive/2023`` is ``INBOX.Archive.2023`` under altnamespace
        no."""
        if folder.upper() == "INBOX":
            return "INBOX"
        return self.prefix + folder.replace("/", self.separator)

    def ssl_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.ca_file)

    def admin(self) -> Any:
        """An IMAPClient logged in as the admin (plaintext on loopback); the caller logs out.
        Admins always see the standard namespace: ``user.alice`` (``user/alice``)."""
        import imapclient

        c = imapclient.IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=30)
        c.login(ADMIN, self.admin_password)
        return c

    def admin_name(self, *levels: str) -> str:
        return self.separator.join(levels)

    def add_user(self, name: str, password: str, *, mail: str | None = None) -> None:
        """A user with an (empty) INBOX. (``mail`` is Dovecot's; Cyrus has one spool.)"""
        if mail is not None:
            raise ValueError("a Cyrus user's mail lives in the server's spool; no mail= here")
        self._saslpasswd(name, password)
        c = self.admin()
        try:
            c.create_folder(self.admin_name("user", name))
        finally:
            c.logout()

    def client(self, user: str, password: str, *, timeout: float = 30.0) -> Any:
        """An IMAPClient logged in over imaps, certificate and host verified."""
        import imapclient

        c = imapclient.IMAPClient(
            self.host,
            port=self.imaps_port,
            ssl=True,
            ssl_context=self.ssl_context(),
            timeout=timeout,
        )
        try:
            c.login(user, password)
        except BaseException:
            with contextlib.suppress(Exception):
                c.shutdown()
            raise
        return c

    def shared_folder(self, name: str, rights: dict[str, str]) -> None:
        """A top-level shared folder (admin-created) with exactly these ACL entries; the admin
        keeps all rights so that tests can fill it."""
        c = self.admin()
        try:
            c.create_folder(name)
            c.setacl(name, ADMIN, "lrswipkxtecda")
            c._imap.deleteacl(name, "anyone")
            for who, what in rights.items():
                c.setacl(name, who, what)
        finally:
            c.logout()

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")
        return ""
