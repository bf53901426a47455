"""Issue 6: verify, folders, status, check and the progress display, against real Dovecot."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from tests.corpus import make_corpus, seed_imap, snapshot_imap
from tests.dovecot import make_untrusted_ca
from tests.integration.jobs import Job, base_env, migrator_cmd, run_in_pty
from tests.integration.test_imap_to_imap import _journal_done, _wait_for_progress


def _copied_pair(account, dovecot_source, dovecot_target, tmp_path, n=60, seed=21):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), make_corpus(seed, n), "/")
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    assert job.run().returncode == 0
    return src, dst, job


def _run(job: Job, command: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        migrator_cmd(command, job.source, job.target, *job.args, *extra),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def test_verify_equal_then_names_the_missing_message_and_the_changed_flag(
    account, dovecot_source, dovecot_target, tmp_path
):
    _src, dst, job = _copied_pair(account, dovecot_source, dovecot_target, tmp_path)
    ok = _run(job, "verify", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["missing"] == 0 and data["source"] == data["target"] == 60

    client = dst.client()
    client.select_folder("Archive.2023")
    uids = sorted(client.search("ALL"))
    gone = client.fetch([uids[0]], ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID SUBJECT)]"])[uids[0]]
    client.delete_messages([uids[0]])
    client.expunge()
    client.add_flags([uids[1]], ["\\Flagged"])
    client.remove_flags([uids[1]], ["\\Seen"])
    flagged = client.fetch([uids[1]], ["BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "FLAGS"])[uids[1]]

    bad = _run(job, "verify", "--list")
    assert bad.returncode == 1, bad.stderr
    missing = [line for line in bad.stdout.splitlines() if line.startswith("missing:")]
    assert len(missing) == 1 and "Archive/2023" in missing[0]
    header = gone[b"BODY[HEADER.FIELDS (MESSAGE-ID SUBJECT)]"].decode()
    subject = header.split("Subject:", 1)[1].strip().splitlines()[0]
    assert subject[:20] in missing[0]
    differ = [line for line in bad.stdout.splitlines() if line.startswith("flags differ:")]
    assert len(differ) == 1
    flag_subject = flagged[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().split(":", 1)[1].strip()
    assert flag_subject.splitlines()[0][:20] in differ[0]
    assert "\\Flagged" in differ[0]
    data = json.loads(_run(job, "verify", "--json").stdout)
    assert data["missing"] == 1 and data["flag_differences"] == 1
    # the journal says everything was copied; verify does not believe it
    assert _run(job, "verify", "--by", "message-id").returncode == 1


def test_folders_matches_the_server(account, dovecot_source, dovecot_target, tmp_path):
    src = account(dovecot_source)
    msgs = make_corpus(22, 80)
    seed_imap(src.client(), msgs, "/")
    job = Job.between(src, account(dovecot_target), tmp_path / "j.sqlite")
    result = subprocess.run(
        migrator_cmd("folders", job.source, "--ca-file", job.args[1], "--json"),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = {r["folder"]: r for r in json.loads(result.stdout)["folders"]}
    snapshot = snapshot_imap(src.client())
    for name, messages in snapshot.items():
        assert rows[name]["messages"] == len(messages), name
        assert rows[name]["bytes"] == sum(len(m.body) for m in messages), name
    assert "Перепи́ска/Ünïcødé" in rows and rows["Sent"]["special_use"] == "\\Sent"
    # with --target, the mapping copy would apply
    mapped = subprocess.run(
        migrator_cmd(
            "folders",
            job.source,
            "--ca-file",
            job.args[1],
            "--target",
            job.target,
            "--target-ca-file",
            job.args[3],
            "--json",
            "--exclude",
            "Trash",
        ),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    targets = {r["folder"]: r["target"] for r in json.loads(mapped.stdout)["folders"]}
    assert targets["Archive/2023/Q1"] == "Archive/2023/Q1" and targets["Trash"] is None
    table = subprocess.run(
        migrator_cmd("folders", job.source, "--ca-file", job.args[1]),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert all(len(line) <= 80 for line in table.stdout.splitlines())


def test_status_after_a_kill_adds_up_and_names_refused_messages(
    account, dovecot_source, dovecot_target, tmp_path
):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), make_corpus(23, 900, folders=("INBOX", "Archive")), "/")
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    proc = job.start("--workers", "1")
    _wait_for_progress(proc, job.state, 0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _journal_done(job.state) > 0
    result = subprocess.run(
        migrator_cmd("status", "--state", str(job.state), "--json"),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    counts = {name: len(v) for name, v in snapshot_imap(src.client()).items()}
    assert {f["source"] for f in data["folders"]} <= set(counts)
    pending = 0
    for folder in data["folders"]:
        settled = folder["copied"] + folder["skipped"] + folder["failed"]
        assert settled + folder["pending"] == counts[folder["source"]], folder
        pending += folder["pending"]
    assert pending > 0
    assert data["runs"][-1]["ended"] is None
    text = subprocess.run(
        migrator_cmd("status", job.source, job.target, "--state", str(job.state)),
        env=job.env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert "did not finish" in text.stdout


QUOTA_CONF = """
mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=100K
}
"""


def test_status_shows_a_refused_message_with_the_servers_reason(
    account, dovecot_source, dovecot_tmp, tls_files
):
    """A target with a 100 KB quota refuses one big message: the run goes on, exits 1, and
    status names the message with the server's reason; a rerun retries it."""
    from tests.dovecot import DovecotServer

    small = DovecotServer(
        dovecot_tmp / "small", separator=".", tls=tls_files, extra_conf=QUOTA_CONF
    )
    small.start()
    try:
        src, dst = account(dovecot_source), account(small)
        client = src.client()
        client.append("INBOX", b"Subject: small\r\nMessage-ID: <s@x>\r\n\r\nhello\r\n")
        client.append(
            "INBOX", b"Subject: huge\r\nMessage-ID: <h@x>\r\n\r\n" + b"x" * 200_000 + b"\r\n"
        )
        client.append("INBOX", b"Subject: small2\r\nMessage-ID: <t@x>\r\n\r\nhello\r\n")
        job = Job.between(src, dst, dovecot_tmp / "j.sqlite")
        result = job.run()
        assert result.returncode == 1, result.stderr
        assert "failed: INBOX #2" in result.stdout and "uota" in result.stdout
        status = subprocess.run(
            migrator_cmd("status", "--state", str(job.state)),
            env=job.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=60,
        )
        line = next(x for x in status.stdout.splitlines() if x.startswith("failed:"))
        assert "INBOX #2" in line and "uota" in line, status.stdout
        assert [m.body[:15] for m in snapshot_imap(dst.client())["INBOX"]] == [
            b"Subject: small\r",
            b"Subject: small2",
        ]
        again = job.run("--json")
        assert again.returncode == 1 and json.loads(again.stdout)["failed"] == 1
    finally:
        small.close()


