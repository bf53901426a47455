"""Issue 5 against real Dovecot servers: OAuth2 logins (XOAUTH2, OAUTHBEARER) through an
oauth2 passdb whose introspection URL a small HTTP server here answers; a token that expires
mid-run renewed by the token command; APPENDLIMIT failures recorded with their limit and not
retried until it changes; a throttling server ("Suggested Backoff Time") waited for; message
rules from a profile, counted, and byte-exact copies without them."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import make_corpus, make_message, seed_imap, snapshot_imap
from tests.dovecot import DovecotServer, TlsFiles
from tests.integration.jobs import Job, base_env, migrator_cmd

# -- an OAuth2 token introspection endpoint for Dovecot -----------------------------------------


class Introspection:
    """What Dovecot's oauth2 passdb asks about each token (RFC 7662, POST). A token is
    ``tok-USER-N``: active for USER unless expired here; anything else is inactive. Serves on
    127.0.0.1 and stops by itself after ``lifetime`` seconds."""

    def __init__(self, lifetime: float = 600.0) -> None:
        self.asked: list[str] = []
        self.expired: set[str] = set()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                token = form.get("token", [""])[0]
                with outer.lock:
                    outer.asked.append(token)
                    m = re.fullmatch(r"tok-([a-z0-9]+)-\d+", token)
                    ok = bool(m) and token not in outer.expired
                body = json.dumps(
                    {"active": True, "username": m[1]} if ok and m else {"active": False}
                )
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/introspect"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._timer = threading.Timer(lifetime, self.close)
        self._timer.daemon = True
        self._timer.start()

    def expire_all_seen(self) -> set[str]:
        with self.lock:
            self.expired |= set(self.asked)
            return set(self.expired)

    def close(self) -> None:
        self._timer.cancel()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def introspection() -> Iterator[Introspection]:
    service = Introspection()
    yield service
    service.close()


@pytest.fixture(scope="module")
def oauth_server(dovecot_root: Path, tls_files: TlsFiles, introspection) -> Iterator[DovecotServer]:
    root = dovecot_root / "oauth2"
    root.mkdir(exist_ok=True)
    conf = root / "oauth2.conf.ext"
    conf.write_text(
        "introspection_mode = post\n"
        f"introspection_url = {introspection.url}\n"
        "username_attribute = username\n"
        "active_attribute = active\n"
        "active_value = true\n"
    )
    os.chmod(conf, 0o644)
    extra = f"""
