"""Private, real Dovecot 2.3 servers for the integration tests and the benchmarks.

No pytest here: ``benchmarks/`` imports this module too.  Typical use::

    tmp = traversable_tempdir()                         # not pytest's tmp_path: see there
    tls = make_ca(tmp / "tls")
    with DovecotServer(tmp / "src", separator="/", tls=tls) as server:
        server.add_user("alice", "s3cret")
        client = server.client("alice", "s3cret")      # imaps, CA verified

Each server is one ``dovecot -F -c ROOT/dovecot.conf`` process, our child: SIGTERM'd by ``stop()``,
at interpreter exit, and (PR_SET_PDEATHSIG) when the thread that started it dies.  Everything it
writes lives under ROOT: config, base_dir (unless ROOT is too deep for unix socket paths, see
``_base_dir``), state_dir, the log, the passwd-files and the users' homes.  Mail is owned by an
unprivileged uid/gid (5000 by default) because Dovecot never opens mail as root.  Must run as root
(which is how the project's machines and CI run); see /work/shared/DOVECOT.md.

Ports, all on 127.0.0.1, picked free at construction:

* ``imaps_port`` / ``pop3s_port``: implicit TLS.
* ``imap_port`` / ``pop3_port``: plaintext, offering STARTTLS / STLS, unless the server was built
  with ``starttls_offered=False``; then they are the ports below.
* ``imap_nostarttls_port`` / ``pop3_nostls_port``: plaintext ports that never offer STARTTLS/STLS.
  Dovecot 2.3 cannot set ``ssl = no`` per listener, so these are served by extra login services
  (``imap-login-nostarttls``, ``pop3-login-nostls``) that run the stock ``imap-login`` /
  ``pop3-login`` binaries with ``-o ssl=no`` on their command line, in the same instance and over
  the same mail.  Every server has them, so one server can test both behaviours.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import grp
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DovecotError",
    "DovecotServer",
    "DovecotUnavailable",
    "TlsFiles",
    "check_dovecot",
    "client_ssl_context",
    "make_ca",
    "make_untrusted_ca",
    "make_wrong_host_tls",
    "traversable_tempdir",
]

SPECIAL_USE = {
    "Sent": "\\Sent",
    "Drafts": "\\Drafts",
    "Trash": "\\Trash",
    "Junk": "\\Junk",
    "Archive": "\\Archive",
}
DEFAULT_MAIL_UID = 5000
DEFAULT_MAIL_GID = 5000
_SBIN_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin")
_LIBEXEC = Path("/usr/lib/dovecot")
# Unix socket paths are limited to 108 bytes; Dovecot's longest names below base_dir are ~30 chars.
_MAX_BASE_DIR = 70


class DovecotError(RuntimeError):
    """A private Dovecot failed to start, stop or answer a doveadm command."""


class DovecotUnavailable(DovecotError):
    """Dovecot is not installed, or is a version whose configuration syntax we do not write."""


INSTALL_HINT = (
    "run the project's test command, `bash tests/run.sh`, which installs dovecot-core, "
    "dovecot-imapd and dovecot-pop3d (Dovecot 2.3, Debian 12)"
)


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = Path(d, name)
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def check_dovecot() -> tuple[int, ...]:
    """Return Dovecot's version; raise DovecotUnavailable if missing, incomplete or not 2.3."""
    exe = _which("dovecot")
    if exe is None or _which("doveadm") is None:
        raise DovecotUnavailable(f"dovecot is not installed: {INSTALL_HINT}")
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DovecotUnavailable(f"`dovecot --version` failed ({e}): {INSTALL_HINT}") from e
    m = re.match(r"\s*(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?", out)
    if not m:
        raise DovecotUnavailable(f"cannot parse `dovecot --version` output {out!r}")
    version = tuple(int(g) for g in m.groups() if g is not None)
    if version[:2] != (2, 3):
        raise DovecotUnavailable(
            f"Dovecot {out.strip()} is not supported: tests/dovecot.py writes Dovecot 2.3 "
            "configuration (2.4 changed the syntax); install Dovecot 2.3 (Debian 12's dovecot-core)"
        )
    for binary in ("imap", "pop3", "imap-login", "pop3-login"):
        if _LIBEXEC.is_dir() and not (_LIBEXEC / binary).exists():
            raise DovecotUnavailable(
                f"{_LIBEXEC / binary} is missing (dovecot-imapd / dovecot-pop3d): {INSTALL_HINT}"
            )
    return version


