"""Issue 19: a broken or hostile server cannot exhaust memory, hang the run, lock the account or
reveal a secret. Each case runs migrator as a process against a small rogue server of our own
(tests/rogue.py, loopback only, bounded in time) and measures the bound: what it printed, peak
memory, wall time, logins seen by the server."""

from __future__ import annotations

import base64
import signal
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.jobs import base_env, migrator_cmd
from tests.integration.test_secrets import Leaks
from tests.rogue import ImapSession, Message, Pop3Session, RogueServer, message

#: ASCII (so that LOGIN and USER/PASS carry it as it is), with what quoting and escaping treat
#: differently.
SECRET = 'R0gue-s3cret "pw" \\ 9f2e'
#: Non-ASCII: SASL PLAIN carries it.
SECRET_UTF8 = "R0gue-ßecret-€ä 7c1d"
USER = "alice"


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the process's peak resident set (VmHWM)
    seconds: float


def _peak_kb(pid: int) -> int | None:
    """VmHWM of a running process: its resident peak since exec (ru_maxrss would also count
    the pages of the test process it was forked from, the rogue server's messages among them)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _measured(
    args: list[str],
    env: dict[str, str],
    timeout: float = 60,
    interrupt_after: float | None = None,
    workdir: Path | None = None,
) -> Measured:
    """Run migrator, sampling its peak memory every 10 ms, and its wall time; SIGINT after
    ``interrupt_after`` seconds; killed (and the test failed) past ``timeout``."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        out, err = Path(tmp, "out"), Path(tmp, "err")
        with out.open("wb") as o, err.open("wb") as e:
            started = time.monotonic()
            proc = subprocess.Popen(
                migrator_cmd(*args), env=env, stdout=o, stderr=e, stdin=subprocess.DEVNULL
            )
            peak = 0
            interrupted = False
            while proc.poll() is None:
                peak = max(peak, _peak_kb(proc.pid) or 0)
                took = time.monotonic() - started
                if interrupt_after is not None and not interrupted and took > interrupt_after:
                    proc.send_signal(signal.SIGINT)
                    interrupted = True
                if took > timeout:
                    proc.kill()
                    proc.wait()
                    pytest.fail(f"still running after {timeout}s: {err.read_text()[-2000:]}")
                time.sleep(0.01)
            took = time.monotonic() - started
        assert peak > 0, "the process's memory was never sampled"
        return Measured(
            proc.returncode,
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
            peak / 1024,
            took,
        )


def _run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        migrator_cmd(*args),
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


class EchoingImap(ImapSession):
    """Refuses every login, echoing what it was sent: LOGIN's arguments, AUTHENTICATE's blob
    both as sent and decoded."""

    def do_LOGIN(self, tag: bytes, args: bytes) -> None:
        self.server.logins += 1
        self.send(tag + b" NO bad password echo: " + args + b"\r\n")

    def authenticated(self, tag: bytes, blob: bytes) -> None:
        plain = base64.b64decode(blob + b"==", validate=False).replace(b"\0", b" ")
        self.send(tag + b" NO bad auth echo: " + blob + b" = " + plain + b"\r\n")


class EchoingPop3(Pop3Session):
    def do_PASS(self, args: bytes) -> None:
        self.send(b"-ERR bad password echo: " + args + b"\r\n")

    def authenticated(self, blob: bytes) -> None:
        plain = base64.b64decode(blob + b"==", validate=False).replace(b"\0", b" ")
        self.send(b"-ERR bad auth echo: " + blob + b" = " + plain + b"\r\n")


class NoSaslPop3(EchoingPop3):
    capa = (b"USER", b"UIDL", b"TOP")


CASES = [
    ("imap", EchoingImap, "plain", SECRET_UTF8),
    ("imap", EchoingImap, "login", SECRET),
    ("imap", EchoingImap, "password", SECRET),
    ("pop3", EchoingPop3, "plain", SECRET_UTF8),
    ("pop3", NoSaslPop3, "login", SECRET),
]