auth_mechanisms = plain login xoauth2 oauthbearer
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {conf}
}}
"""
    server = DovecotServer(root / "srv", separator="/", tls=tls_files, extra_conf=extra)
    server.start()
    yield server
    server.close()


def token_command(tmp: Path, user: str) -> tuple[str, Path]:
    """A command printing tok-USER-1, tok-USER-2, ... one more at each run, like a helper that
    fetches a fresh access token."""
    counter = tmp / f"{user}.count"
    script = tmp / "token.py"
    script.write_text(
        "import pathlib, sys\n"
        "user, counter = sys.argv[1], pathlib.Path(sys.argv[2])\n"
        "n = int(counter.read_text()) + 1 if counter.exists() else 1\n"
        "counter.write_text(str(n))\n"
        "print(f'tok-{user}-{n}')\n"
    )
    return f"{sys.executable} {script} {user} {counter}", counter


def oauth_job(src, dst, state: Path, **env: str) -> Job:
    job = Job.between(src, dst, state)
    job.env = base_env(**env)
    return job


def test_xoauth2_and_oauthbearer_logins_copy_everything(account, oauth_server, tmp_path):
    src, dst = account(oauth_server), account(oauth_server)
    seed_imap(src.client(), make_corpus(51, 20), "/")
    job = oauth_job(
        src,
        dst,
        tmp_path / "j.sqlite",
        MIGRATOR_SOURCE_OAUTH2_TOKEN=f"tok-{src.user}-1",
        MIGRATOR_TARGET_OAUTH2_TOKEN=f"tok-{dst.user}-1",
    )
    result = job.run("--source-auth", "xoauth2", "--target-auth", "oauthbearer")
    assert result.returncode == 0, result.stderr
    assert snapshot_imap(src.client()) == snapshot_imap(dst.client())
    log = oauth_server.log_text()
    assert f"user=<{src.user}>, method=XOAUTH2" in log
    assert f"user=<{dst.user}>, method=OAUTHBEARER" in log


def test_a_token_expiring_mid_run_is_renewed_by_the_token_command(
    account, oauth_server, introspection, tmp_path
):
    src, dst = account(oauth_server), account(oauth_server)
    msgs = make_corpus(52, 40)
    seed_imap(src.client(), msgs, "/")
    src_cmd, src_count = token_command(tmp_path, src.user)
    dst_cmd, dst_count = token_command(tmp_path, dst.user)
    job = oauth_job(src, dst, tmp_path / "j.sqlite")
    total = sum(len(m.data) for m in msgs)
    # slow enough (about 8 s) to be cut in the middle
    proc = job.start(
        "--source-oauth2-token-cmd",
        src_cmd,
        "--target-oauth2-token-cmd",
        dst_cmd,
        "--max-bytes-per-second",
        str(total // 8),
        "--workers",
        "1",
        "--retries",
        "10",
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        copied = oauth_server.mailbox_status(dst.user, "INBOX", ("messages",))["messages"]
        if copied >= 2:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the copy finished before the token could expire"
    expired = introspection.expire_all_seen()
    issued = {
        user: int(count.read_text())
        for user, count in ((src.user, src_count), (dst.user, dst_count))
    }
    for user in issued:
        assert any(t.startswith(f"tok-{user}-") for t in expired)
    oauth_server.doveadm("kick", src.user)
    oauth_server.doveadm("kick", dst.user)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err.decode()
    assert "reconnecting" in err.decode()
    # logins after the expiry used tokens the command made afterwards, and were let in
    for user, before in issued.items():
        renewed = [t for t in introspection.asked if t.startswith(f"tok-{user}-")]
        assert max(int(t.rsplit("-", 1)[1]) for t in renewed) > before
    assert snapshot_imap(src.client()) == snapshot_imap(dst.client())
    # the old tokens really are dead: only the renewed ones got the copy through
    again = oauth_job(
        src,
        dst,
        tmp_path / "k.sqlite",
        MIGRATOR_SOURCE_OAUTH2_TOKEN=min(t for t in expired if t.startswith(f"tok-{src.user}-")),
        MIGRATOR_TARGET_OAUTH2_TOKEN=min(t for t in expired if t.startswith(f"tok-{dst.user}-")),
    ).run()
    assert again.returncode == 3, again.stderr


def test_pop3_logs_in_with_an_oauth2_token_too(account, oauth_server, tmp_path):
    src = account(oauth_server)
    seed_imap(src.client(), make_corpus(55, 12, folders=("INBOX",)), "/")
    for mechanism in ("xoauth2", "oauthbearer"):
        result = subprocess.run(
            migrator_cmd(
                "copy",
                src.url("pop3s"),
                f"maildir:{tmp_path / mechanism}",
                "--state",
                str(tmp_path / f"{mechanism}.sqlite"),
                "--source-ca-file",
                str(oauth_server.ca_file),
                "--source-auth",
                mechanism,
                "--json",
            ),
            env=base_env(MIGRATOR_SOURCE_OAUTH2_TOKEN=f"tok-{src.user}-1"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["copied"] == 12
        assert f"user=<{src.user}>, method={mechanism.upper()}" in oauth_server.log_text()


def test_a_bad_token_is_one_clear_line_and_exit_3(account, oauth_server, tmp_path):
    src = account(oauth_server)
    token = "not-a-valid-token-0123456789"
    for command in ("copy", "check"):
        args = [src.url("imaps"), "--source-ca-file", str(oauth_server.ca_file)]
        if command == "copy":
            args[1:1] = [f"maildir:{tmp_path / 'out'}"]
            args += ["--state", str(tmp_path / "j.sqlite")]
        else:
            args = [args[0], "--ca-file", str(oauth_server.ca_file)]
        result = subprocess.run(
            migrator_cmd(command, *args),
            env=base_env(MIGRATOR_SOURCE_OAUTH2_TOKEN=token),
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 3, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "login failed" in lines[0] and "OAuth2 access token was refused" in lines[0]
        assert token not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr


# -- APPENDLIMIT --------------------------------------------------------------------------------


def limited_conf(appendlimit: int, refuse_over: int) -> str:
    """APPENDLIMIT advertised, and the quota plugin refusing bigger messages for real."""
    return f"""
