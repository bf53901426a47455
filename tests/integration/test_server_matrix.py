"""The server matrix: what proves fidelity and exactly-once, against each IMAP server we run.

Servers (tests/integration/conftest.py): Dovecot 2.3 without a namespace prefix ('/' and '.'),
Dovecot with ``prefix = INBOX.`` and '.', Cyrus IMAP 3.6 with ``altnamespace: no`` (Debian's
default: ``INBOX.`` and '.') and ``altnamespace: yes`` ('' and '/'). Each pair below is run as
source -> target and back, so that every server is read and written with its own namespace.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

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


@pytest.mark.parametrize("dst_name", SERVERS)
def test_kill_and_resume_gives_exactly_once(dst_name, request, account, tmp_path):
    msgs = make_corpus(32, 150)
    src, dst = _accounts(request, account, "dovecot_source", dst_name, msgs)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    for delay in (0.6, 1.0):
        proc = job.start("--workers", "2")
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
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
        assert {".Reçus", ".Sent", ".Archive.2023"} <= {f.split("/")[0] for f in files}, files
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