@pytest.mark.parametrize("debug", [False, True], ids=["plain-output", "debug"])
@pytest.mark.parametrize(("scheme", "session", "auth", "secret"), CASES)
def test_a_server_that_echoes_the_login_never_gets_the_secret_shown(
    tmp_path: Path, scheme: str, session: type, auth: str, secret: str, debug: bool
) -> None:
    pwcmd = tmp_path / "pw.sh"
    pwcmd.write_text(f"#!/bin/sh\ncat <<'EOF'\n{secret}\nEOF\n")
    pwcmd.chmod(0o700)
    work = tmp_path / "work"  # everything the run writes, searched for the secret
    work.mkdir()
    state, log = work / "j.sqlite", work / "run.log"
    with RogueServer(session, {"INBOX": [Message(1, message(1))]}, lifetime=60) as server:
        result = _run(
            [
                "copy", f"{scheme}://{USER}@127.0.0.1:{server.port}?tls=none",
                f"maildir:{work / 'out'}", "--state", str(state), "--log-file", str(log),
                "--source-password-cmd", str(pwcmd), "--source-auth", auth, "--retries", "0",
                *(["--debug"] if debug else []),
            ],
            base_env(),
        )  # fmt: skip
    assert server.logins >= 1
    assert result.returncode == 3, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "echo" in stderr and "***" in stderr, stderr  # the server's words, scrubbed
    assert "b'" not in stderr and 'b"' not in stderr, stderr  # decoded, never a bytes repr
    leaks = Leaks([(secret, USER)])
    leaks.search("stdout", result.stdout)
    leaks.search("stderr", result.stderr)
    leaks.search_tree(work)
    assert not leaks.where, "\n".join(leaks.where)


@pytest.mark.parametrize("scheme", ["imap", "pop3"])
def test_a_two_line_password_is_refused_before_any_connection(tmp_path: Path, scheme: str) -> None:
    pwcmd = tmp_path / "pw.sh"
    pwcmd.write_text("#!/bin/sh\necho first-line\necho 'A1 DELETE INBOX'\n")
    pwcmd.chmod(0o700)
    session = ImapSession if scheme == "imap" else Pop3Session
    with RogueServer(session, lifetime=30) as server:
        result = _run(
            [
                "copy", f"{scheme}://{USER}@127.0.0.1:{server.port}?tls=none",
                f"maildir:{tmp_path / 'out'}", "--state", str(tmp_path / "j.sqlite"),
                "--source-password-cmd", str(pwcmd),
            ],
            base_env(),
        )  # fmt: skip
    stderr = result.stderr.decode()
    assert result.returncode == 2, stderr
    assert server.connections == 0
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "line break" in errors[0], stderr
    assert "first-line" not in stderr and "DELETE" not in stderr


def test_the_journal_never_stores_a_secret_a_server_put_in_a_refusal(tmp_path: Path) -> None:
    """A message refused with the password in the reason: the reason is kept, scrubbed."""

    class EchoingRetr(Pop3Session):
        capa = (b"USER", b"UIDL", b"TOP")

        def do_PASS(self, args: bytes) -> None:
            self.password = args
            self.send(b"+OK logged in\r\n")

        def do_RETR(self, args: bytes) -> None:
            self.send(b"-ERR cannot read it, dear " + self.password + b"\r\n")

    state = tmp_path / "j.sqlite"
    with RogueServer(EchoingRetr, {"INBOX": [Message(1, message(1))]}, lifetime=60) as server:
        result = _run(
            [
                "copy", f"pop3://{USER}@127.0.0.1:{server.port}?tls=none",
                f"maildir:{tmp_path / 'out'}", "--state", str(state),
                "--log-file", str(tmp_path / "run.log"),
            ],
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
        )  # fmt: skip
    assert result.returncode == 1, result.stderr.decode()
    with sqlite3.connect(state) as db:
        (reason,) = db.execute("SELECT error FROM messages WHERE state='failed'").fetchone()
    assert "cannot read it, dear ***" in reason
    leaks = Leaks([(SECRET, USER)])
    leaks.search("stdout", result.stdout)
    leaks.search("stderr", result.stderr)
    leaks.search_tree(tmp_path)
    assert not leaks.where, "\n".join(leaks.where)


# -- item 6: what a target cannot hold fails one folder or one message, never the run -----------

