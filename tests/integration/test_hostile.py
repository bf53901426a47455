"""Issue 8: hostile messages and folder names (tests/hostile.py), through real Dovecot servers.

Every message must either arrive intact or be recorded as failed with the server's reason; none
may be silently changed. "Intact" is judged against what the source server itself serves (for an
IMAP source) or what Dovecot makes of the raw bytes when they are appended to it directly (for
raw Maildir and mbox archives): Dovecot normalises line endings and NUL bytes on the way in, so
that is the only faithful reference. Each test prints a table of what every input did.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from migrator.model import to_crlf
from tests.hostile import (
    FOLDER_NAMES,
    Case,
    hostile_messages,
    stdlib_email_dir,
    stdlib_messages,
    table,
)
from tests.integration.jobs import Job, base_env


def _fetch_bodies(client: Any, folder: str) -> list[tuple[int, bytes]]:
    client.select_folder(folder, readonly=True)
    uids = sorted(client.search("ALL"))
    out = []
    for start in range(0, len(uids), 20):
        batch = uids[start : start + 20]
        got = client.fetch(batch, ["BODY.PEEK[]"])
        out += [(uid, got[uid][b"BODY[]"]) for uid in batch]
    return out


def _failures(state: Path) -> dict[str, str]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT src_id, error FROM messages WHERE state='failed'").fetchall()
    return {i: e for i, e in rows}


def _run(job: Job, *extra: str) -> dict[str, Any]:
    result = job.run("--json", "--workers", "1", *extra, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode in (0, 1), result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _line_ends(data: bytes) -> bytes:
    """The message with every line ending (CRLF, LF, CR before them) as one LF."""
    return re.sub(rb"\r*\n", b"\n", data)


def _verdict(expected: bytes, held: Counter, reason: str | None) -> str:
    if held[expected] > 0:
        held[expected] -= 1
        return "byte-exact"
    for body, count in held.items():
        if count > 0 and _line_ends(body) == _line_ends(expected):
            held[body] -= 1
            return "same up to line endings"
    if reason:
        return f"refused: {reason[:70]}"
    return "CHANGED OR LOST"


@pytest.fixture(scope="module")
def corpus() -> list[Case]:
    return hostile_messages() + stdlib_messages()


def test_hostile_messages_arrive_intact_or_are_refused_with_a_reason(
    corpus, account, dovecot_source, dovecot_target, tmp_path, dovecot_tmp
):
    from migrator.stores.maildir import MaildirStore
    from migrator.stores.mbox import MboxStore

    # The source account, seeded by APPEND of the raw bytes: what Dovecot serves is the reference.
    src = account(dovecot_source)
    client = src.client(timeout=120)
    for case in corpus:
        client.append("INBOX", case.data, msg_time=case.date)
    served = _fetch_bodies(client, "INBOX")
    assert len(served) == len(corpus)
    reference = {case.name: body for case, (_, body) in zip(corpus, served, strict=True)}
    uid_of = {str(uid): case.name for case, (uid, _) in zip(corpus, served, strict=True)}
    columns: dict[str, dict[str, str]] = {}

    def judge(
        column: str,
        dst: Any,
        failures: dict[str, str],
        name_of: dict[str, str],
        expected: dict[str, bytes] = reference,
        cases: list[Case] = corpus,
    ) -> None:
        held = Counter(body for _, body in _fetch_bodies(dst.client(timeout=120), "INBOX"))
        reasons = {name_of.get(i, i): e for i, e in failures.items()}
        columns[column] = {
            c.name: _verdict(expected[c.name], held, reasons.get(c.name)) for c in cases
        }
        assert not +held, f"{column}: {sum(held.values())} unexpected messages in the target"

    # 1. IMAP -> IMAP
    dst = account(dovecot_target)
    job = Job.between(src, dst, tmp_path / "a.sqlite")
    _run(job)
    judge("IMAP->IMAP", dst, _failures(job.state), uid_of)
    # with the journal lost, nothing is copied twice: not even the Message-IDs used twice
    job.state.unlink()
    again = _run(job)
    assert again["copied"] == 0 and again["skipped"] == len(corpus), again

    # 2. IMAP -> mbox -> IMAP
    archive = dovecot_tmp / "archive"
    to_mbox = Job(src.url(), f"mbox:{archive}", tmp_path / "b.sqlite", env=job.env)
    to_mbox.args = ["--source-ca-file", str(src.server.ca_file)]
    _run(to_mbox)
    with MboxStore(archive) as store:  # the archive holds each message, LF line endings
        refs = list(store.list_messages(("INBOX",)))
        archived = Counter(to_crlf(data) for _, data in store.fetch(("INBOX",), refs))
    assert archived == Counter(reference.values()) - Counter(
        reference[uid_of[i]] for i in _failures(to_mbox.state)
    )
    dst2 = account(dovecot_target)
    back = Job(f"mbox:{archive}", dst2.url(), tmp_path / "c.sqlite", env=base_env())
    back.env["MIGRATOR_TARGET_PASSWORD"] = dst2.password
    back.args = ["--target-ca-file", str(dst2.server.ca_file)]
    _run(back)
    judge("IMAP->mbox->IMAP", dst2, _failures(back.state) | _failures(to_mbox.state), uid_of)

    # What Dovecot makes of the raw bytes as migrator sends them (CRLF line ends, one message
    # per MULTIAPPEND): Dovecot keeps a bare CR there, where a plain APPEND turns it into CRLF.
    # (the 40 MB message is left out of the raw archives: it has made its point above)
    raw_cases = [c for c in corpus if len(c.data) < 10_000_000]
    ref = account(dovecot_target).client(timeout=120)
    for case in raw_cases:
        ref.multiappend("INBOX", [{"msg": to_crlf(case.data), "date": case.date}])
    as_sent = {
        c.name: body for c, (_, body) in zip(raw_cases, _fetch_bodies(ref, "INBOX"), strict=True)
    }

    # 3. raw bytes in a Maildir (as a POP client or another program left them) -> IMAP
    maildir = dovecot_tmp / "raw-maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n, case in enumerate(raw_cases):
        path = maildir / "cur" / f"{1500000000 + n}.M{n}P1.hostile:2,S"
        path.write_bytes(case.data)
        os.utime(path, (case.date.timestamp(), case.date.timestamp()))
    dst3 = account(dovecot_target)
    raw = Job(f"maildir:{maildir}", dst3.url(), tmp_path / "d.sqlite", env=back.env.copy())
    raw.env["MIGRATOR_TARGET_PASSWORD"] = dst3.password
    raw.args = ["--target-ca-file", str(dst3.server.ca_file)]
    _run(raw)
    names = {f"{1500000000 + n}.M{n}P1.hostile": c.name for n, c in enumerate(corpus)}
    judge("raw Maildir->IMAP", dst3, _failures(raw.state), names, as_sent, raw_cases)

    # 4. raw bytes written by migrator's own mbox writer (an old archive) -> IMAP
    raw_mbox = dovecot_tmp / "raw.mbox"
    from migrator.model import MessageRef

    with MboxStore(raw_mbox, create=True) as store:
        store.ensure_folder(("INBOX",))
        for case in raw_cases:
            store.append(("INBOX",), [(MessageRef(id="x", size=0, date=case.date), case.data)])
    dst4 = account(dovecot_target)
    old = Job(f"mbox:{raw_mbox}", dst4.url(), tmp_path / "e.sqlite", env=back.env.copy())
    old.env["MIGRATOR_TARGET_PASSWORD"] = dst4.password
    old.args = ["--target-ca-file", str(dst4.server.ca_file)]
    _run(old)
    judge("raw mbox->IMAP", dst4, _failures(old.state), {}, as_sent, raw_cases)
    _ = MaildirStore  # (imported to fail early if the store is missing)

    rows = [
        [c.name[:48], f"{len(c.data):,}", *(columns[k].get(c.name, "(not run)") for k in columns)]
        for c in corpus
    ]
    report = table(["message", "bytes", *columns], rows)
    note = (
        ""
        if stdlib_email_dir()
        else "\n(this Python has no Lib/test/test_email/data: stdlib messages skipped)"
    )
    print(f"\nHostile messages ({len(corpus)}):\n{report}{note}")
    bad = [r for r in rows if any(cell == "CHANGED OR LOST" for cell in r)]
    assert not bad, (
        f"changed or lost without a reason:\n{table(['message', 'bytes', *columns], bad)}"
    )
    assert len(corpus) >= 19 + (47 if stdlib_email_dir() else 0)


# -- folder names ------------------------------------------------------------------------------


def _create(client: Any, name: str) -> str | None:
    """Create a folder and its parents (as mailboxes); the server's refusal, or None."""
    levels = name.split("/")
    try:
        for depth in range(1, len(levels) + 1):
            sub = "/".join(levels[:depth])
            if sub.upper() != "INBOX" and not client.folder_exists(sub):
                client.create_folder(sub)
        return None
    except Exception as exc:  # the server's own words go in the table
        return str(exc)


