"""Issue 19: a broken or hostile server cannot exhaust memory, hang the run, lock the account or
reveal a secret. Each case runs migrator as a process against a small rogue server of our own
(tests/rogue.py, loopback only, bounded in time) and measures the bound: what it printed, peak
memory, wall time, logins seen by the server."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import time
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
    "RFC822.SIZE 10^30": ({"INBOX": [Message(3, message(3), claimed=10**30)]}, "impossible size"),
    "RFC822.SIZE -5": ({"INBOX": [Message(3, message(3), claimed=-5)]}, "impossible size"),
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