BAD_INPUT = {
    "300-character folder name": ({"x" * 300: [Message(1, message(10))]}, "File name too long"),
    "RFC822.SIZE 10^30": ({"INBOX": [Message(3, message(3), claimed=10**30)]}, "its size as 10000"),
    "RFC822.SIZE -5": ({"INBOX": [Message(3, message(3), claimed=-5)]}, "its size as -5 bytes"),
    "keyword not UTF-8": (
        {"INBOX": [Message(3, message(3), flags=b"\\Seen caf\xe9")]},
        "is not UTF-8",
    ),
}


@pytest.mark.parametrize("target", ["mbox", "maildir"])
@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_one_bad_folder_or_message_fails_alone_and_every_rerun_finishes(
    tmp_path: Path, case: str, target: str
) -> None:
    bad, reason = BAD_INPUT[case]
    folders = {"INBOX": [Message(1, message(1)), Message(2, message(2))], "Good": []}
    folders["Good"].append(Message(1, message(5)))
    for name, messages in bad.items():
        folders[name] = folders.get(name, []) + messages
    with RogueServer(ImapSession, folders, lifetime=60) as server:
        for attempt in range(2):
            result = _run(
                [
                    "copy", f"imap://{USER}@127.0.0.1:{server.port}?tls=none",
                    f"{target}:{tmp_path / 'out'}", "--state", str(tmp_path / "j.sqlite"),
                    "--timeout", "10",
                ],
                base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            )  # fmt: skip
            stderr = result.stderr.decode()
            assert result.returncode == 1, (attempt, stderr)
            assert "internal error" not in stderr and reason in stderr + _failures(tmp_path)
            # the summary: a line for every folder, the good ones copied (then skipped)
            assert f"INBOX -> INBOX: {2 if attempt == 0 else 0} copied" in stderr, stderr
            assert f"Good -> Good: {1 if attempt == 0 else 0} copied" in stderr, stderr


def _failures(tmp_path: Path) -> str:
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        return " ".join(e for (e,) in db.execute("SELECT error FROM messages") if e)


# -- item 5: --retries bounds the logins; a failed message is not progress ----------------------


class FailsAndDrops(ImapSession):
    """Message 1 claims an impossible size (it fails at every attempt), message 2's body is cut
    off with the connection: each attempt fails one message and loses the link."""

    def send_body(self, seq: int, msg: Message) -> None:
        self.send(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, msg.uid, len(msg.body)))
        self.send(msg.body[:20])
        raise EOFError


@pytest.mark.parametrize("retries", [0, 1, 3])
def test_a_message_failing_at_every_attempt_does_not_reset_the_retries(
    tmp_path: Path, retries: int
) -> None:
    folders = {"INBOX": [Message(1, message(1), claimed=10**30), Message(2, message(2))]}
    with RogueServer(FailsAndDrops, folders, lifetime=120) as server:
        started = time.monotonic()
        result = _run(
            [
                "copy", f"imap://{USER}@127.0.0.1:{server.port}?tls=none",
                f"maildir:{tmp_path / 'out'}", "--state", str(tmp_path / "j.sqlite"),
                "--retries", str(retries), "--timeout", "10",
            ],
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=90,
        )  # fmt: skip
        took = time.monotonic() - started
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert f"gave up after {retries} reconnects" in stderr, stderr
    # one login per attempt, plus the first connection that lists the folders
    assert server.logins <= retries + 1 + 2, (server.logins, stderr)
    # backoff between attempts that moved nothing: 1 s, doubling (the first attempt listed the
    # folder, which is progress: its reconnect is immediate)
    assert took >= sum(2**n for n in range(retries - 1)), took
    print(f"\n--retries {retries}: {server.logins} logins in {took:.1f}s")


class ByeMidFetch(ImapSession):
    """Sends the first message asked for, then BYE in the middle of the FETCH, and closes at
    once (the race of item 9: the close follows the BYE immediately)."""

    def send_body(self, seq: int, msg: Message) -> None:
        if getattr(self, "sent_one", False):
            self.send(b"* BYE shutting down\r\n")
            raise EOFError
        self.sent_one = True
        super().send_body(seq, msg)


