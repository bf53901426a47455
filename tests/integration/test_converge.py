"""Issue 17: passes converge, against real Dovecot servers (source "/", target ".").

Flags made at the source after the first pass follow in `copy`; `sync` also mirrors removals and
moves for what this job copied, and never touches anything else. A move must be a move on the
target: the commands sent to it are counted (no APPEND); in a Maildir the file keeps its name.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import make_corpus, make_message, seed_imap, snapshot_imap
from tests.faultproxy import FaultProxy
from tests.integration.jobs import Job
from tests.integration.test_visibility import _run as run_command

FOLDERS = ("INBOX", "Archive", "Work")


@pytest.fixture
def pair(account, dovecot_source, dovecot_target):
    def make(n: int = 60, seed: int = 17):
        src = account(dovecot_source)
        dst = account(dovecot_target)
        seed_imap(src.client(), make_corpus(seed, n, FOLDERS), "/")
        return src, dst

    return make


def sync(job: Job, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        job.cmd(*extra, command="sync"),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def sync_json(job: Job, *extra: str, expect: int = 0) -> dict[str, Any]:
    result = sync(job, "--json", *extra)
    assert result.returncode == expect, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def flags_by_id(client, folder: str) -> dict[str, frozenset[str]]:
    """Message-ID -> flags (without \\Recent) of a folder's messages that have one."""
    client.select_folder(folder, readonly=True)
    uids = client.search("ALL")
    data = client.fetch(uids, ["FLAGS", "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) if uids else {}
    found = {}
    for item in data.values():
        header = item[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].strip()
        if header:
            flags = {f.decode() if isinstance(f, bytes) else f for f in item[b"FLAGS"]}
            found[header.split(b":", 1)[1].strip().decode()] = frozenset(flags - {"\\Recent"})
    return found


def uid_of(client, folder: str, message_id: str) -> int:
    client.select_folder(folder)
    (uid,) = client.search(["HEADER", "Message-ID", message_id])
    return uid


def with_ids(client, folder: str, count: int) -> list[str]:
    return sorted(flags_by_id(client, folder))[:count]


class CommandLog(FaultProxy):
    """A proxy that keeps what the client sent, to count the IMAP commands of a pass."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = bytearray()

    def _send(self, conn: Any, direction: str, dst: Any, data: bytes) -> None:
        if direction == "up":
            self.sent += data
        super()._send(conn, direction, dst, data)

    def count(self, command: bytes) -> int:
        """Commands named ``command`` (after their tag at a line start)."""
        return len(re.findall(rb"(?:^|\r\n)[A-Za-z0-9]+ " + re.escape(command) + rb" ", self.sent))


def set_flags(account, folder: str, flags: dict[str, list[str]]) -> None:
    client = account.client()
    client.select_folder(folder)
    for message_id, wanted in flags.items():
        client.set_flags(uid_of(client, folder, message_id), wanted)


def test_flag_changes_follow_in_copy_and_a_target_side_change_is_kept(pair, tmp_path):
    src, dst = pair()
    a, b, c, d = with_ids(src.client(), "INBOX", 4)
    set_flags(src, "INBOX", {a: [], b: ["\\Seen"], c: ["\\Seen"], d: []})
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 60
    set_flags(src, "INBOX", {a: ["\\Flagged", "$project"], b: ["\\Seen", "\\Answered"], c: []})
    set_flags(dst, "INBOX", {b: ["\\Flagged"], c: ["\\Seen", "$from-target"], d: ["\\Draft"]})
    result = job.run_json()
    assert result["copied"] == 0 and result["flagged"] == 3
    target = flags_by_id(dst.client(), "INBOX")
    assert target[a] == {"\\Flagged", "$project"}  # system flag and keyword from the source
    assert target[b] == {"\\Flagged", "\\Answered"}  # each side's own change kept
    assert target[c] == {"$from-target"}  # the source removed \\Seen: it wins for \\Seen
    assert target[d] == {"\\Draft"}  # changed at the target only: kept
    again = job.run_json()
    assert again["flagged"] == 0 and again["copied"] == 0
    # verify: the target's own changes are flag differences (exit 1, named); presence is equal
    verify = run_command(job, "verify")
    assert verify.returncode == 1, verify.stderr
    differ = [line for line in verify.stdout.splitlines() if line.startswith("flags differ:")]
    assert len(differ) == 3 and any("\\Draft" in line for line in differ)
    assert "--ignore-flags" in verify.stdout
    presence = run_command(job, "verify", "--ignore-flags")
    assert presence.returncode == 0, presence.stdout + presence.stderr
    assert "flags differ" not in presence.stdout


def mirror_snapshot(account, leave_out: bytes = b"<native@") -> dict[str, list]:
    """snapshot_imap without the messages delivered to the target directly (by Message-ID)."""
    snap = snapshot_imap(account.client())
    return {f: [m for m in msgs if leave_out not in m.body] for f, msgs in snap.items()}


def native(i: int) -> bytes:
    return (
        f"Message-ID: <native@{i}.example>\r\nFrom: x@example.org\r\nSubject: delivered after "
        f"the MX switch {i}\r\n\r\nhello\r\n"
    ).encode()


def test_sync_mirrors_removals_and_moves_and_leaves_native_mail_alone(pair, tmp_path):
    src, dst = pair(80, seed=18)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 80
    d = dst.client()
    d.append("INBOX", native(1))
    d.create_folder("Private")
    d.append("Private", native(2))
    s = src.client()
    gone, moved, renamed = with_ids(s, "INBOX", 3)
    s.select_folder("INBOX")
    s.delete_messages([uid_of(s, "INBOX", gone)])
    s.expunge()
    s.move([uid_of(s, "INBOX", moved)], "Archive")
    s.create_folder("Later")
    s.move([uid_of(s, "INBOX", renamed)], "Later")
    before = snapshot_imap(dst.client())
    plan = sync_json(job, "--dry-run")
    assert (plan["removed"], plan["moved"], plan["copied"]) == (1, 2, 0)
    assert snapshot_imap(dst.client()) == before  # --dry-run changed nothing
    # The pass runs through a proxy that records the commands sent to the target (plaintext).
    with CommandLog(dst.server.imap_nostarttls_port, lifetime=120) as log:
        watched = Job(
            job.source,
            f"imap://{dst.user}@127.0.0.1:{log.port}?tls=none",
            job.state,
            job.env,
            ["--source-ca-file", str(src.server.ca_file)],
        )
        result = sync_json(watched)
    assert (result["removed"], result["moved"], result["copied"]) == (1, 2, 0)
    # moves are moves: no APPEND at all, the messages went by UID MOVE
    assert log.count(b"APPEND") == 0 and log.count(b"UID MOVE") == 2
    assert log.count(b"UID EXPUNGE") == 1
    mirrored, source = mirror_snapshot(dst), mirror_snapshot(src)
    assert source == {k: v for k, v in mirrored.items() if k in source}
    target = snapshot_imap(dst.client())
    assert [m.body for m in target["INBOX"]].count(native(1)) == 1
    assert [m.body for m in target["Private"]] == [native(2)]
    status = subprocess.run(
        ["migrator", "status", "--state", str(job.state)], capture_output=True, text=True
    )
    assert "1 removed" in status.stdout and "1 moved in" in status.stdout
    again = sync_json(job)
    assert (again["removed"], again["moved"], again["copied"]) == (0, 0, 0)


def test_sync_guard_refuses_and_names_max_delete(pair, tmp_path):
    src, dst = pair(60, seed=19)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 60
    s = src.client()
    s.select_folder("INBOX")
    uids = s.search("ALL")
    s.delete_messages(uids[: len(uids) - 2])
    s.expunge()
    before = snapshot_imap(dst.client())
    result = sync(job)
    assert result.returncode == 2
    assert "--max-delete" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert snapshot_imap(dst.client()) == before
    allowed = sync_json(job, "--max-delete", str(len(uids)))
    assert allowed["removed"] == len(uids) - 2
    assert mirror_snapshot(src) == mirror_snapshot(dst)


def test_sync_after_a_new_source_uidvalidity_removes_nothing(pair, tmp_path):
    src, dst = pair(40, seed=20)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 40
    src.set_uidvalidity("INBOX", renumber=True)
    result = sync_json(job)
    assert result["removed"] == 0 and result["copied"] == 0
    assert mirror_snapshot(src) == mirror_snapshot(dst)


def test_sigkill_in_the_middle_of_sync_then_rerun_converges(pair, tmp_path):
    src, dst = pair(400, seed=21)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 400
    rng = random.Random(21)
    s = src.client()
    s.select_folder("INBOX")
    uids = s.search("ALL")
    rng.shuffle(uids)
    s.move(sorted(uids[:60]), "Work")
    s.delete_messages(sorted(uids[60:100]))
    s.expunge()
    s.append("INBOX", make_message(21_999_001))
    killed = 0
    # Both servers through slow links, so that a pass lasts seconds and a kill lands in any of
    # its steps (listings, moves, removals, the upload, the journal's commits).
    with (
        FaultProxy(src.server.imaps_port, lifetime=120) as to_source,
        FaultProxy(dst.server.imaps_port, lifetime=120) as to_target,
    ):
        to_source.throttle("down", 8_000)
        to_target.throttle("down", 8_000)
        slow = Job(
            f"imaps://{src.user}@127.0.0.1:{to_source.port}",
            f"imaps://{dst.user}@127.0.0.1:{to_target.port}",
            job.state,
            job.env,
            job.args,
        )
        for _ in range(5):
            proc = subprocess.Popen(
                slow.cmd("--workers", "1", command="sync"),
                env=job.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(rng.uniform(0.4, 2.5))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.communicate(timeout=60)
    assert killed >= 2
    final = sync(job)
    assert final.returncode == 0, final.stderr
    # converged: every source message exactly once where the source has it, nothing else
    assert mirror_snapshot(src) == mirror_snapshot(dst)


def local_job(src, target: str, state: Path) -> Job:
    job = Job.between(src, target, state)
    job.args = ["--source-ca-file", str(src.server.ca_file)]
    return job


def test_maildir_target_flags_follow_and_sync_moves_by_rename(
    pair, tmp_path, dovecot_tmp, account, dovecot_target
):
    src, _ = pair(50, seed=22)
    archive = dovecot_tmp / "Maildir"
    job = local_job(src, f"maildir:{archive}", tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 50
    a, b, c, d = with_ids(src.client(), "INBOX", 4)
    set_flags(src, "INBOX", {a: ["\\Flagged", "$project"], b: []})
    s = src.client()
    s.select_folder("INBOX")
    s.move([uid_of(s, "INBOX", c)], "Archive")
    s.select_folder("INBOX")
    s.delete_messages([uid_of(s, "INBOX", d)])
    s.expunge()
    files = {p.name.split(":")[0] for p in archive.rglob("*") if p.parent.name == "cur"}
    result = sync_json(job)
    assert (result["moved"], result["removed"], result["copied"]) == (1, 1, 0)
    assert result["flagged"] >= 1
    # a file keeps its unique name when renamed; a message written again would get a new one
    after = {p.name.split(":")[0] for p in archive.rglob("*") if p.parent.name == "cur"}
    assert after <= files and len(files - after) == 1
    dovecot_target.adopt(archive)
    reader = account(dovecot_target, mail=f"maildir:{archive}")
    assert snapshot_imap(reader.client()) == snapshot_imap(src.client())


def test_mbox_target_keeps_the_flags_it_archived_and_refuses_sync(pair, tmp_path):
    src, _ = pair(20, seed=23)
    archive = tmp_path / "archive"
    job = local_job(src, f"mbox:{archive}", tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 20
    before = {p: p.read_bytes() for p in archive.rglob("*.mbox")}
    (a,) = with_ids(src.client(), "INBOX", 1)
    set_flags(src, "INBOX", {a: ["\\Flagged", "$later"]})
    again = job.run_json()
    assert again["copied"] == 0 and again["flagged"] == 0
    assert {p: p.read_bytes() for p in archive.rglob("*.mbox")} == before
    refused = sync(job)
    assert refused.returncode == 2 and "append-only" in refused.stderr
    assert {p: p.read_bytes() for p in archive.rglob("*.mbox")} == before


def test_condstore_pass_asks_only_for_what_changed(pair, tmp_path):
    src, dst = pair(600, seed=24)
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run_json()["copied"] == 600
    assert job.run_json()["copied"] == 0  # the first delta pass lists every folder's flags once
    with sqlite3.connect(job.state) as db:
        marks = [m for (m,) in db.execute("SELECT flag_mark FROM folders")]
    assert marks and all(m and m.isdigit() for m in marks)  # Dovecot offers CONDSTORE
    (a,) = with_ids(src.client(), "INBOX", 1)
    set_flags(src, "INBOX", {a: ["\\Flagged", "$delta"]})

    def pass_through_proxy() -> tuple[dict, int]:
        with FaultProxy(src.server.imaps_port, lifetime=120) as proxy:
            slow = Job(
                f"imaps://{src.user}@127.0.0.1:{proxy.port}",
                job.target,
                job.state,
                job.env,
                job.args,
            )
            result = slow.run_json()
            return result, proxy.forwarded["down"]

    delta, delta_bytes = pass_through_proxy()
    assert delta["flagged"] == 1 and delta["copied"] == 0
    assert flags_by_id(dst.client(), "INBOX")[a] == {"\\Flagged", "$delta"}
    with sqlite3.connect(job.state) as db:
        db.execute("UPDATE folders SET flag_mark=NULL")  # as a server without CONDSTORE
    full, full_bytes = pass_through_proxy()
    assert full["flagged"] == 0
    assert delta_bytes * 2 < full_bytes, (delta_bytes, full_bytes)