def test_check_good_and_bad(account, dovecot_source, tmp_path):
    src = account(dovecot_source)
    env = base_env(MIGRATOR_SOURCE_PASSWORD=src.password)
    ca = str(dovecot_source.ca_file)
    good = subprocess.run(
        migrator_cmd("check", src.url("imaps"), "--ca-file", ca),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert good.returncode == 0, good.stderr
    for needle in ("UIDPLUS", "MULTIAPPEND", "TLSv1.", "greeting", "localhost"):
        assert needle in good.stdout, needle
    wrong = subprocess.run(
        migrator_cmd("check", src.url("imaps"), "--ca-file", ca),
        env=base_env(MIGRATOR_SOURCE_PASSWORD="nope-Secret-3"),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert wrong.returncode == 3 and len(wrong.stderr.strip().splitlines()) == 1
    assert "nope-Secret-3" not in wrong.stderr
    untrusted = subprocess.run(
        migrator_cmd(
            "check", src.url("imaps"), "--ca-file", str(make_untrusted_ca(tmp_path / "ca2"))
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert untrusted.returncode == 3 and "not trusted" in untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1


def test_progress_bars_on_a_terminal_and_not_on_a_pipe(
    account, dovecot_source, dovecot_target, tmp_path
):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), make_corpus(24, 120), "/")
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    shown = run_in_pty(job.cmd(), dict(job.env, COLUMNS="80"))
    assert b"messages" in shown and b"msg/s" in shown, shown[-2000:]
    assert b"100%|" in shown and b"\x1b[" in shown  # bars redrawn in place
    other = Job.between(src, account(dovecot_target), tmp_path / "k.sqlite")
    piped = other.run()
    assert piped.returncode == 0
    assert "%|" not in piped.stderr and "\r" not in piped.stderr
    assert "INBOX -> INBOX: " in piped.stderr  # a log line per folder instead


def test_log_file_has_a_line_per_folder(account, dovecot_source, dovecot_target, tmp_path):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), make_corpus(25, 30), "/")
    job = Job.between(src, dst, tmp_path / "j.sqlite")
    log = tmp_path / "run.log"
    assert job.run("--quiet", "--log-file", str(log)).returncode == 0
    lines = log.read_text().splitlines()
    assert any("INBOX -> INBOX: " in line for line in lines)
    assert oct(log.stat().st_mode & 0o777) == "0o600"
    assert src.password not in log.read_text()