def test_bye_in_the_middle_of_a_fetch_loses_no_message(tmp_path: Path) -> None:
    folders = {"INBOX": [Message(n, message(n)) for n in range(1, 5)]}
    with RogueServer(ByeMidFetch, folders, lifetime=60) as server:
        result = _run(
            [
                "copy", f"imap://{USER}@127.0.0.1:{server.port}?tls=none",
                f"maildir:{tmp_path / 'out'}", "--state", str(tmp_path / "j.sqlite"),
                "--retries", "1", "--timeout", "10",
            ],
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
        )  # fmt: skip
    stderr = result.stderr.decode()
    # each connection moves one message: progress, so the run goes on until all are copied
    assert result.returncode == 0, stderr
    assert "INBOX -> INBOX: 4 copied" in stderr, stderr
    assert len(list((tmp_path / "out").rglob("cur/*"))) == 4
    assert server.logins <= 4 + 2


# -- items 1-4: memory bounded by what migrator decides, every wait by --timeout -----------------

PEAK_MB = 250


class EndlessOkDuringList(ImapSession):
    """Answers LIST with untagged "* OK" lines that never end (``pause`` between them)."""

    pause = 0.0

    def do_LIST(self, tag: bytes, args: bytes) -> None:
        if args.endswith(b'""'):
            super().do_LIST(tag, args)
            return
        line = b"* OK " + b"x" * 200 + b"\r\n"
        while True:
            self.send(line * (1 if self.pause else 500))
            if self.pause:
                time.sleep(self.pause)


class SlowEndlessOk(EndlessOkDuringList):
    pause = 0.01


def _imap_copy(server: RogueServer, tmp_path: Path, *extra: str) -> list[str]:
    return [
        "copy", f"imap://{USER}@127.0.0.1:{server.port}?tls=none",
        f"maildir:{tmp_path / 'out'}", "--state", str(tmp_path / "j.sqlite"), *extra,
    ]  # fmt: skip


def test_endless_untagged_responses_are_cut_off_with_bounded_memory(tmp_path: Path) -> None:
    with RogueServer(EndlessOkDuringList, lifetime=90) as server:
        run = _measured(
            _imap_copy(server, tmp_path, "--timeout", "10", "--retries", "0"),
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=60,
        )
    print(f"\nendless * OK: exit {run.returncode}, {run.peak_mb:.0f} MB, {run.seconds:.1f}s")
    assert run.returncode in (1, 3), run.stderr
    assert "untagged OK responses" in run.stderr, run.stderr
    assert run.peak_mb < PEAK_MB
    assert "internal error" not in run.stderr


def _interrupted_copy(
    tmp_path: Path, session: type[ImapSession], folders: dict[str, list[Message]] | None = None
) -> Measured:
    """A copy from ``session``'s server, Ctrl-C after 3 s: it must end with 130 within 8 more."""
    with RogueServer(session, folders, lifetime=90) as server:
        run = _measured(
            _imap_copy(server, tmp_path, "--timeout", "30"),
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=60,
            interrupt_after=3.0,
        )
    print(f"\nCtrl-C: exit {run.returncode} after {run.seconds:.1f}s, {run.peak_mb:.0f} MB")
    assert run.returncode == 130, run.stderr
    assert run.seconds < 3.0 + 8.0, run.seconds
    return run


def test_ctrl_c_ends_the_run_within_seconds_whatever_the_server_does(tmp_path: Path) -> None:
    run = _interrupted_copy(tmp_path, SlowEndlessOk)
    assert run.peak_mb < PEAK_MB


class HugeTricklingLiteral(ImapSession):
    """Message 2's body is announced as 99,999,999,999 bytes, then trickles a byte a second."""

    def send_body(self, seq: int, msg: Message) -> None:
        if msg.uid != 2:
            super().send_body(seq, msg)
            return
        self.send(b"* %d FETCH (UID %d BODY[] {99999999999}\r\n" % (seq, msg.uid))
        while True:
            self.send(b"x")
            time.sleep(1)


