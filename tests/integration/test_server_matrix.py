"""The server matrix: what proves fidelity and exactly-once, against each IMAP server we run.

Servers (tests/integration/conftest.py): Dovecot 2.3 without a namespace prefix ('/' and '.'),
Dovecot with ``prefix = INBOX.`` and '.', Cyrus IMAP 3.6 with ``altnamespace: no`` (Debian's
default: ``INBOX.`` and '.') and ``altnamespace: yes`` ('' and '/'). Each pair below is run as
source -> target and back, so that every server is read and written with its own namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from imapclient import imap_utf7

from tests.corpus import make_corpus, make_message
from tests.integration.jobs import Job, base_env, migrator_cmd


def test_fixtures_serve_the_documented_namespaces(
    cyrus_standard, cyrus_alt, dovecot_prefixed, account
):
    for server, personal in (
        (cyrus_standard, ("INBOX.", ".")),
        (cyrus_alt, ("", "/")),
        (dovecot_prefixed, ("INBOX.", ".")),
    ):
        acct = account(server)
        client = acct.client()
        assert tuple(client.namespace().personal[0]) == personal
        msgs = make_corpus(7, 6, folders=("INBOX", "Archive/2023", "Reçus"))
        acct.seed(msgs)
        names = {name for _, _, name in client.list_folders()}
        assert server.mailbox_name("Archive/2023") in names
        assert sorted(acct.snapshot(include_empty=False)) == ["Archive/2023", "INBOX", "Reçus"]


def test_cyrus_keeps_8bit_headers_with_munge8bit_off(cyrus_standard, account):
    """Cyrus rewrites 8-bit header bytes to 'X' unless munge8bit: no (the fixture's setting)."""
    acct = account(cyrus_standard)
    data = make_message(1, eight_bit=True)
    client = acct.client()
    client.append("INBOX", data)
    client.select_folder("INBOX", readonly=True)
    (item,) = client.fetch(client.search("ALL"), ["BODY.PEEK[]"]).values()
    assert item[b"BODY[]"] == data


@pytest.mark.parametrize("server", ["cyrus_standard", "cyrus_alt"])
def test_cyrus_read_only_shared_folder(server, request, account):
    cyrus = request.getfixturevalue(server)
    acct = account(cyrus)
    name = cyrus.admin_name("shared", f"ro{acct.user}")
    cyrus.shared_folder(name, {acct.user: "lr"})
    client = acct.client()
    listed = [n for _, _, n in client.list_folders() if n.endswith(f"ro{acct.user}")]
    assert len(listed) == 1
    rights = client._imap.myrights(client._normalise_folder(listed[0]))
    assert b" lr" in rights[1][0]


# -- the matrix --------------------------------------------------------------------------------

#: Source -> target pairs: every server is read and written at least once, each against one with
#: a different namespace prefix or separator.
PAIRS = [
    ("dovecot_source", "dovecot_prefixed"),
    ("dovecot_prefixed", "cyrus_standard"),
    ("cyrus_standard", "cyrus_alt"),
    ("cyrus_alt", "dovecot_target"),
    ("dovecot_prefixed", "dovecot_source"),
    ("cyrus_standard", "dovecot_prefixed"),
    ("cyrus_alt", "cyrus_standard"),
    ("dovecot_target", "cyrus_alt"),
]
SERVERS = ["dovecot_prefixed", "cyrus_standard", "cyrus_alt"]


def _accounts(request, account, src_name, dst_name, msgs):
    src = account(request.getfixturevalue(src_name))
    dst = account(request.getfixturevalue(dst_name))
    src.seed(msgs)
    return src, dst


def assert_same(src, dst) -> None:
    """Every folder in the right place, every message exactly once, bytes, flags and dates
    equal: names relative to each side's personal namespace."""
    a, b = src.snapshot(include_empty=False), dst.snapshot(include_empty=False)
    assert set(a) == set(b), (sorted(a), sorted(b))
    for folder, messages in a.items():
        assert b[folder] == messages, f"{folder}: {len(messages)} in source, {len(b[folder])}"


@pytest.mark.parametrize(("src_name", "dst_name"), PAIRS)
def test_copy_rerun_verify(src_name, dst_name, request, account, tmp_path):
    msgs = make_corpus(31, 45)
    src, dst = _accounts(request, account, src_name, dst_name, msgs)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    first = job.run_json()
    assert first["copied"] == 45 and first["failed"] == 0
    assert_same(src, dst)
    # Names as each server spells them, never the source's prefix carried over.
    names = {n for _, _, n in dst.client().list_folders()}
    assert dst.server.mailbox_name("Archive/2023/Q1") in names
    assert not any(n.startswith("INBOX.INBOX") or n.startswith("INBOX/INBOX") for n in names)
    again = job.run_json()
    assert again["copied"] == 0 and again["failed"] == 0
    verify = subprocess.run(
        migrator_cmd("verify", job.source, job.target, *job.args),
        env=job.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _journaled(state) -> int:
    """Messages the journal holds a row for (pending or done); 0 before it exists."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as db:
            return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.Error:
        return 0


@pytest.mark.parametrize("dst_name", SERVERS)
def test_kill_and_resume_gives_exactly_once(dst_name, request, account, tmp_path):
    """SIGKILL while messages are being appended (the journal has grown since the start), three
    times, then the same command: every message exactly once."""
    msgs = make_corpus(32, 300)
    src, dst = _accounts(request, account, "dovecot_source", dst_name, msgs)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    killed = 0
    for _ in range(3):
        before = _journaled(job.state)
        proc = job.start("--workers", "2")
        deadline = time.monotonic() + 60
        while proc.poll() is None and _journaled(job.state) <= before:
            assert time.monotonic() < deadline, "the copy never started"
            time.sleep(0.01)
        if proc.poll() is not None:
            proc.communicate(timeout=60)
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        killed += 1
    assert killed >= 1, "the copy finished before any kill: make the corpus bigger"
    final = job.run_json()
    assert final["failed"] == 0
    assert_same(src, dst)
    assert job.run_json()["copied"] == 0


@pytest.mark.parametrize("server_name", SERVERS)
@pytest.mark.parametrize("kind", ["mbox", "maildir"])
def test_archives_both_ways(server_name, kind, request, account, tmp_path):
    """IMAP -> archive: folders under the archive's root, no INBOX/ prefix carried into it
    (no INBOX/Reçus.mbox); archive -> a fresh account on the same server: the same mail."""
    server = request.getfixturevalue(server_name)
    msgs = make_corpus(33, 30, folders=("INBOX", "Reçus", "Sent", "Archive/2023"))
    src = account(server)
    src.seed(msgs)
    archive = tmp_path / "archive"
    out = Job(
        src.url("imaps"),
        f"{kind}:{archive}",
        tmp_path / "a.sqlite",
        env=base_env(MIGRATOR_SOURCE_PASSWORD=src.password),
        args=["--source-ca-file", str(server.ca_file)],
    )
    assert out.run_json()["copied"] == 30
    files = {p.relative_to(archive).as_posix() for p in archive.rglob("*")}
    if kind == "mbox":
        assert {"Reçus.mbox", "Sent.mbox", "Archive/2023.mbox"} <= files, files
    else:
        reçus = "." + imap_utf7.encode("Reçus").decode()  # Maildir++ names are modified UTF-7
        assert {reçus, ".Sent", ".Archive.2023"} <= {f.split("/")[0] for f in files}, files
    assert not any(f.startswith("INBOX/") or f.startswith(".INBOX.") for f in files), files
    dst = account(server)
    back = Job(
        f"{kind}:{archive}",
        dst.url("imaps"),
        tmp_path / "b.sqlite",
        env=base_env(MIGRATOR_TARGET_PASSWORD=dst.password),
        args=["--target-ca-file", str(server.ca_file)],
    )
    assert back.run_json()["copied"] == 30
    a, b = src.snapshot(include_empty=False), dst.snapshot(include_empty=False)
    assert set(a) == set(b)
    for folder, snaps in a.items():
        # line endings may change in an archive; flags, dates and content may not
        assert [(s.flags, s.date) for s in snaps] == [(s.flags, s.date) for s in b[folder]]
        assert len(snaps) == len(b[folder])


# -- rights ------------------------------------------------------------------------------------


def test_read_only_shared_folder_with_delete_source(
    cyrus_standard, dovecot_target, account, tmp_path
):
    """The issue's case: a shared folder the user may only read, copied with --include-shared and
    --delete-source. The run finishes (summary and JSON), exits 1, names the folder with the
    server's reason; every other folder is deleted from the source, only after being copied;
    `status` adds up."""
    src = account(cyrus_standard)
    dst = account(dovecot_target)
    msgs = make_corpus(34, 24, folders=("INBOX", "Archive", "Archive/2023"))
    src.seed(msgs)
    shared = f"ro{src.user}"
    cyrus_standard.shared_folder(shared, {src.user: "lr"})
    admin = cyrus_standard.admin()
    try:
        for i in range(5):
            admin.append(shared, make_message(9000 + i), flags=["\\Seen"])
    finally:
        admin.logout()
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    result = job.run("--json", "--include-shared", "--delete-source")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["copied"] == 29 and summary["failed"] == 0
    # the folder is named, with what the server said and the user's rights there
    errors = [f for f in summary["folders"] if f["error"]]
    assert len(errors) == 1, errors
    [failed] = errors
    assert failed["source"] == f"Shared Folders/{shared}" and failed["copied"] == 5
    assert "READ-ONLY" in failed["error"] and "'lr'" in failed["error"], failed
    assert shared in failed["error"]
    # copied everywhere; deleted from the source everywhere but the read-only folder
    got = dst.snapshot(include_empty=False)
    assert sum(len(v) for v in got.values()) == 29
    assert len(got[f"Shared Folders/{shared}"]) == 5
    assert src.snapshot(include_empty=False) == {}
    client = src.client()
    client.select_folder(shared, readonly=True)
    assert len(client.search("ALL")) == 5
    status = subprocess.run(
        migrator_cmd("status", "--state", str(job.state), "--json"),
        env=job.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert sum(f["copied"] for f in data["folders"]) == 29
    assert data["runs"][-1]["copied"] == 29
    # a rerun copies nothing again, and fails the same folder the same clear way
    again = job.run("--include-shared", "--delete-source")
    assert again.returncode == 1, again.stderr
    said = [line for line in again.stderr.splitlines() if "folder error" in line]
    assert len(said) == 1 and shared in said[0] and "READ-ONLY" in said[0], again.stderr
    assert "total" in again.stdout


def test_shared_folders_are_left_out_and_reported_by_default(
    cyrus_alt, dovecot_target, account, tmp_path
):
    src = account(cyrus_alt)
    dst = account(dovecot_target)
    src.seed(make_corpus(35, 6, folders=("INBOX", "Lists")))
    shared = cyrus_alt.admin_name("team", f"s{src.user}")
    cyrus_alt.shared_folder(shared, {src.user: "lrs"})
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    result = job.run("--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["copied"] == 6
    [notice] = [n for n in summary["notices"] if "left out" in n]
    assert "--include-shared" in notice
    assert f"Shared Folders/team/s{src.user}" in notice
    assert sorted(dst.snapshot(include_empty=False)) == ["INBOX", "Lists"]


def test_special_use_folder_created_with_its_attribute(
    dovecot_source, cyrus_standard, account, tmp_path
):
    """Cyrus offers CREATE-SPECIAL-USE: a Sent folder it did not have is created as \\Sent."""
    src = account(dovecot_source)
    dst = account(cyrus_standard)
    src.seed(make_corpus(36, 4, folders=("INBOX", "Sent Items", "Junk")))
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 4
    client = dst.client()
    typ, data = client._imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
    _, data = client._imap._untagged_response(typ, data, "LIST")
    uses = {name: set(flags) for flags, _, name in client._proc_folder_list(data)}
    assert b"\\Sent" in uses["INBOX.Sent"] and b"\\Junk" in uses["INBOX.Junk"], uses


def test_cyrus_refusing_an_invalid_header_is_a_clear_final_failure(
    dovecot_source, cyrus_alt, account, tmp_path
):
    """Cyrus refuses a header line without a colon ("Message contains invalid header"), which
    Dovecot stores: that message fails with the server's reason, the others are copied, and
    `status` says a rerun will not fix it."""
    src = account(dovecot_source)
    dst = account(cyrus_alt)
    src.seed(make_corpus(37, 5, folders=("INBOX",)))
    bad = make_message(9999).replace(b"\r\nSubject:", b"\r\nthis line has no colon\r\nSubject:", 1)
    src.client().append("INBOX", bad)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    summary = job.run_json(expect=1)
    assert summary["copied"] == 5 and summary["failed"] == 1
    [failure] = summary["folders"][0]["failures"]
    assert "invalid header" in failure["reason"], failure
    status = subprocess.run(
        migrator_cmd("status", "--state", str(job.state)),
        env=job.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "1 message(s) the target refused for good" in status.stdout, status.stdout
    assert "a rerun may fix" not in status.stdout


def test_check_shows_the_personal_namespace(cyrus_standard, account):
    acct = account(cyrus_standard)
    shown = subprocess.run(
        migrator_cmd("check", acct.url("imaps"), "--ca-file", str(cyrus_standard.ca_file)),
        env=base_env(MIGRATOR_SOURCE_PASSWORD=acct.password),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert shown.returncode == 0, shown.stderr
    assert "'INBOX.'" in shown.stdout and "Cyrus IMAP 3.6" in shown.stdout, shown.stdout


def test_target_folder_without_the_insert_right_fails_alone(
    dovecot_source, cyrus_standard, account, tmp_path
):
    """A target folder the user may not append to (no 'i' right, RFC 4314) fails as a folder,
    with the rights the server gave, before any message is tried; the others are copied."""
    src = account(dovecot_source)
    dst = account(cyrus_standard)
    msgs = make_corpus(38, 8, folders=("INBOX", "Archive", "Lists"))
    src.seed(msgs)
    dst.client().create_folder("INBOX.Archive")
    admin = cyrus_standard.admin()
    try:
        admin.setacl(f"user.{dst.user}.Archive", dst.user, "lr")
    finally:
        admin.logout()
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    summary = job.run_json(expect=1)
    [failed] = [f for f in summary["folders"] if f["error"]]
    assert failed["source"] == "Archive" and failed["copied"] == failed["failed"] == 0
    assert "'INBOX.Archive'" in failed["error"] and "needs 'i'" in failed["error"], failed
    assert summary["copied"] == sum(1 for m in msgs if m.folder != "Archive")
    assert summary["failed"] == 0


def test_a_fresh_connection_finds_a_shared_folder_by_its_path(cyrus_standard, account):
    """Each worker opens its own store, which never listed: a shared folder's path still leads
    to the server's name for it ("team.x"), not to a personal folder ("INBOX.Shared Folders...")."""
    from migrator.stores.base import ServerAccess
    from migrator.stores.imap import ImapStore

    acct = account(cyrus_standard)
    name = cyrus_standard.admin_name("team", f"x{acct.user}")
    cyrus_standard.shared_folder(name, {acct.user: "lrs"})
    admin = cyrus_standard.admin()
    try:
        admin.append(name, make_message(4242))
    finally:
        admin.logout()
    access = ServerAccess(
        cyrus_standard.host,
        cyrus_standard.imaps_port,
        acct.user,
        "implicit",
        cyrus_standard.ssl_context(),
        lambda: acct.password,
    )
    with ImapStore(access) as store:
        state = store.open_folder(("Shared Folders", "team", f"x{acct.user}"))
    assert state.count == 1
