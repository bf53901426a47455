"""Issue 8: security. Certificates are verified (IMAP and POP3), TLS is never silently dropped,
secrets never show (argv, output, --debug tracebacks, log file, journal, archives), private files
are 0600, and --delete-source deletes only what the target confirmed and the journal committed.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import Msg, make_message, message_date, seed_imap, snapshot_imap
from tests.dovecot import DovecotServer, make_untrusted_ca, make_wrong_host_tls
from tests.faultproxy import FaultProxy
from tests.integration.jobs import base_env, migrator_cmd
from tests.integration.test_faults import small_corpus

#: Passwords with characters that quoting, escaping and encoding all treat differently.
SRC_SECRET = 'Src-s3cr3t "quoted" \\ $HOME ä€ 7f1c'
DST_SECRET = "Dst-p4ss'word %s {x} ü 9e2d"
WRONG_SECRET = "Wrong-guess-c0ffee ß"
TOKEN = "ya29.OAuth-token-5e9a8c7b6d"


def _forms(secret: str, user: str = "") -> list[bytes]:
    """The ways a secret could show: as it is, escaped (repr/JSON), base64 (SASL PLAIN,
    XOAUTH2), percent-encoded."""
    from urllib.parse import quote

    raw = secret.encode()
    forms = [
        raw,
        ascii(secret)[1:-1].encode(),
        json.dumps(secret)[1:-1].encode(),
        quote(secret).encode(),
        base64.b64encode(raw),
    ]
    if user:
        forms.append(base64.b64encode(b"\0" + user.encode() + b"\0" + raw))
        forms.append(base64.b64encode(f"user={user}\x01auth=Bearer {secret}\x01\x01".encode()))
    # a long enough slice of the secret alone is still a leak
    forms.append(raw[: max(8, len(raw) // 2)])
    return forms


class Leaks:
    """Everything a run produced, searched for every secret."""

    def __init__(self, secrets: list[tuple[str, str]]) -> None:
        self.secrets = secrets
        self.checked = 0
        self.where: list[str] = []

    def search(self, what: str, data: bytes) -> None:
        self.checked += 1
        for secret, user in self.secrets:
            for form in _forms(secret, user):
                if form and form in data:
                    self.where.append(f"{what}: {form[:12]!r}...")

    def search_tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.search(str(path), path.read_bytes())


@pytest.fixture
def accounts(account, dovecot_source, dovecot_target):
    src = account(dovecot_source)
    dst = account(dovecot_target)
    seed_imap(src.client(), small_corpus(31, 40, ("INBOX", "Archive")), "/")
    # our own passwords, full of awkward characters (non-ASCII: migrator logs in with SASL
    # PLAIN then; the tests' own imaplib clients cannot, so they are done before)
    dovecot_source.add_user(src.user, SRC_SECRET)
    dovecot_target.add_user(dst.user, DST_SECRET)
    src.password, dst.password = SRC_SECRET, DST_SECRET
    return src, dst


def _run(
    args: list[str], env: dict[str, str], leaks: Leaks, label: str, expect: int | tuple[int, ...]
) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        migrator_cmd(*args, "--debug"),
        env=env,
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    leaks.search(f"{label} stdout", result.stdout)
    leaks.search(f"{label} stderr", result.stderr)
    wanted = expect if isinstance(expect, tuple) else (expect,)
    assert result.returncode in wanted, (label, result.returncode, result.stderr.decode())
    return result


def test_no_secret_in_any_output_file_or_journal_of_any_command(accounts, tmp_path, dovecot_tmp):
    src, dst = accounts
    work = dovecot_tmp / "work"
    work.mkdir()
    leaks = Leaks([(SRC_SECRET, src.user), (DST_SECRET, dst.user), (WRONG_SECRET, src.user)])
    leaks.secrets.append((TOKEN, src.user))
    ca = str(src.server.ca_file)
    env = base_env(MIGRATOR_SOURCE_PASSWORD=SRC_SECRET)
    pwfile = tmp_path / "dst-password"
    pwfile.write_text(DST_SECRET + "\n")
    pwcmd = tmp_path / "pw.sh"
    pwcmd.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SRC_SECRET}\nEOF\n")
    pwcmd.chmod(0o700)
    s_url, d_url = src.url(), dst.url()
    pop = src.url("pop3s")
    state = work / "j.sqlite"
    log = work / "run.log"
    both = ["--source-ca-file", ca, "--target-ca-file", ca]
    target_pw = ["--target-password-file", str(pwfile)]

    # -- success, every command --------------------------------------------------------------
    _run(
        ["copy", s_url, d_url, "--state", str(state), "--log-file", str(log), *both, *target_pw],
        env, leaks, "copy imap->imap", 0,
    )  # fmt: skip
    _run(
        ["copy", s_url, f"mbox:{work / 'mbox'}", "--state", str(work / "m.sqlite"),
         "--source-password-cmd", str(pwcmd), "--source-ca-file", ca, "--log-file", str(log),
         "--json"],
        base_env(), leaks, "copy imap->mbox (password command)", 0,
    )  # fmt: skip
    _run(
        ["copy", pop, f"maildir:{work / 'maildir'}", "--state", str(work / "p.sqlite"),
         "--source-ca-file", ca, "--log-file", str(log)],
        env, leaks, "copy pop3s->maildir", 0,
    )  # fmt: skip
    _run(["verify", s_url, d_url, *both, *target_pw], env, leaks, "verify", 0)
    _run(["folders", s_url, "--ca-file", ca, "--json"], env, leaks, "folders", 0)
    _run(["status", "--state", str(state)], env, leaks, "status", 0)
    _run(["check", s_url, "--ca-file", ca], env, leaks, "check imap", 0)
    _run(["check", pop, "--ca-file", ca], env, leaks, "check pop3", 0)

    # -- failures, every command ---------------------------------------------------------------
    wrong = base_env(MIGRATOR_SOURCE_PASSWORD=WRONG_SECRET, MIGRATOR_TARGET_PASSWORD=WRONG_SECRET)
    _run(["copy", s_url, d_url, "--state", str(work / "w.sqlite"), "--log-file", str(log),
          *both], wrong, leaks, "copy, wrong password", 3)  # fmt: skip
    _run(["verify", s_url, d_url, *both], wrong, leaks, "verify, wrong password", 3)
    _run(["folders", s_url, "--ca-file", ca], wrong, leaks, "folders, wrong password", 3)
    _run(["check", s_url, "--ca-file", ca], wrong, leaks, "check imap, wrong password", 3)
    _run(["check", pop, "--ca-file", ca], wrong, leaks, "check pop3, wrong password", 3)
    _run(["status", "--state", str(work / "none.sqlite")], env, leaks, "status, no journal", 2)
    closed = f"imaps://{src.user}@127.0.0.1:1"
    _run(["copy", closed, d_url, "--state", str(work / "c.sqlite"), *both, *target_pw],
         env, leaks, "copy, connection refused", 3)  # fmt: skip
    untrusted = str(make_untrusted_ca(tmp_path / "other"))
    _run(["check", s_url, "--ca-file", untrusted], env, leaks, "check, untrusted", 3)
    token_env = base_env(MIGRATOR_SOURCE_OAUTH2_TOKEN=TOKEN)
    _run(["check", s_url, "--ca-file", ca, "--auth", "xoauth2"], token_env, leaks,
         "check, refused OAuth2 token", (2, 3))  # fmt: skip
    # a password in the URL is refused without echoing it
    in_url = f"imaps://{src.user}:{WRONG_SECRET.replace(' ', '%20')}@127.0.0.1:1"
    _run(["check", in_url], env, leaks, "check, password in the URL", 2)
    # the connection lost mid-run, no retries left: a StoreError, and its --debug traceback
    with FaultProxy(src.server.imaps_port, lifetime=60) as proxy:
        proxy.cut_every("down", 5_000)
        cut = f"imaps://{src.user}@127.0.0.1:{proxy.port}"
        _run(["copy", cut, f"mbox:{work / 'cut'}", "--state", str(work / "cut.sqlite"),
              "--source-ca-file", ca, "--retries", "0", "--log-file", str(log)],
             env, leaks, "copy, connection lost", (1, 3))  # fmt: skip

    # -- every file it wrote: journals (and their -wal), log, archives --------------------------
    leaks.search_tree(work)
    assert (work / "j.sqlite").exists() and log.exists()
    assert not leaks.where, "\n".join(leaks.where)
    print(f"\nsecret search: {leaks.checked} outputs and files, no secret found")


def test_no_password_in_the_argv_of_a_running_migrator(accounts, tmp_path):
    src, dst = accounts
    env = base_env(MIGRATOR_TARGET_PASSWORD=DST_SECRET)
    pwcmd = tmp_path / "pw.sh"
    pwcmd.write_text(f"#!/bin/sh\ncat <<'EOF'\n{SRC_SECRET}\nEOF\n")
    pwcmd.chmod(0o700)
    with FaultProxy(dst.server.imaps_port, lifetime=60) as proxy:
        proxy.throttle("up", 20_000)
        cmd = migrator_cmd(
            "copy", src.url(), f"imaps://{dst.user}@127.0.0.1:{proxy.port}",
            "--state", str(tmp_path / "j.sqlite"), "--source-password-cmd", str(pwcmd),
            "--source-ca-file", str(src.server.ca_file),
            "--target-ca-file", str(dst.server.ca_file),
        )  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        seen = 0
        deadline = time.monotonic() + 30
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                for pid in _tree(proc.pid):
                    try:
                        argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                    except OSError:
                        continue
                    seen += 1
                    for secret in (SRC_SECRET, DST_SECRET):
                        assert secret.encode() not in argv, argv
                if proxy.forwarded["up"] > 50_000:
                    break
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.communicate()
    assert seen > 10


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for p in pids:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                pids.extend(int(c) for c in children)
        except OSError:
            continue
    return pids


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_journal_log_and_archive_files_are_private(accounts, tmp_path):
    src, _ = accounts
    env = base_env(MIGRATOR_SOURCE_PASSWORD=SRC_SECRET)
    ca = str(src.server.ca_file)
    os.umask(0o022)
    for kind in ("mbox", "maildir"):
        state = tmp_path / f"state-{kind}" / "deep" / "j.sqlite"
        log = tmp_path / f"{kind}.log"
        archive = tmp_path / f"{kind}-archive"
        result = subprocess.run(
            migrator_cmd("copy", src.url(), f"{kind}:{archive}", "--state", str(state),
                         "--source-ca-file", ca, "--log-file", str(log)),
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        journal_files = [p for p in state.parent.iterdir() if p.name.startswith("j.sqlite")]
        assert len(journal_files) >= 2  # the journal and its lock (and -wal/-shm while open)
        for path in [*journal_files, log]:
            assert _mode(path) == 0o600, (path, oct(_mode(path)))
        assert _mode(state.parent) == 0o700
        files = [p for p in archive.rglob("*") if p.is_file()]
        dirs = [archive, *(p for p in archive.rglob("*") if p.is_dir())]
        assert files
        bad = [(str(p), oct(_mode(p))) for p in files if _mode(p) != 0o600]
        bad += [(str(p), oct(_mode(p))) for p in dirs if _mode(p) != 0o700]
        assert not bad, bad


# -- certificates and TLS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def wrong_host_server(tls_files, dovecot_root):
    root = dovecot_root / "tests" / "wrong-host"
    tls = make_wrong_host_tls(tls_files, root / "tls")
    with DovecotServer(root / "srv", tls=tls) as server:
        server.add_user("alice", "alice-pw")
        yield server


def _check(url: str, password: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        migrator_cmd("check", url, *extra),
        env=base_env(MIGRATOR_SOURCE_PASSWORD=password),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def _refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("migrator: error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert any(n in errors[0] for n in needles), errors[0]
    return errors[0]


@pytest.mark.parametrize("scheme", ["imaps", "imap", "pop3s", "pop3"])
def test_untrusted_and_wrong_host_certificates_are_refused(
    scheme, account, dovecot_source, wrong_host_server, tmp_path
):
    acct = account(dovecot_source)
    untrusted = str(make_untrusted_ca(tmp_path / "other"))
    # a CA that signed nothing the server uses, and no CA option at all (system store)
    lines = [
        _refused(_check(acct.url(scheme), acct.password, "--ca-file", untrusted), "not trusted"),
        _refused(_check(acct.url(scheme), acct.password), "not trusted"),
    ]
    # a certificate from the trusted CA, for another host name
    server = wrong_host_server
    wrong = server.url(scheme, "alice")
    lines.append(
        _refused(
            _check(wrong, "alice-pw", "--ca-file", str(server.ca_file)), "not trusted", "match"
        )
    )
    assert any("wrong.example" in line or "mismatch" in line or "match" in line for line in lines)
    # and the right CA works, over TLS
    ok = _check(acct.url(scheme), acct.password, "--ca-file", str(dovecot_source.ca_file))
    assert ok.returncode == 0, ok.stderr
    if scheme.startswith("imap"):  # (POP3's check shows no more than the endpoint yet)
        assert "TLSv1." in ok.stdout, ok.stdout


@pytest.mark.parametrize("scheme", ["imap", "pop3"])
def test_never_a_silent_downgrade_to_plaintext(scheme, account, dovecot_source):
    acct = account(dovecot_source)
    port = dovecot_source.ports["imap-nostarttls" if scheme == "imap" else "pop3-nostls"]
    url = f"{scheme}://{acct.user}@127.0.0.1:{port}"
    ca = str(dovecot_source.ca_file)
    _refused(_check(url, acct.password, "--ca-file", ca), "STARTTLS", "STLS")
    # plaintext only when asked for, and then with a warning
    plain = _check(url + "?tls=none", acct.password)
    assert plain.returncode == 0, plain.stderr
    assert "warning" in plain.stderr and "in clear" in plain.stderr


# -- --delete-source ------------------------------------------------------------------------

QUOTA = """
mail_plugins = $mail_plugins quota
plugin {
  quota = count:User quota
  quota_vsizes = yes
  quota_max_mail_size = 20k
}
"""


def test_delete_source_deletes_only_what_the_target_confirmed(
    account, dovecot_source, tls_files, dovecot_root, tmp_path
):
    """The target refuses messages over 20 kB ([LIMIT]): those stay in the source, recorded as
    failed with the server's reason; every other one is deleted from the source, and only once
    the target holds it."""
    src = account(dovecot_source)
    msgs = [
        Msg("INBOX", make_message(31_000_000 + i, size=30_000 if i % 5 == 0 else None),
            ("\\Seen",), message_date(i))
        for i in range(40)
    ]  # fmt: skip
    seed_imap(src.client(), msgs, "/")
    big = {m.data for m in msgs if len(m.data) > 20_000}
    with DovecotServer(
        dovecot_root / "tests" / f"quota-{os.getpid()}", separator=".", tls=tls_files,
        extra_conf=QUOTA,
    ) as server:  # fmt: skip
        server.add_user("bob", "bob-pw")
        cmd = migrator_cmd(
            "copy", src.url(), server.url("imaps", "bob"), "--state", str(tmp_path / "j.sqlite"),
            "--source-ca-file", str(src.server.ca_file), "--target-ca-file", str(server.ca_file),
            "--delete-source", "--json",
        )  # fmt: skip
        env = base_env(MIGRATOR_SOURCE_PASSWORD=src.password, MIGRATOR_TARGET_PASSWORD="bob-pw")
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1, result.stderr  # some failed
        data = json.loads(result.stdout)
        assert data["failed"] == len(big) and data["deleted"] == len(msgs) - len(big)
        reasons = {f["reason"] for f in data["folders"][0]["failures"]}
        assert all("LIMIT" in r or "larger" in r for r in reasons), reasons
        left = snapshot_imap(src.client())["INBOX"]
        assert {s.body for s in left} == big  # exactly the refused ones stay
        held = snapshot_imap(server.client("bob", "bob-pw"))["INBOX"]
        assert {s.body for s in held} == {m.data for m in msgs} - big
        with sqlite3.connect(tmp_path / "j.sqlite") as db:
            deleted = db.execute(
                "SELECT state, count(*) FROM messages WHERE deleted=1 GROUP BY state"
            )
            assert dict(deleted.fetchall()) == {"done": len(msgs) - len(big)}
        # a rerun deletes nothing more and copies nothing twice
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert json.loads(again.stdout)["deleted"] == 0
        assert len(snapshot_imap(server.client("bob", "bob-pw"))["INBOX"]) == len(held)
    _ = Any