def test_a_literal_announced_huge_fails_its_message_without_allocating(tmp_path: Path) -> None:
    folders = {"INBOX": [Message(n, message(n)) for n in (1, 2, 3)]}
    with RogueServer(HugeTricklingLiteral, folders, lifetime=90) as server:
        run = _measured(
            _imap_copy(server, tmp_path, "--timeout", "5", "--retries", "1"),
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=60,
        )
    print(f"\n{{99999999999}}: exit {run.returncode}, {run.peak_mb:.0f} MB, {run.seconds:.1f}s")
    assert run.returncode == 1, run.stderr
    assert "INBOX -> INBOX: 2 copied, 0 skipped, 1 failed" in run.stderr, run.stderr
    assert "internal error" not in run.stderr and "MemoryError" not in run.stderr
    assert run.peak_mb < PEAK_MB
    assert run.seconds < 30
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        (reason,) = db.execute("SELECT error FROM messages WHERE state='failed'").fetchone()
    assert "99999999999 bytes" in reason


class TricklingLiteral(ImapSession):
    """A body of plausible size that comes a byte every half second."""

    def send_body(self, seq: int, msg: Message) -> None:
        self.send(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, msg.uid, len(msg.body)))
        for byte in msg.body:
            self.send(bytes([byte]))
            time.sleep(0.5)


def test_a_trickling_literal_is_bounded_by_the_timeout(tmp_path: Path) -> None:
    folders = {"INBOX": [Message(1, message(1))]}
    with RogueServer(TricklingLiteral, folders, lifetime=90) as server:
        run = _measured(
            _imap_copy(server, tmp_path, "--timeout", "2", "--retries", "1"),
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=60,
        )
    print(f"\ntrickle: exit {run.returncode} after {run.seconds:.1f}s; {server.logins} logins")
    assert run.returncode == 1, run.stderr
    assert "too slowly" in run.stderr, run.stderr
    # two attempts of about --timeout each, a 1 s backoff, LOGOUT bounded
    assert run.seconds < 25, run.seconds
    assert server.logins <= 2 + 2


def test_sizes_that_lie_do_not_size_the_batches(tmp_path: Path) -> None:
    """30 messages of 20 MB that claim RFC822.SIZE 3: fetched with bounded memory, all copied."""
    big = [message(n, 20 * 1024 * 1024) for n in range(1, 31)]
    folders = {"INBOX": [Message(n, body, claimed=3) for n, body in enumerate(big, 1)]}
    with RogueServer(ImapSession, folders, lifetime=240) as server:
        run = _measured(
            _imap_copy(server, tmp_path, "--timeout", "30"),
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=200,
            workdir=tmp_path,
        )
    print(f"\nlying sizes: exit {run.returncode}, {run.peak_mb:.0f} MB, {run.seconds:.1f}s")
    assert run.returncode == 0, run.stderr
    assert "INBOX -> INBOX: 30 copied, 0 skipped, 0 failed, 600.0 MB" in run.stderr, run.stderr
    assert len(list((tmp_path / "out").rglob("cur/*"))) == 30
    assert run.peak_mb < PEAK_MB


class EndlessRetr(Pop3Session):
    """LIST says 120 bytes; RETR streams without end and never sends the terminating "."."""

    def do_RETR(self, args: bytes) -> None:
        if int(args) != 1:
            super().do_RETR(args)
            return
        self.send(b"+OK\r\n")
        chunk = (b"y" * 1022 + b"\r\n") * 1024
        while True:
            self.send(chunk)


def test_a_pop3_retr_past_its_list_size_fails_that_message_only(tmp_path: Path) -> None:
    folders = {"INBOX": [Message(1, message(1), claimed=120), Message(2, message(2))]}
    with RogueServer(EndlessRetr, folders, lifetime=90) as server:
        run = _measured(
            [
                "copy", f"pop3://{USER}@127.0.0.1:{server.port}?tls=none",
                f"maildir:{tmp_path / 'out'}", "--state", str(tmp_path / "j.sqlite"),
                "--timeout", "10",
            ],
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
            timeout=60,
        )  # fmt: skip
    print(f"\nendless RETR: exit {run.returncode}, {run.peak_mb:.0f} MB, {run.seconds:.1f}s")
    assert run.returncode == 1, run.stderr
    assert "INBOX -> INBOX: 1 copied, 0 skipped, 1 failed" in run.stderr, run.stderr
    assert run.peak_mb < PEAK_MB