# --------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the CA clients trust, and the server's certificate chain and key."""

    dir: Path
    ca_file: Path  # ca.pem: the CA certificate, for clients (cafile=)
    cert_file: Path  # server.pem: leaf + chain, for ssl_cert
    key_file: Path  # server.key, for ssl_key
    ca_key_file: Path  # ca.key: the CA's private key, so make_wrong_host_tls can issue more


def _prepare_dir(dirpath: os.PathLike[str] | str) -> Path:
    d = Path(dirpath)
    d.mkdir(parents=True, exist_ok=True)
    _make_traversable(d)
    return d


def _write_leaf(d: Path, ca, hostnames: tuple[str, ...], stem: str = "server"):
    leaf = ca.issue_cert(*hostnames)
    cert_file, key_file = d / f"{stem}.pem", d / f"{stem}.key"
    with open(cert_file, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key_file))
    os.chmod(key_file, 0o600)
    os.chmod(cert_file, 0o644)
    return cert_file, key_file


def make_ca(
    dirpath: os.PathLike[str] | str, hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")
) -> TlsFiles:
    """A fresh CA (ca.pem, ca.key) and a server certificate for *hostnames* (server.pem, .key)."""
    import trustme

    d = _prepare_dir(dirpath)
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    ca.private_key_pem.write_to_path(str(d / "ca.key"))
    os.chmod(d / "ca.key", 0o600)
    os.chmod(d / "ca.pem", 0o644)
    cert_file, key_file = _write_leaf(d, ca, hostnames)
    return TlsFiles(d, d / "ca.pem", cert_file, key_file, d / "ca.key")


def make_untrusted_ca(dirpath: os.PathLike[str] | str) -> Path:
    """A CA file (untrusted-ca.pem) of a different CA, which signed nothing our servers use."""
    import trustme

    d = _prepare_dir(dirpath)
    path = d / "untrusted-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    os.chmod(path, 0o644)
    return path


def make_wrong_host_tls(
    tls: TlsFiles, dirpath: os.PathLike[str] | str, hostname: str = "wrong.example"
) -> TlsFiles:
    """A certificate for *hostname* only, signed by *tls*'s (trusted) CA.

    A server started with it is trusted but fails hostname checks for 127.0.0.1 and localhost.
    """
    import trustme

    d = _prepare_dir(dirpath)
    ca = trustme.CA.from_pem(tls.ca_file.read_bytes(), tls.ca_key_file.read_bytes())
    cert_file, key_file = _write_leaf(d, ca, (hostname,), stem="wrong-host")
    return TlsFiles(d, tls.ca_file, cert_file, key_file, tls.ca_key_file)


def client_ssl_context(ca_file: os.PathLike[str] | str) -> ssl.SSLContext:
    """A client context that verifies the server against *ca_file* (and its host name)."""
    return ssl.create_default_context(cafile=str(ca_file))


# --------------------------------------------------------------------------------------------
# helpers


def _make_traversable(path: Path) -> None:
    """chmod o+x *path* and all its parents: Dovecot's auth/login/mail processes are other users."""
    p = path.resolve()
    for d in (p, *p.parents):
        try:
            mode = d.stat().st_mode
            if not mode & 0o001:
                os.chmod(d, (mode & 0o7777) | 0o001)
        except OSError:
            pass


