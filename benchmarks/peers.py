"""The tools timed side by side, and the exact command line each one is run with.

Every peer copies the same source account into a fresh, empty target (a new user on the target
Dovecot, or a new mbox directory) and is then run again unchanged for the no-op rerun.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.deps import REPO
from benchmarks.verify import Compare
from tests.dovecot import DovecotServer, _which

HOST = "127.0.0.1"


@dataclass
class Setup:
    """What every peer's command is built from: the two servers and the accounts on them."""

    src: DovecotServer
    dst: DovecotServer
    ca_file: Path
    password: str
    imapsync: Path
    workers: int | None
    src_user: str = "source"
    pop_user: str = "popsource"


@dataclass(frozen=True)
class Job:
    """One peer in one round: the target user it fills and a scratch directory of its own."""

    peer: Peer
    round: int
    user: str
    dir: Path


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Peer:
    """A tool under comparison.

    needs: names of deps.check_all() entries; corpus: which source account ("imap": 8 folders,
    "pop": INBOX only, served over POP3); target: "imap", "mbox" or "none" (fetch-only);
    compare: what of each message must survive the copy.
    """

    name: str
    label: str
    needs: tuple[str, ...]
    build: Callable[[Setup, Job], Command]
    corpus: str = "imap"
    target: str = "imap"
    compare: Compare = field(default_factory=Compare)
    rerun: bool = True


def _migrator(source: Callable[[Setup], str], target: Callable[[Setup, Job], str]) -> Callable:
    """``python3 -m migrator copy SRC DST`` from this checkout, passwords in the environment."""

    def build(s: Setup, job: Job) -> Command:
        argv = [sys.executable, "-m", "migrator", "copy", source(s), target(s, job)]
        argv += ["--source-ca-file", str(s.ca_file), "--target-ca-file", str(s.ca_file)]
        argv += ["--state", str(job.dir / "state.sqlite"), "--quiet"]
        if s.workers is not None:
            argv += ["--workers", str(s.workers)]
        env = {
            "MIGRATOR_SOURCE_PASSWORD": s.password,
            "MIGRATOR_TARGET_PASSWORD": s.password,
            "PYTHONPATH": str(REPO),
        }
        return Command(argv, env)

    return build


def _imap_source(s: Setup) -> str:
    return f"imaps://{s.src_user}@{HOST}:{s.src.imaps_port}"


def _pop_source(s: Setup) -> str:
    return f"pop3s://{s.pop_user}@{HOST}:{s.src.pop3s_port}"


def _imap_target(s: Setup, job: Job) -> str:
    return f"imaps://{job.user}@{HOST}:{s.dst.imaps_port}"


def _mbox_target(s: Setup, job: Job) -> str:
    return f"mbox:{job.dir / 'mbox'}"


def _imapsync(s: Setup, job: Job) -> Command:
    """The invocation of ../shared/tools/README.md."""
    passfile = job.dir / "imapsync.pass"
    if not passfile.exists():
        passfile.write_text(s.password + "\n")
        passfile.chmod(0o600)
    tmp = job.dir / "imapsync-tmp"
    tmp.mkdir(exist_ok=True)
    argv = ["perl", str(s.imapsync), "--nodockercontext", "--nolog"]
    argv += ["--host1", HOST, "--port1", str(s.src.imaps_port), "--ssl1", "--user1", s.src_user]
    argv += ["--passfile1", str(passfile)]
    argv += ["--host2", HOST, "--port2", str(s.dst.imaps_port), "--ssl2", "--user2", job.user]
    argv += ["--passfile2", str(passfile)]
    for side in ("--sslargs1", "--sslargs2"):
        argv += [side, "SSL_verify_mode=1", side, f"SSL_ca_file={s.ca_file}"]
    argv += ["--addheader", "--syncduplicates", "--nofoldersizes", "--nofoldersizesatend"]
    argv += ["--noreleasecheck", "--tmpdir", str(tmp)]
    return Command(argv)