imap_capability = +APPENDLIMIT={appendlimit}
mail_plugins = $mail_plugins quota
plugin {{
  quota = count:User quota
  quota_rule = *:storage=1G
  quota_max_mail_size = {refuse_over}
  quota_vsizes = yes
}}
"""


@pytest.fixture
def limited_target(dovecot_tmp: Path, tls_files: TlsFiles) -> Iterator[DovecotServer]:
    server = DovecotServer(
        dovecot_tmp / "limited",
        separator="/",
        tls=tls_files,
        extra_conf=limited_conf(40_000, 20_000),
    )
    server.start()
    yield server
    server.close()


def test_a_small_appendlimit_fails_each_big_message_once_until_the_limit_changes(
    account, dovecot_source, limited_target, tmp_path
):
    src, dst = account(dovecot_source), account(limited_target)
    client = src.client()
    sizes = [3_000, 30_000, 5_000, 60_000, 8_000, 30_000, 70_000, 4_000]
    for i, size in enumerate(sizes):
        client.append("INBOX", make_message(500 + i, size=size))
    small = [i for i, s in enumerate(sizes) if s <= 20_000]
    job = Job.between(src, dst, tmp_path / "j.sqlite")

    first = job.run_json(expect=1)
    assert first["copied"] == len(small) and first["failed"] == len(sizes) - len(small)
    reasons = [f["reason"] for f in first["folders"][0]["failures"]]
    # over APPENDLIMIT: refused up front; under it but over what the server takes: refused by
    # the server. Both are recorded with the limit that was in force.
    assert sum("larger than the target accepts (40000 bytes" in r for r in reasons) == 4
    assert sum("Mail size is larger" in r for r in reasons) == 2
    status = subprocess.run(
        migrator_cmd("status", "--state", str(job.state)),
        env=job.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.stdout.count("larger than the target accepts (40000 bytes") == 4

    second = job.run()
    assert second.returncode == 1, second.stderr
    assert "4 message(s) that failed for size are not retried" in second.stderr
    assert second.stdout.count("(not retried)") == 4
    assert re.search(r"^total +0 +4 +4 ", second.stdout, re.M), second.stdout
    with sqlite3.connect(job.state) as db:
        attempts = db.execute("SELECT attempts FROM messages WHERE state='failed'").fetchall()
    assert sorted(a for (a,) in attempts) == [1] * 4  # not tried again
    assert limited_target.mailbox_status(dst.user, "INBOX", ("messages",))["messages"] == 4

    limited_target.extra_conf = limited_conf(200_000, 200_000)
    limited_target.restart()
    third = job.run_json()
    assert third["copied"] == 4 and third["failed"] == 0
    assert snapshot_imap(src.client()) == snapshot_imap(dst.client())


# -- a throttling server -----------------------------------------------------------------------


class ThrottleProxy:
    """A TCP proxy in front of a plaintext IMAP port. The first ``times`` APPEND commands get
    Microsoft 365's answer, "NO Request is throttled. Suggested Backoff Time: N milliseconds",
    and never reach the server; everything else passes through. Stops by itself."""

    def __init__(
        self,
        upstream: int,
        times: int = 0,
        wait_ms: int = 0,
        lifetime: float = 300,
        rewrite: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.upstream = upstream
        self.times = times
        self.wait_ms = wait_ms
        #: Applied to every command line passed on (to play a server's quirks).
        self.rewrite = rewrite or (lambda line: line)
        self.connections = 0
        self.throttled = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.deadline = time.monotonic() + lifetime
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.listener.settimeout(0.5)
        while time.monotonic() < self.deadline:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._down, args=(server, client), daemon=True).start()
            threading.Thread(target=self._up, args=(client, server), daemon=True).start()
        self.listener.close()

    @staticmethod
    def _down(server: socket.socket, client: socket.socket) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            for s in (client, server):
                s.close()

    def _inject(self, line: bytes) -> bool:
        words = line.split(b" ", 2)
        if len(words) < 2 or words[1].upper() != b"APPEND":
            return False
        with self.lock:
            if self.throttled >= self.times:
                return False
            self.throttled += 1
            return True

    def _up(self, client: socket.socket, server: socket.socket) -> None:
        reader = client.makefile("rb")
        literal = re.compile(rb"\{(\d+)(\+?)\}\r\n$")
        try:
            while line := reader.readline():
                inject = self._inject(line)
                line = self.rewrite(line)
                parts = [line]
                while m := literal.search(parts[-1]):
                    if not m[2]:  # synchronising literal: the peer waits for "+"
                        if inject:
                            client.sendall(b"+ go ahead\r\n")
                        else:
                            server.sendall(b"".join(parts))
                            parts = []
                    parts.append(reader.read(int(m[1])))
                    parts.append(reader.readline())
                if inject:
                    tag = line.split(b" ", 1)[0]
                    client.sendall(
                        tag
                        + b" NO Request is throttled. Suggested Backoff Time: "
                        + str(self.wait_ms).encode()
                        + b" milliseconds\r\n"
                    )
                else:
                    server.sendall(b"".join(parts))
        except OSError:
            pass
        finally:
            for s in (client, server):
                s.close()

    def close(self) -> None:
        self.deadline = 0
        self.listener.close()


def test_a_throttling_server_is_waited_for_and_the_copy_finishes(
    account, dovecot_source, dovecot_target, tmp_path
):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), make_corpus(53, 40), "/")
    proxy = ThrottleProxy(dovecot_target.imap_nostarttls_port, times=2, wait_ms=1500)
    try:
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.target = f"imap://{dst.user}@127.0.0.1:{proxy.port}?tls=none"
        job.args = ["--source-ca-file", str(dovecot_source.ca_file)]
        started = time.monotonic()
        result = job.run("--workers", "1", "--retries", "0")
        elapsed = time.monotonic() - started
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert proxy.throttled == 2 and proxy.connections >= 3  # reconnected after each wait
    assert elapsed >= 3.0
    assert result.stderr.count("waiting 1.5s as asked") == 2
    assert "Suggested Backoff Time: 1500 milliseconds" in result.stderr
    assert snapshot_imap(src.client()) == snapshot_imap(dst.client())


# -- message rules ------------------------------------------------------------------------------

SIGNATURE_LINE = b"x" * 20_000


def awkward_message() -> bytes:
    """CRLF headers, a body with bare LFs, a 20,000-character line and no final line break."""
    return (
        b"Message-ID: <awkward@example.org>\r\nFrom: a@example.org\r\nTo: b@example.org\r\n"
        b"Subject: awkward\r\nDate: Mon, 1 Jan 2018 00:00:00 +0000\r\n\r\n"
        b"first line\nsecond line\r\n" + SIGNATURE_LINE + b"\r\nthe end"
    )


def maildir_with(root: Path, data: bytes) -> Path:
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "cur" / "1514764800.M1P1.test:2,S").write_bytes(data)
    return root


def rules_profile(config: Path, server: DovecotServer) -> None:
    profiles = config / "migrator" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "strictbox.toml").write_text(
        f"""description = "A Dovecot that wants what Microsoft 365 and Yahoo want"