def traversable_tempdir(prefix: str = "dovecot-") -> Path:
    """A new 0755 directory in the system temp dir, for server roots and trees Dovecot serves.

    Not under pytest's ``tmp_path``: every pytest session that starts resets
    /tmp/pytest-of-USER to mode 0700, which locks Dovecot's processes out of the servers and
    archives of any other session still running (the mail processes then fail with "Permission
    denied ... missing +x perm: /tmp/pytest-of-root").
    """
    d = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(d, 0o755)
    return d


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _die_with_parent(parent_pid: int) -> None:
    """preexec_fn: SIGTERM the child when the thread that started it dies (Linux only)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGTERM)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


_RUNNING: set[DovecotServer] = set()  # strong references: stopped at exit even if dropped


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        with contextlib.suppress(Exception):
            server.close()


# --------------------------------------------------------------------------------------------
# the server


class DovecotServer:
    """One private Dovecot 2.3 instance under *root* (see the module docstring)."""

    host = "127.0.0.1"

    def __init__(
        self,
        root: os.PathLike[str] | str,
        *,
        separator: str = "/",
        prefix: str = "",
        mail_location: str = "maildir:~/Maildir",
        tls: TlsFiles | None = None,
        extra_conf: str = "",
        starttls_offered: bool = True,
        mail_fsync: str = "never",
        mail_uid: int = DEFAULT_MAIL_UID,
        mail_gid: int = DEFAULT_MAIL_GID,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        if separator not in ("/", "."):
            raise ValueError(f"separator must be '/' or '.', not {separator!r}")
        self.version = check_dovecot()
        if os.geteuid() != 0:
            raise DovecotUnavailable(
                "tests/dovecot.py must run as root: Dovecot switches to the mail uid "
                f"{mail_uid} and to its own dovecot/dovenull users"
            )
        self.root = Path(root).resolve()
        if any(part.startswith("pytest-of-") for part in self.root.parts):
            warnings.warn(
                f"Dovecot root {self.root} is under pytest's temp dir, which another pytest "
                "session can make untraversable (mode 0700); use traversable_tempdir() or the "
                "dovecot_tmp fixture",
                stacklevel=2,
            )
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        _make_traversable(self.root)
        self.separator = separator
        if prefix and not prefix.endswith(separator):
            raise ValueError(f"prefix {prefix!r} must end with the separator {separator!r}")
        #: The personal namespace's prefix ("INBOX." as cPanel hosts and Courier serve it).
        self.prefix = prefix
        self.mail_location = mail_location
        self.tls = tls if tls is not None else make_ca(self.root / "tls")
        self.ca_file = self.tls.ca_file
        self.extra_conf = extra_conf
        self.starttls_offered = starttls_offered
        self.mail_fsync = mail_fsync
        self.mail_uid = mail_uid
        self.mail_gid = mail_gid
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent

        self.conf_path = self.root / "dovecot.conf"
        self.log_path = self.root / "dovecot.log"
        self.stderr_path = self.root / "dovecot.stderr"
        # One passwd-file per user (ROOT/passwd.d/NAME): Dovecot re-reads a passwd-file at most
        # once per second, so a user added to a shared file right after a login is "unknown".
        self.passwd_dir = self.root / "passwd.d"
        self.state_dir = self.root / "state"
        self.home_dir = self.root / "home"
        self._short_base_dir: Path | None = None
        self.base_dir = self._base_dir()
        for d in (self.state_dir, self.home_dir):
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o755)

        self._users: dict[str, float] = {}  # name -> time its passwd-file was written
        self._homes: dict[str, Path] = {}
        self._lock = threading.RLock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr = None
        self._ever_started = False
        self._pick_ports()
        self.passwd_dir.mkdir(exist_ok=True)
        os.chmod(self.passwd_dir, 0o755)

    # -- layout ------------------------------------------------------------------------------

    def _base_dir(self) -> Path:
        base = self.root / "run"
        if len(str(base)) > _MAX_BASE_DIR:
            # Too deep for unix socket paths: a short directory instead, removed by close().
            tag = hashlib.sha1(str(self.root).encode()).hexdigest()[:12]
            self._short_base_dir = base = Path(tempfile.gettempdir(), f"dovecot-{tag}")
            (self.root / "run.path").write_text(f"{base}\n")
        return base

    def _pick_ports(self) -> None:
        ports = _free_ports(6)
        self.imaps_port, self.pop3s_port = ports[0], ports[1]
        self.imap_nostarttls_port, self.pop3_nostls_port = ports[2], ports[3]
        if self.starttls_offered:
            self.imap_port, self.pop3_port = ports[4], ports[5]
        else:
            self.imap_port, self.pop3_port = self.imap_nostarttls_port, self.pop3_nostls_port

    @property
    def ports(self) -> dict[str, int]:
        return {
            "imap": self.imap_port,
            "imaps": self.imaps_port,
            "pop3": self.pop3_port,
            "pop3s": self.pop3s_port,
            "imap-nostarttls": self.imap_nostarttls_port,
            "pop3-nostls": self.pop3_nostls_port,
        }

    def url(self, scheme: str, user: str) -> str:
        """An endpoint for the migrator CLI, e.g. ``imaps://alice@127.0.0.1:40123``."""
        return f"{scheme}://{user}@{self.host}:{self.ports[scheme]}"

    def mailbox_name(self, folder: str) -> str:
        """A '/'-separated folder name (as tests/corpus.py writes them) in this server's syntax,
        under the personal namespace's prefix (INBOX stays INBOX)."""
        if folder.upper() == "INBOX":
            return "INBOX"
        return self.prefix + folder.replace("/", self.separator)

    # -- configuration ---------------------------------------------------------------------------

    def render_conf(self) -> str:
        sep = self.separator
        special = "".join(
            f"  mailbox {name} {{\n    special_use = {flag}\n    auto = no\n  }}\n"
            for name, flag in SPECIAL_USE.items()
        )
        plain_imap = self.imap_port if self.starttls_offered else 0
        plain_pop3 = self.pop3_port if self.starttls_offered else 0
        return f"""\
# Written by tests/dovecot.py for Dovecot 2.3; private test instance, loopback only.
protocols = imap pop3
listen = {self.host}
base_dir = {self.base_dir}
state_dir = {self.state_dir}
instance_name = test-{hashlib.sha1(str(self.root).encode()).hexdigest()[:10]}
log_path = {self.log_path}
info_log_path = {self.log_path}
auth_verbose = yes
auth_failure_delay = 0

ssl = yes
ssl_cert = <{self.tls.cert_file}
ssl_key = <{self.tls.key_file}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login

mail_location = {self.mail_location}
mail_uid = {self.mail_uid}
mail_gid = {self.mail_gid}
first_valid_uid = {self.mail_uid}
first_valid_gid = {self.mail_gid}
mail_max_userip_connections = 100
mail_fsync = {self.mail_fsync}
pop3_uidl_format = %08Xu%08Xv
pop3_no_flag_updates = yes

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.passwd_dir}/%u
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {self.passwd_dir}/%u
  default_fields = uid={self.mail_uid} gid={self.mail_gid} home={self.home_dir}/%u
}}

namespace inbox {{
  inbox = yes
  separator = {sep}
  prefix = {self.prefix}
{special}}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {plain_imap}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = {self.host}
    port = {plain_pop3}
  }}
  inet_listener pop3s {{
    address = {self.host}
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
# No auth penalty (2^n s delays for failed logins from an IP, successful ones included): tests
# fail logins from 127.0.0.1 on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
# Plaintext listeners that never offer STARTTLS/STLS: 2.3 has no per-listener `ssl = no`, but a
# login service can run the stock binary with a command-line settings override.
service imap-login-nostarttls {{
  executable = imap-login -o ssl=no
  type = login
  protocol = imap
  user = $default_login_user
  chroot = login
  inet_listener imap {{
    address = {self.host}
    port = {self.imap_nostarttls_port}
  }}
}}
service pop3-login-nostls {{
  executable = pop3-login -o ssl=no
  type = login
  protocol = pop3
  user = $default_login_user
  chroot = login
  inet_listener pop3 {{
    address = {self.host}
    port = {self.pop3_nostls_port}
  }}
}}

# extra_conf (later settings override earlier ones)
{self.extra_conf}
"""

    def write_conf(self) -> None:
        self.conf_path.write_text(self.render_conf())
        os.chmod(self.conf_path, 0o644)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> DovecotServer:
        """Start ``dovecot -F``; return once the imaps port answers with a greeting."""
        with self._lock:
            if self.running:
                return self
            self.base_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.base_dir, 0o755)
            attempts = 3
            for attempt in range(attempts):
                self.write_conf()
                try:
                    self._spawn_and_wait()
                    return self
                except DovecotError as e:
                    in_use = "Address already in use" in str(e)
                    if not in_use or attempt == attempts - 1:
                        raise
                    # Another process took one of our ports between picking and binding.
                    if self._ever_started:
                        self._wait_ports_free(10)
                    else:
                        self._pick_ports()
            raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115 - closed by stop()
        parent = os.getpid()
        self._proc = subprocess.Popen(
            [_which("dovecot") or "dovecot", "-F", "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: _die_with_parent(parent)) if self.die_with_parent else None,
        )
        _RUNNING.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self._terminate(5)
            raise
        self._ever_started = True

    def _failure(self, what: str) -> DovecotError:
        return DovecotError(
            f"{what} (config {self.conf_path})\n"
            f"--- {self.stderr_path} (tail) ---\n{_tail(self.stderr_path)}\n"
            f"--- {self.log_path} (tail) ---\n{_tail(self.log_path)}"
        )

    def _wait_ready(self) -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # readiness only: the wrong-host certificate must pass too
        ctx.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + self.start_timeout
        while True:
            assert self._proc is not None
            rc = self._proc.poll()
            if rc is not None:
                raise self._failure(f"dovecot exited with status {rc} during start-up")
            try:
                with (
                    socket.create_connection((self.host, self.imaps_port), timeout=2) as raw,
                    ctx.wrap_socket(raw, server_hostname=self.host) as s,
                ):
                    s.settimeout(5)
                    if s.recv(256).startswith(b"* OK"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failure(
                    f"dovecot did not greet on imaps port {self.imaps_port} "
                    f"within {self.start_timeout:.0f}s"
                )
            time.sleep(0.05)

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._proc = None
        _RUNNING.discard(self)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _wait_ports_free(self, timeout: float) -> None:
        """Login processes may outlive the master for a moment, holding the listening sockets."""
        deadline = time.monotonic() + timeout
        for port in set(self.ports.values()):
            while not _port_bindable(port) and time.monotonic() < deadline:
                time.sleep(0.05)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the master (it stops its children) and wait; SIGKILL after *timeout*."""
        with self._lock:
            was_running = self._proc is not None
            self._terminate(timeout)
            if was_running:
                self._wait_ports_free(10)

    def restart(self) -> DovecotServer:
        """Stop and start again on the same ports with the same users and mail."""
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        """stop(), and remove the short base_dir if one was needed."""
        self.stop()
        if self._short_base_dir is not None:
            shutil.rmtree(self._short_base_dir, ignore_errors=True)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (
            f"<DovecotServer {self.root} sep={self.separator!r} prefix={self.prefix!r} "
            f"{state} ports={self.ports}>"
        )

    # -- users -------------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        password: str,
        *,
        mail: str | None = None,
        home: os.PathLike[str] | str | None = None,
    ) -> None:
        """Add (or replace) a user; takes effect at once, no restart needed.

        *mail* overrides ``mail_location`` for this user (e.g. ``"mbox:~/mail:INBOX=~/mail/inbox"``
        or ``f"maildir:{path}"``); call ``adopt(path)`` first for a tree the tests wrote.  The home
        defaults to ``ROOT/home/NAME``.  The password is stored as a SHA256 hash, so it may hold any
        character (':' and spaces included).
        """
        if not name or re.search(r"[\s:/\\\x00]", name) or name.startswith("."):
            raise ValueError(f"unusable user name {name!r}")
        if "\x00" in password or "\n" in password:
            raise ValueError("password must not contain NUL or newline")
        home_path = Path(home) if home is not None else self.home_dir / name
        home_path.mkdir(parents=True, exist_ok=True)
        os.chown(home_path, self.mail_uid, self.mail_gid)
        os.chmod(home_path, 0o700)
        _make_traversable(home_path.parent)
        digest = base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()
        extra = f"userdb_mail={mail}" if mail else ""
        # passwd-file: the extra fields come last, so they may contain ':' (rejoined by Dovecot)
        if ":" in str(home_path) or "\n" in str(home_path) + extra:
            raise ValueError("home must not contain ':', nor home or mail a newline")
        line = f"{name}:{{SHA256}}{digest}:{self.mail_uid}:{self.mail_gid}::{home_path}::{extra}"
        with self._lock:
            last = self._users.get(name)
            if last is not None:
                # Replacing: the new file must differ in mtime (whole seconds) from the old one,
                # or a passwd-file that Dovecot already cached would look unchanged.
                time.sleep(max(0.0, int(last) + 1.05 - time.time()))
            path = self.passwd_dir / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(line + "\n")
            try:
                os.chown(tmp, 0, grp.getgrnam("dovecot").gr_gid)
                os.chmod(tmp, 0o640)
            except (KeyError, OSError):
                os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            self._users[name] = time.time()
            self._homes[name] = home_path
            if last is not None:  # and let any sync Dovecot did in this second go stale
                time.sleep(max(0.0, int(self._users[name]) + 1.05 - time.time()))

    def home(self, user: str) -> Path:
        """The user's home directory (where ``~`` in a mail location points)."""
        return self._homes.get(user, self.home_dir / user)

    def adopt(self, path: os.PathLike[str] | str) -> Path:
        """Give a tree the tests wrote (e.g. an archive made by migrator, mode 0600, owned by root)
        to the mail uid/gid, and make its parents traversable, so that Dovecot can serve it."""
        p = Path(path).resolve()
        targets = [p]
        if p.is_dir():
            targets.extend(p.rglob("*"))
        for t in targets:
            os.lchown(t, self.mail_uid, self.mail_gid)
        _make_traversable(p.parent)
        return p

    # -- tools -------------------------------------------------------------------------------

    def doveadm(self, *args: str, input: bytes | str | None = None, timeout: float = 60.0) -> str:
        """Run ``doveadm -c CONF ARGS...``; return stdout; raise DovecotError on failure."""
        if not self.conf_path.exists():
            self.write_conf()
        data = input.encode() if isinstance(input, str) else input
        cmd = [_which("doveadm") or "doveadm", "-c", str(self.conf_path), *args]
        try:
            res = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise DovecotError(f"{' '.join(cmd)} timed out after {timeout}s") from e
        if res.returncode != 0:
            raise DovecotError(
                f"{' '.join(cmd)} exited {res.returncode}: "
                f"{res.stderr.decode(errors='replace').strip()}"
            )
        return res.stdout.decode(errors="replace")

    def mailbox_status(
        self,
        user: str,
        folder: str,
        fields: tuple[str, ...] = ("messages", "uidvalidity", "uidnext"),
    ) -> dict[str, int]:
        """STATUS of *folder* ('/'-separated) via doveadm, e.g. ``{"uidvalidity": 1700000000}``."""
        out = self.doveadm(
            "-f",
            "tab",
            "mailbox",
            "status",
            "-u",
            user,
            " ".join(fields),
            self.mailbox_name(folder),
        )
        lines = out.splitlines()
        if len(lines) != 2:
            raise DovecotError(
                f"unexpected `doveadm mailbox status` output for {folder!r}: {out!r}"
            )
        row = dict(zip(lines[0].split("\t"), lines[1].split("\t"), strict=True))
        return {k: int(row[k]) for k in fields}

    def uidvalidity(self, user: str, folder: str) -> int:
        return self.mailbox_status(user, folder, ("uidvalidity",))["uidvalidity"]

    def set_uidvalidity(
        self, user: str, folder: str, value: int | None = None, *, renumber: bool = False
    ) -> int:
        """Change *folder*'s UIDVALIDITY (default: old + 1), keeping its messages, flags and dates.

        ``doveadm mailbox update --uid-validity`` keeps the UIDs.  With ``renumber=True`` the
        messages are also moved out to a scratch mailbox and back, so they get new, higher UIDs, as
        after a real server rebuild.  Returns the new UIDVALIDITY.  Clients that have the folder
        selected should reconnect.
        """
        box = self.mailbox_name(folder)
        old = self.uidvalidity(user, folder)
        new = value if value is not None else old + 1
        if new == old or not 0 < new < 2**32:
            raise ValueError(f"UIDVALIDITY must differ from {old} and be in 1..2**32-1, not {new}")
        scratch = None
        if renumber:
            scratch = f"uidvalidity-scratch-{os.getpid()}-{time.monotonic_ns()}"
            self.doveadm("mailbox", "create", "-u", user, scratch)
            self.doveadm("move", "-u", user, scratch, "mailbox", box, "all")
        self.doveadm("mailbox", "update", "-u", user, "--uid-validity", str(new), box)
        if scratch is not None:
            self.doveadm("move", "-u", user, box, "mailbox", scratch, "all")
            self.doveadm("mailbox", "delete", "-u", user, scratch)
        got = self.uidvalidity(user, folder)
        if got != new:
            raise DovecotError(f"UIDVALIDITY of {folder!r} is {got} after setting it to {new}")
        return new

    def ssl_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.ca_file)

    def client(self, user: str, password: str, *, timeout: float = 30.0):
        """An ``imapclient.IMAPClient`` logged in over imaps, certificate and host verified."""
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

    def pop3(self, user: str, password: str, *, timeout: float = 30.0):
        """A ``poplib.POP3_SSL`` logged in over pop3s, certificate and host verified."""
        import poplib

        p = poplib.POP3_SSL(self.host, self.pop3s_port, context=self.ssl_context(), timeout=timeout)
        try:
            p.user(user)
            p.pass_(password)
        except BaseException:
            with contextlib.suppress(Exception):
                p.close()
            raise
        return p

    def log_text(self) -> str:
        """The whole Dovecot log (and anything the master printed on stderr)."""
        parts = []
        for p in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                parts.append(p.read_text(errors="replace"))
        return "".join(parts)