def _mbsync(s: Setup, job: Job) -> Command:
    """A generated mbsync config: far = source, near = target, pull everything.

    Host is ``localhost``: mbsync 1.4 checks the certificate's DNS names only (not its IP address
    entry), and the test certificate names localhost, which resolves to 127.0.0.1 here.
    CopyArrivalDate keeps INTERNALDATE; keywords are not synchronised by mbsync at all.
    """
    conf = job.dir / "mbsyncrc"
    state = job.dir / "mbsync-state"
    state.mkdir(exist_ok=True)
    accounts = [("src", s.src.imaps_port, s.src_user), ("dst", s.dst.imaps_port, job.user)]
    text = ""
    for name, port, user in accounts:
        text += (
            f"IMAPAccount {name}\nHost localhost\nPort {port}\nUser {user}\n"
            f'Pass "{s.password}"\nSSLType IMAPS\nCertificateFile {s.ca_file}\nTimeout 120\n\n'
            f"IMAPStore {name}\nAccount {name}\n\n"
        )
    text += (
        "Channel copy\nFar :src:\nNear :dst:\nPatterns *\nCreate Near\nSync Pull\n"
        f"Expunge None\nCopyArrivalDate yes\nSyncState {state}/\n"
    )
    conf.write_text(text)
    conf.chmod(0o600)
    return Command([_which("mbsync") or "mbsync", "-c", str(conf), "-q", "copy"])


def _doveadm_imapc(s: Setup, job: Job) -> Command:
    """dsync run by the target Dovecot, pulling from the source over IMAPS (imapc storage).

    The imapc settings are those of Dovecot's migration guide: rfc822.size and fetch-headers, and
    20 messages prefetched.
    """
    opts = {
        "imapc_host": HOST,
        "imapc_port": str(s.src.imaps_port),
        "imapc_ssl": "imaps",
        "imapc_ssl_verify": "yes",
        "imapc_user": s.src_user,
        "imapc_password": s.password,
        "ssl_client_ca_file": str(s.ca_file),
        "imapc_features": "rfc822.size fetch-headers",
        "mail_prefetch_count": "20",
    }
    argv = [_which("doveadm") or "doveadm", "-c", str(s.dst.conf_path)]
    for key, value in opts.items():
        argv += ["-o", f"{key}={value}"]
    return Command([*argv, "backup", "-R", "-u", job.user, "imapc:"])


def _doveadm_files(s: Setup, job: Job) -> Command:
    """dsync reading the source's Maildir directly: no IMAP, no TLS; the floor for writing."""
    maildir = s.src.home(s.src_user) / "Maildir"
    argv = [_which("doveadm") or "doveadm", "-c", str(s.dst.conf_path), "backup", "-R"]
    return Command([*argv, "-u", job.user, f"maildir:{maildir}"])


def _fetch_only(s: Setup, job: Job) -> Command:
    script = Path(__file__).with_name("fetch_only.py")
    argv = [sys.executable, str(script), HOST, str(s.src.imaps_port), s.src_user, str(s.ca_file)]
    return Command(argv, {"MIGRATOR_SOURCE_PASSWORD": s.password, "PYTHONPATH": str(REPO)})


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("migrator", "migrator", ("migrator",), _migrator(_imap_source, _imap_target)),
        Peer("imapsync", "imapsync", ("imapsync",), _imapsync),
        Peer(
            "mbsync",
            "mbsync (drops keywords)",
            ("mbsync",),
            _mbsync,
            compare=Compare(keywords=False, ignore_fields=(b"x-tuid",)),
        ),
        Peer("doveadm-imapc", "doveadm backup over imapc", (), _doveadm_imapc),
        Peer("doveadm-files", "doveadm backup from the files, no IMAP", (), _doveadm_files),
        Peer(
            "fetch-only",
            "one FETCH of every body, no writing",
            (),
            _fetch_only,
            target="none",
            rerun=False,
        ),
        Peer(
            "migrator-mbox",
            "migrator IMAP -> mbox",
            ("migrator", "mbox"),
            _migrator(_imap_source, _mbox_target),
            target="mbox",
        ),
        Peer(
            "migrator-pop3",
            "migrator POP3 -> IMAP (INBOX only)",
            ("migrator", "pop3"),
            _migrator(_pop_source, _imap_target),
            corpus="pop",
            compare=Compare(flags=False, keywords=False),
        ),
    )
}
DEFAULT_PEERS = tuple(PEERS)


def job_env(command: Command) -> dict[str, str]:
    """The environment a peer runs in: ours, without anything that could redirect its config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env.update(command.env)
    return env