def test_hostile_folder_names(account, dovecot_source, dovecot_target, tmp_path):
    """Each name gets one message in the source ('/' delimiter, LAYOUT=fs so a level may hold
    '.'); the copy goes to a '.' server. 200 nested levels go along; Maildir++ on the target
    limits a name to 255 bytes on disk (127 one-letter levels), so the deepest ones must be
    refused with the server's reason and the rest copied."""
    src = account(dovecot_source, mail="maildir:~/Maildir:LAYOUT=fs")
    dst = account(dovecot_target)
    client = src.client(timeout=120)
    cases = list(FOLDER_NAMES)
    deep = "/".join(f"L{n}" for n in range(1, 201))
    from tests.hostile import FolderCase

    cases.append(FolderCase("200 nested levels", deep))
    source_refused: dict[str, str] = {}
    for n, case in enumerate(cases):
        refused = _create(client, case.name)
        if refused:
            source_refused[case.name] = refused
            continue
        body = f"Subject: folder {n}\r\nMessage-ID: <folder-{n}@hostile.example>\r\n\r\n{n}\r\n"
        client.append(case.name, body.encode())
    # every level of the deep one holds a message, to find where the target stops
    levels = deep.split("/")
    for depth in range(1, len(levels)):
        name = "/".join(levels[:depth])
        body = f"Subject: depth {depth}\r\nMessage-ID: <depth-{depth}@hostile.example>\r\n\r\n."
        client.append(name, body.encode())

    job = Job.between(src, dst, tmp_path / "j.sqlite")
    result = job.run("--json", "--workers", "2", timeout=300)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr  # the deepest folders cannot be created
    data = json.loads(result.stdout)
    by_source = {f["source"]: f for f in data["folders"]}
    target_names = {
        name.replace(".", "/") if isinstance(name, str) else name
        for _, _, name in dst.client().list_folders()
    }

    rows = []
    deepest_ok = 0
    for case in cases:
        shown = case.name if len(case.name) < 40 else case.name[:18] + "…" + case.name[-18:]
        if case.name in source_refused:
            rows.append(
                [case.kind, repr(shown), "-", f"source refused: {source_refused[case.name]}"]
            )
            continue
        path = (
            "INBOX/" + case.name.split("/", 1)[1]
            if case.name.lower().startswith("inbox/")
            else case.name
        )
        folder = by_source.get(path)
        assert folder is not None, (case.name, sorted(by_source)[:20])
        if folder.get("error"):
            rows.append(
                [case.kind, repr(shown), folder["target"][:40], f"refused: {folder['error'][:60]}"]
            )
            continue
        assert folder["copied"] == 1 and folder["failed"] == 0, folder
        rows.append([case.kind, repr(shown), repr(folder["target"][:40]), "copied"])
    for depth in range(1, len(levels) + 1):
        folder = by_source["/".join(levels[:depth])]
        if folder["copied"] == 1 and not folder.get("error"):
            deepest_ok = depth
    refused_deeper = by_source["/".join(levels[: deepest_ok + 1])]["error"] or ""
    rows.append(["deepest level copied", "", "", f"{deepest_ok} of 200"])
    rows.append(["level below it", "", "", f"refused: {refused_deeper[-60:]}"])
    report = table(["case", "source name", "target name", "result"], rows)
    print(f"\nHostile folder names (source '/', target '.' Maildir++):\n{report}")
    # Maildir++ keeps a whole name in one directory name of at most 255 bytes: ".L1.L2...":
    # the target's limit, not ours; every shallower level arrived.
    assert 40 <= deepest_ok < 200
    too_deep = by_source["/".join(levels[: deepest_ok + 1])]
    assert "cannot create folder" in too_deep["error"], too_deep
    # the '.' inside a level was renamed, never merged into a hierarchy
    assert by_source["Projects/v1.2"]["target"] == "Projects/v1_2"
    # case variants of INBOX are INBOX
    assert by_source["INBOX/lower"]["target"] == "INBOX/lower"
    assert "INBOX/Mixed" in by_source
    # a folder and its same-named children stay distinct
    assert {"Same", "Same/Same", "Same/Same/Same"} <= set(target_names)
    # and the target's view matches, name by name, for the Unicode ones
    for case in cases[:10]:
        if case.name not in source_refused:
            assert case.name in target_names or case.name.replace("/", ".") in target_names