[imap]
host = "127.0.0.1"
port = {server.imaps_port}  # the test server's imaps port
tls = "implicit"
[auth]
methods = ["password"]
[limits]
max_line_length = 998  # RFC 5322's line limit, for the test
[rules]
bare_lf = true
final_crlf = true
fold_long_lines = true
nul = true
"""
    )


def fetch_all(client: Any) -> list[bytes]:
    client.select_folder("INBOX", readonly=True)
    uids = client.search("ALL")
    return [item[b"BODY[]"] for item in client.fetch(uids, ["BODY.PEEK[]"]).values()]


def test_profile_rules_change_and_count_a_message_and_without_them_it_is_byte_exact(
    account, dovecot_target, tmp_path
):
    data = awkward_message()
    source = f"maildir:{maildir_with(tmp_path / 'Maildir', data)}"

    on = account(dovecot_target)
    rules_profile(tmp_path / "config", dovecot_target)
    job = Job(
        source,
        f"strictbox:{on.user}",
        tmp_path / "on.sqlite",
        env=base_env(
            MIGRATOR_TARGET_PASSWORD=on.password, XDG_CONFIG_HOME=str(tmp_path / "config")
        ),
        args=["--target-ca-file", str(dovecot_target.ca_file)],
    )
    result = job.run("--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["copied"] == 1 and summary["changed"] == 1
    assert summary["changes"] == {
        "bare LF to CRLF": 1,
        "long lines folded": 1,
        "final CRLF added": 1,
    }
    (landed,) = fetch_all(on.client())
    assert max(len(line) for line in landed.split(b"\r\n")) <= 998
    assert landed.endswith(b"the end\r\n")
    assert landed.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\n", b"")
    table = job.run()  # the human summary says it too (nothing left to copy)
    assert table.returncode == 0

    off = account(dovecot_target)
    plain = Job(
        source,
        off.url("imaps"),
        tmp_path / "off.sqlite",
        env=base_env(MIGRATOR_TARGET_PASSWORD=off.password),
        args=["--target-ca-file", str(dovecot_target.ca_file)],
    )
    result = plain.run("--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["changed"] == 0
    (exact,) = fetch_all(off.client())
    # byte-exact, in the IMAP wire's CRLF line endings (SPEC: "Fidelity")
    assert exact == data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert SIGNATURE_LINE in exact.split(b"\r\n")


def test_the_human_summary_names_the_rule_changes(account, dovecot_target, tmp_path):
    source = f"maildir:{maildir_with(tmp_path / 'Maildir', awkward_message())}"
    dst = account(dovecot_target)
    rules_profile(tmp_path / "config", dovecot_target)
    result = subprocess.run(
        migrator_cmd(
            "copy",
            source,
            f"strictbox:{dst.user}",
            "--state",
            str(tmp_path / "j.sqlite"),
            "--target-ca-file",
            str(dovecot_target.ca_file),
        ),
        env=base_env(
            MIGRATOR_TARGET_PASSWORD=dst.password, XDG_CONFIG_HOME=str(tmp_path / "config")
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        "changed by message rules: 1 (bare LF to CRLF: 1, final CRLF added: 1, "
        "long lines folded: 1)" in result.stdout
    )
    assert "message rules on (bare LF to CRLF, a final CRLF, lines over 998" in result.stderr


def test_a_source_that_marks_fetched_mail_seen_gets_its_flags_back(
    account, dovecot_source, dovecot_target, tmp_path
):
    """iCloud sets \\Seen on a fetch, BODY.PEEK or not: played here by a proxy that turns
    BODY.PEEK[] into BODY[] and EXAMINE into SELECT. Its profile puts the flag back."""
    src = account(dovecot_source)
    seed_imap(src.client(), make_corpus(54, 30), "/")
    before = snapshot_imap(src.client())
    unseen = sum("\\Seen" not in m.flags for msgs in before.values() for m in msgs)
    assert unseen > 5
    proxy = ThrottleProxy(
        dovecot_source.imap_nostarttls_port,
        rewrite=lambda line: line.replace(b"BODY.PEEK[]", b"BODY[]").replace(
            b" EXAMINE ", b" SELECT "
        ),
    )
    try:
        for profile, restored in ((["--source-profile", "icloud"], True), ([], False)):
            dst = account(dovecot_target)
            job = Job.between(src, dst, tmp_path / f"{restored}.sqlite")
            job.source = f"imap://{src.user}@127.0.0.1:{proxy.port}?tls=none"
            job.args = ["--target-ca-file", str(dovecot_target.ca_file)]
            result = job.run(*profile)
            assert result.returncode == 0, result.stderr
            after = snapshot_imap(src.client())
            assert (after == before) is restored
            # the copy has the flags the source had before the fetch
            assert snapshot_imap(dst.client()) == before
    finally:
        proxy.close()


def test_a_daily_upload_budget_stops_the_run_and_counts_earlier_runs(
    account, dovecot_source, dovecot_target, tmp_path
):
    src, dst = account(dovecot_source), account(dovecot_target)
    client = src.client()
    for i in range(10):
        client.append("INBOX", make_message(700 + i, size=5_000))
    profiles = tmp_path / "config" / "migrator" / "profiles"
    profiles.mkdir(parents=True)
    (profiles / "tinyquota.toml").write_text(
        f"""description = "A provider with a small daily upload budget"