class StallingLiteral(TricklingLiteral):
    """A body that stops after its first byte, for longer than a test waits."""

    def send_body(self, seq: int, msg: Message) -> None:
        self.send(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, msg.uid, len(msg.body)))
        self.send(msg.body[:1])
        time.sleep(60)


def test_ctrl_c_during_a_stalled_fetch_ends_the_run_within_seconds(tmp_path: Path) -> None:
    folders = {"INBOX": [Message(n, message(n)) for n in (1, 2)]}
    _interrupted_copy(tmp_path, StallingLiteral, folders)
    # the journal is consistent: a rerun opens it (and is stopped by the same server)
    with sqlite3.connect(tmp_path / "j.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


# -- item 8: the smaller ones ----------------------------------------------------------------


@pytest.mark.parametrize("target", ["maildir", "mbox"])
def test_an_mbox_source_with_a_50_mb_message_stays_in_bounded_memory(
    tmp_path: Path, target: str
) -> None:
    body = message(1, 50 * 1024 * 1024).replace(b"\r\n", b"\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "INBOX").write_bytes(b"From a@b Mon Mar  4 05:06:07 2019\n" + body + b"\n")
    run = _measured(
        [
            "copy", f"mbox:{tmp_path / 'src'}", f"{target}:{tmp_path / 'out'}",
            "--state", str(tmp_path / "j.sqlite"),
        ],
        base_env(),
        timeout=120,
        workdir=tmp_path,
    )  # fmt: skip
    print(f"\nmbox, one 50 MB message -> {target}: {run.peak_mb:.0f} MB, {run.seconds:.1f}s")
    assert run.returncode == 0, run.stderr
    assert "INBOX -> INBOX: 1 copied" in run.stderr
    assert run.peak_mb < PEAK_MB


def test_a_read_only_maildir_target_names_what_cannot_be_created(tmp_path: Path) -> None:
    from tests.integration.test_resources import _remount, tmpfs

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "INBOX").write_bytes(
        b"From a@b Mon Mar  4 05:06:07 2019\n" + message(1).replace(b"\r\n", b"\n") + b"\n"
    )
    with tmpfs(tmp_path / "ro", "1m") as ro:
        (ro / "md").mkdir()  # the target exists, empty; the file system becomes read-only
        _remount(ro, "ro")
        result = _run(
            ["copy", f"mbox:{tmp_path / 'src'}", f"maildir:{ro / 'md'}",
             "--state", str(tmp_path / "j.sqlite")],
            base_env(),
        )  # fmt: skip
        _remount(ro, "rw")
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    expected = f"maildir:{ro / 'md'}: cannot create {ro / 'md' / 'cur'}: Read-only file system"
    assert f"migrator: INBOX: {expected}\n" in stderr, stderr


class RefusesStarttls(ImapSession):
    capabilities = b"IMAP4rev1 STARTTLS AUTH=PLAIN"
    answer = b"NO [UNAVAILABLE] TLS is down today"

    def do_STARTTLS(self, tag: bytes, args: bytes) -> None:
        self.send(tag + b" " + self.answer + b"\r\n")


class BadStarttls(RefusesStarttls):
    answer = b"BAD what"


@pytest.mark.parametrize("session", [RefusesStarttls, BadStarttls], ids=["NO", "BAD"])
def test_a_refused_starttls_is_said_in_the_servers_words(tmp_path: Path, session: type) -> None:
    with RogueServer(session, lifetime=30) as server:
        result = _run(
            ["check", f"imap://{USER}@127.0.0.1:{server.port}"],
            base_env(MIGRATOR_SOURCE_PASSWORD=SECRET),
        )
    stderr = result.stderr.decode()
    assert result.returncode == 3, stderr
    said = session.answer.decode()
    assert f"the server refused STARTTLS ({said}), so the password would travel" in stderr, stderr
    assert "b'" not in stderr and "connection lost" not in stderr
    assert server.logins == 0