def test_folder_names_the_other_way_slash_inside_a_level(
    account, dovecot_source, dovecot_target, tmp_path
):
    """From a '.' server to a '/' server: '.' is the source's hierarchy and becomes '/'; Unicode
    and spaces arrive as they are. Dovecot itself refuses '/' inside a name on a '.' Maildir++
    server, so that case cannot come from it (the unit tests cover the renaming)."""
    src = account(dovecot_target)
    dst = account(dovecot_source)
    client = src.client()
    made = {}
    for name in ("with/slash", "Ünï code", "dotted.child"):
        try:
            for depth in range(1, name.count(".") + 2):
                client.create_folder(".".join(name.split(".")[:depth]))
            client.append(name, b"Subject: x\r\n\r\nx\r\n")
            made[name] = "created"
        except Exception as exc:  # the server's words, for the report
            made[name] = f"source refused: {exc}"
    result = Job.between(src, dst, tmp_path / "j.sqlite").run("--json")
    assert result.returncode == 0, result.stderr
    targets = {f["source"]: f["target"] for f in json.loads(result.stdout)["folders"]}
    print(f"\n'.' -> '/': {made}; mapped: {targets}")
    assert made["with/slash"].startswith("source refused") and "with/slash" not in targets
    assert targets["dotted/child"] == "dotted/child"
    assert targets["Ünï code"] == "Ünï code"