[imap]
host = "127.0.0.1"
port = {dovecot_target.imaps_port}  # the test server's imaps port
tls = "implicit"
[auth]
methods = ["password"]
[limits]
upload_bytes_per_day = 22000  # four 5,000-byte messages a day, for the test
"""
    )
    job = Job(
        src.url("imaps"),
        f"tinyquota:{dst.user}",
        tmp_path / "j.sqlite",
        env=base_env(
            MIGRATOR_SOURCE_PASSWORD=src.password,
            MIGRATOR_TARGET_PASSWORD=dst.password,
            XDG_CONFIG_HOME=str(tmp_path / "config"),
        ),
        args=[
            "--source-ca-file",
            str(dovecot_source.ca_file),
            "--target-ca-file",
            str(dovecot_target.ca_file),
        ],
    )
    first = job.run()
    assert first.returncode == 1, first.stderr
    assert re.search(r"^total +4 +0 +0 ", first.stdout, re.M), first.stdout
    line = first.stderr.strip().splitlines()[-1]
    assert line.startswith("migrator: stopped: the daily upload to tinyquota:")
    assert "run the same command again after" in line
    # an hour later, the same day: what the first run moved still counts
    second = job.run()
    assert second.returncode == 1
    assert re.search(r"^total +0 +4 +0 ", second.stdout, re.M), second.stdout
    assert "budget of 22.0 KB is spent (20.0 KB in the last 24 hours)" in second.stderr
    assert dovecot_target.mailbox_status(dst.user, "INBOX", ("messages",))["messages"] == 4
