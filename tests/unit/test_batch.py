"""`migrator batch` without servers: the manifest's checks, the ledger and the plan, the per-host
scheduling, and whole batches of mbox -> Maildir accounts on the in-process Dask cluster."""

from __future__ import annotations

import csv
import pickle
import shutil
import signal
import threading
import time
import uuid
from pathlib import Path

import pytest

from migrator import batch as batch_module
from migrator.account import (
    CopyJob,
    RunSettings,
    SecretRecipe,
    connection_limits,
    job_side,
)
from migrator.batch import (
    DEFAULT_PER_HOST,
    DONE,
    FAILED,
    INTERRUPTED,
    NOT_RUN,
    PARTIAL,
    AccountResult,
    AccountTask,
    BatchSettings,
    HostSlots,
    Ledger,
    ManifestError,
    Selection,
    host_limits,
    journal_copied,
    journal_finished,
    load_manifest,
    next_ready,
    plan,
    run_account,
    run_batch,
    stop_accounts,
)
from migrator.checkpoint import Commit, Journal
from migrator.endpoints import ServerEndpoint
from migrator.engine import RunSummary
from migrator.errors import ConfigError
from migrator.model import MessageRef
from migrator.ui.batch import report_rows, results_json, results_table, write_report
from tests.unit.account_helpers import load_profile, resolve_secret

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.mbox"

HEADER = "name,source,target,source_password_env,target_password_file,folder,map,since,max_size"


def write(tmp_path: Path, text: str, name: str = "accounts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ManifestError) as info:
        load_manifest(path, env)
    return info.value.problems


# -- reading and checking manifests -------------------------------------------------------------


def test_csv_and_toml_manifests_give_the_same_accounts(tmp_path):
    csv_path = write(
        tmp_path,
        f"{HEADER}\n"
        "alice,imaps://alice@old.example.org,imaps://alice@new.example.org:1993,ALICE_PW,"
        "/etc/pw/alice,INBOX;Archive*,Old=New;A=B,2020-01-01,25M\n"
        "# a comment line\n"
        ",imaps://bob@old.example.org,maildir:/srv/bob,BOB_PW,,,,,\n",
    )
    toml_path = write(
        tmp_path,
        """
[[account]]
name = "alice"
source = "imaps://alice@old.example.org"
target = "imaps://alice@new.example.org:1993"
source_password_env = "ALICE_PW"
target_password_file = "/etc/pw/alice"
folder = ["INBOX", "Archive*"]
map = ["Old=New", "A=B"]
since = "2020-01-01"
max_size = "25M"

[[account]]
source = "imaps://bob@old.example.org"
target = "maildir:/srv/bob"
source-password-env = "BOB_PW"
""",
        "accounts.toml",
    )
    a, b = load_manifest(csv_path).accounts, load_manifest(toml_path).accounts
    assert [x.job for x in a] == [x.job for x in b]
    assert [x.name for x in a] == ["alice", "bob@old.example.org"] == [x.name for x in b]
    alice = a[0]
    assert alice.job.folder == ("INBOX", "Archive*")
    assert alice.job.map == ("Old=New", "A=B")
    assert alice.job.source_secret == SecretRecipe(env="ALICE_PW")
    assert alice.job.target_secret == SecretRecipe(file="/etc/pw/alice")
    assert alice.hosts == ("new.example.org", "old.example.org")
    assert a[1].hosts == ("old.example.org",)
    assert alice.where == "accounts.csv line 2" and a[1].where == "accounts.csv line 4"
    assert b[0].where == "accounts.toml line 2" and b[1].where == "accounts.toml line 13"
    assert len({x.journal for x in a}) == 2 and a[0].fingerprint != a[1].fingerprint


def test_a_missing_column_is_one_line_naming_it(tmp_path):
    path = write(tmp_path, "source,source_password_env\nimaps://a@h,PW\nimaps://b@h,PW\n")
    assert problems(path) == [
        "accounts.csv line 1 (the header): missing column target (every row needs source "
        "and target endpoints)"
    ]


def test_a_password_column_is_refused_and_its_value_never_shown(tmp_path):
    path = write(
        tmp_path,
        "source,target,password\nimaps://a@h,imaps://a@k,hunter2\n",
    )
    (line,) = problems(path)
    assert line.startswith("accounts.csv line 1 (the header), column password: a secret written")
    assert "password_env" in line and "hunter2" not in line
    toml = write(
        tmp_path,
        '[[account]]\nsource = "imaps://a@h"\ntarget = "imaps://a@k"\n'
        'target_password_env = "T"\nsource_password = "hunter2"\n',
        "m.toml",
    )
    (line,) = problems(toml)
    assert line.startswith("m.toml line 5, key source_password: a secret written")
    assert "source_password_env" in line and "hunter2" not in line


@pytest.mark.parametrize(
    "cells, column, needle",
    [
        ("imaps://a:hunter2@h,imaps://a@k,P,P", "source", "password in the URL is refused"),
        ("imaps://a@h,imaps://a@k,hunter2!,P", "source_password_env", "not the name of an"),
        ("imaps://a@h,imaps://a@k,P,", "target_password_env", "needs a password"),
        ("gmailx:bob@example.com,imaps://a@k,P,P", "source", "unknown profile 'gmailx'"),
        ("imaps://a@h,pop3s://a@k,P,P", "target", "cannot be used as a target"),
        ("ftp://a@h,imaps://a@k,P,P", "source", "unknown scheme"),
        ("imaps://a@h,,P,P", "target", "every account needs a target"),
    ],
)
def test_a_bad_cell_is_one_line_naming_row_and_column(tmp_path, cells, column, needle):
    path = write(
        tmp_path,
        "source,target,source_password_env,target_password_env\n"
        "imaps://ok@h,imaps://ok@k,P,P\n"
        f"{cells}\n",
    )
    (line,) = problems(path)
    assert line.startswith(f"accounts.csv line 3, column {column}: "), line
    assert needle in line and "hunter2" not in line


def test_a_password_command_that_prints_a_literal_is_refused(tmp_path):
    path = write(
        tmp_path,
        "source,target,source_password_cmd,target_password_cmd\n"
        "imaps://a@h,imaps://a@k,echo hunter2,pass show mail/a\n",
    )
    (line,) = problems(path)
    assert "line 2, column source_password_cmd: a command that prints a literal" in line
    assert "hunter2" not in line


def test_duplicate_rows_and_names_name_both_rows(tmp_path):
    path = write(
        tmp_path,
        "name,source,target,source_password_env,target_password_env\n"
        "a,imaps://a@h,imaps://a@k,P,P\n"
        "b,imaps://b@h,imaps://b@k,P,P\n"
        "c,imaps://a@H:993,imaps://a@k,Q,Q\n"
        "b,imaps://c@h,imaps://c@k,P,P\n",
    )
    assert problems(path) == [
        "accounts.csv line 4, columns source and target: duplicate of accounts.csv line 2 "
        "(the same account twice would copy its mail twice)",
        "accounts.csv line 5, column name: 'b' is already the name of the account at "
        "accounts.csv line 3",
    ]


def test_a_duplicate_name_is_reported_with_every_other_problem_at_once(tmp_path):
    path = write(
        tmp_path,
        "name,source,target,source_password_env,target_password_env,since\n"
        "u01,imaps://a@h,imaps://a@k,P,P,\n"
        "u01,imaps://b@h,imaps://b@k,P,P,\n"
        "u02,imaps://c@h,imaps://c@k,P,P,someday\n"
        "u02,imaps://d@h,imaps://d@k,P,P,never\n",
        "dup_names.csv",
    )
    assert problems(path) == [
        "dup_names.csv line 3, column name: 'u01' is already the name of the account at "
        "dup_names.csv line 2",
        "dup_names.csv line 4, column since: " + problems_of_since("someday"),
        "dup_names.csv line 5, column name: 'u02' is already the name of the account at "
        "dup_names.csv line 4",
        "dup_names.csv line 5, column since: " + problems_of_since("never"),
    ]


def problems_of_since(value: str) -> str:
    from migrator.filters import parse_date

    with pytest.raises(ValueError) as info:
        parse_date(value)
    return str(info.value)


def test_toml_problems_name_the_line_of_their_key(tmp_path):
    path = write(
        tmp_path,
        """# accounts
[[account]]
name = "u01"
source = "imaps://a@h"
target = "imaps://a@k"
source_password_env = "P"
target_password_env = "P"

[[account]]
name = "u01"
source = "imaps://b@h"
target = "nowhere:/x"
source_password_env = "P"
target_password_env = "P"
notes = \"\"\"
colour = "not a key: inside a string"
\"\"\"
max_size = "huge"

[settings]
x = 1
""",
        "m.toml",
    )
    found = problems(path)
    assert [p.split(": ")[0] for p in found] == [
        "m.toml line 20",  # [settings]
        "m.toml line 15, key notes",
        "m.toml line 10, key name",
        "m.toml line 12, key target",
        "m.toml line 18, key max_size",
    ], found
    assert "already the name of the account at m.toml line 2" in found[2]


def test_every_bad_row_is_reported_once_in_order(tmp_path):
    path = write(
        tmp_path,
        "source,target,source_password_env,target_password_env,since,max_size,map,flags\n"
        "imaps://a@h,imaps://a@k,P,P,yesterday,,,\n"
        "imaps://b@h,imaps://b@k,P,P,,big,,\n"
        "imaps://c@h,imaps://c@k,P,P,,,nothing,\n"
        "imaps://d@h,imaps://d@k,P,P,,,,seen;b@d\n"
        "imaps://e@h,imaps://e@k,P,P,,,,seen;flagged\n",
    )
    found = problems(path)
    assert [p.split(":")[0] for p in found] == [
        "accounts.csv line 2, column since",
        "accounts.csv line 3, column max_size",
        "accounts.csv line 4, column map",
        "accounts.csv line 5, column flags",
    ]


def test_unknown_columns_and_empty_manifests(tmp_path):
    (line,) = problems(write(tmp_path, "source,target,colour\n"))
    assert "column colour: unknown column; known columns: name, source, target" in line
    (line,) = problems(write(tmp_path, "source,target\n"))
    assert line == "accounts.csv: no accounts in the manifest"
    (line,) = problems(write(tmp_path, ""))
    assert "empty manifest" in line
    (line,) = problems(write(tmp_path, 'source = "x"\n[[account]\n', "x.toml"))
    assert line.startswith("x.toml line 2, column 10: not valid TOML (")
    assert "(at line" not in line


def test_local_runs_check_variables_and_files_here(tmp_path):
    path = write(
        tmp_path,
        "source,target,source_password_env,target_password_file,target_ca_file\n"
        f"imaps://a@h,imaps://a@k,SRC_PW,{tmp_path / 'nope'},{tmp_path / 'ca.pem'}\n",
    )
    load_manifest(path)  # on a cluster, these are the workers' business
    found = problems(path, env={"OTHER": "x"})
    assert [p.split(":")[0] for p in found] == [
        "accounts.csv line 2, column source_password_env",
        "accounts.csv line 2, column target_password_file",
        "accounts.csv line 2, column target_ca_file",
    ]
    (tmp_path / "nope").write_text("pw\n")
    (tmp_path / "ca.pem").write_text("x")
    load_manifest(path, env={"SRC_PW": "x"})


def test_the_same_default_name_twice_gets_the_row_number(tmp_path):
    path = write(
        tmp_path,
        "source,target\nmbox:/m/alice.mbox,maildir:/x/1\nmbox:/m/alice.mbox,maildir:/x/2\n",
    )
    names = [a.name for a in load_manifest(path).accounts]
    assert names == ["alice.mbox", "alice.mbox#2"]


# -- secrets -------------------------------------------------------------------------------------


def test_a_task_carries_recipes_never_secrets(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("file-secret-1\n")
    monkeypatch.setenv("ALICE_SRC", "env-secret-2")
    job = CopyJob(
        "imaps://alice@h",
        "imaps://alice@k",
        source_secret=SecretRecipe(env="ALICE_SRC"),
        target_secret=SecretRecipe(file=str(pw)),
    )
    task = AccountTask(
        "alice", "imaps://alice@h:993", "imaps://alice@k:993", job, RunSettings(), "j"
    )
    data = pickle.dumps(task)
    assert b"ALICE_SRC" in data and b"env-secret-2" not in data and b"file-secret-1" not in data
    assert resolve_secret(job.source_secret, "source", "src", "alice@h")() == "env-secret-2"
    assert resolve_secret(job.target_secret, "target", "dst", "alice@k")() == "file-secret-1"
    # MIGRATOR_SOURCE_PASSWORD belongs to a single `copy`, never to every account of a batch
    monkeypatch.delenv("ALICE_SRC")
    monkeypatch.setenv("MIGRATOR_SOURCE_PASSWORD", "global")
    with pytest.raises(ConfigError, match=r"ALICE_SRC .* is not set"):
        resolve_secret(job.source_secret, "source", "src", "alice@h")


# -- scheduling ----------------------------------------------------------------------------------


def manifest_of(tmp_path: Path, rows: list[tuple[str, str]], name: str = "m.csv"):
    lines = ["source,target,source_password_env,target_password_env"]
    lines += [f"{s},{t},P,P" for s, t in rows]
    return load_manifest(write(tmp_path, "\n".join(lines) + "\n", name))


def test_host_slots_cap_accounts_per_server(tmp_path):
    m = manifest_of(
        tmp_path,
        [
            ("imaps://a@one", "imaps://a@two"),
            ("imaps://b@one", "imaps://b@three"),
            ("imaps://c@one", "imaps://c@two"),
            ("imaps://d@four", "imaps://d@two"),
        ],
    )
    slots = HostSlots(host_limits(2))
    pending = list(m.accounts)
    started = []
    while (i := next_ready(pending, slots)) is not None:
        slots.take(pending[i].hosts)
        started.append(pending.pop(i).name)
    # "one" is full after a and b; d still fits ("four" and "two" have room)
    assert started == ["a@one", "b@one", "d@four"]
    assert slots.busy("one") == 2 and slots.busy("two") == 2
    slots.release(m.accounts[1].hosts)
    assert next_ready(pending, slots) is None  # c needs "two" too, which is still full
    slots.release(m.accounts[3].hosts)
    assert next_ready(pending, slots) == 0
    assert host_limits(None)("one") == DEFAULT_PER_HOST


def test_a_provider_profiles_connection_limit_is_its_hosts_default():
    gmail = load_profile("gmail")
    known = connection_limits()
    assert known["imap.gmail.com"] == gmail.limits.connections
    limit = host_limits(None, known)
    assert limit("imap.gmail.com") == gmail.limits.connections
    assert limit("mail.example.org") == DEFAULT_PER_HOST
    assert host_limits(7, known)("imap.gmail.com") == 7


def test_profile_endpoints_are_taken_and_unknown_ones_named(tmp_path):
    path = write(
        tmp_path,
        "source,target,source_password_env,target_password_env\n"
        "gmail:alice@gmail.com,imaps://a@k,P,P\n"
        "nosuch:bob@example.com,imaps://b@k,P,P\n",
    )
    (line,) = problems(path)
    assert line.startswith("accounts.csv line 3, column source: unknown profile 'nosuch'")


def test_a_gmail_row_validates_and_resolves_to_imap_gmail_com_without_connecting(
    tmp_path, monkeypatch
):
    monkeypatch.setattr("migrator.oauth.KeyringStore.get", lambda self, key: None)
    path = write(
        tmp_path,
        "source,target,source_password_env\n"
        f"gmail:alice@gmail.com,maildir:{tmp_path / 'alice'},ALICE_GMAIL\n",
    )
    (account,) = load_manifest(path, env={"ALICE_GMAIL": "app-password"}).accounts
    assert account.source == "gmail:alice@gmail.com" and account.name == "gmail:alice@gmail.com"
    assert account.hosts == ("imap.gmail.com",)  # the per-host caps count Gmail's server
    # on the worker: the secret found from the recipe, the profile's server; nothing connects
    monkeypatch.setenv("ALICE_GMAIL", "app-password")
    side = job_side(account.job.source, "source", account.job.source_secret, None, 5.0)
    assert side.server == ServerEndpoint(
        "imap", "implicit", "alice@gmail.com", "imap.gmail.com", 993
    )
    assert side.profile is not None and side.profile.name == "gmail"
    assert side.access is not None and side.access.profile is side.profile
    assert side.access.auth == "password" and side.access.secret() == "app-password"
    assert side.notices == ()
    store = side.store()  # built, not connected
    assert store.access.host == "imap.gmail.com" and store.access.port == 993


def test_a_manifest_row_takes_an_oauth2_token_command_run_on_the_worker(tmp_path, monkeypatch):
    monkeypatch.setattr("migrator.oauth.KeyringStore.get", lambda self, key: None)
    script = tmp_path / "token.sh"
    script.write_text("echo access-token-for-$1\n")
    path = write(
        tmp_path,
        "source,target,source_oauth2_token_cmd\n"
        f"outlook:bob@contoso.com,maildir:{tmp_path / 'bob'},sh {script} bob\n",
    )
    (account,) = load_manifest(path, env={}).accounts
    assert account.hosts == ("outlook.office365.com",)
    assert account.job.source_secret == SecretRecipe(oauth2_token_cmd=f"sh {script} bob")
    side = job_side(account.job.source, "source", account.job.source_secret, None, 5.0)
    assert side.access is not None and side.access.auth in ("xoauth2", "oauthbearer")
    assert side.access.secret() == "access-token-for-bob"
    inline = write(
        tmp_path,
        "source,target,source_oauth2_token_cmd\n"
        f"gmail:a@gmail.com,maildir:{tmp_path / 'a'},echo ya29.hunter2\n",
    )
    (line,) = problems(inline)
    assert "column source_oauth2_token_cmd: a command that prints a literal" in line
    assert "hunter2" not in line


def _result(account, status, **kw) -> AccountResult:
    return AccountResult(account.name, account.source, account.target, status, **kw)


def _finish_journal(path: Path, status: str) -> None:
    journal = Journal.open(path)
    try:
        journal.finish_run(journal.start_run("s", "t"), status, 0, 0, 0, 0)
    finally:
        journal.close()


def test_the_plan_skips_finished_accounts_and_waits_for_retry_failed(tmp_path):
    m = manifest_of(tmp_path, [(f"mbox:/m/{n}.mbox", f"maildir:/t/{n}") for n in "abcdef"])
    a, b, c, d, e, _ = m.accounts
    ledger = Ledger.open(tmp_path / "state")
    try:
        for account, status in ((a, DONE), (b, DONE), (c, FAILED), (d, PARTIAL), (e, "running")):
            ledger.started(account)
            ledger.record(_result(account, status, error=f"{account.name} broke"))
        _finish_journal(ledger.journal_path(a), "done")
        _finish_journal(ledger.journal_path(b), "interrupted")  # the ledger is not enough
        names = lambda p: [x.name for x in p.run]  # noqa: E731
        first = plan(m.accounts, ledger, Selection())
        assert names(first) == ["b.mbox", "e.mbox", "f.mbox"]
        assert {n: r.status for n, r in first.kept.items()} == {
            "a.mbox": DONE,
            "c.mbox": FAILED,
            "d.mbox": PARTIAL,
        }
        assert first.kept["c.mbox"].error == "c.mbox broke" and not first.kept["c.mbox"].ran
        assert names(plan(m.accounts, ledger, Selection(retry_failed=True))) == [
            "b.mbox",
            "c.mbox",
            "d.mbox",
            "e.mbox",
            "f.mbox",
        ]
        only = plan(m.accounts, ledger, Selection(only_failed=True))
        assert names(only) == ["c.mbox", "d.mbox"] and only.kept["f.mbox"].status == NOT_RUN
        assert names(plan(m.accounts, ledger, Selection(refresh=True)))[0] == "a.mbox"
        # the same account with another selection is new work
        changed = load_manifest(
            write(
                tmp_path,
                "source,target,folder\nmbox:/m/a.mbox,maildir:/t/a,INBOX\n",
                "changed.csv",
            )
        )
        assert names(plan(changed.accounts, ledger, Selection())) == ["a.mbox"]
    finally:
        ledger.close()


def test_one_batch_per_state_directory(tmp_path):
    first = Ledger.open(tmp_path)
    try:
        with pytest.raises(ConfigError, match="another migrator batch is using"):
            Ledger.open(tmp_path)
    finally:
        first.close()
    Ledger.open(tmp_path).close()


# -- whole batches, on the in-process Dask cluster ---------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def planned(self, plan, total):
        self.events.append(("planned", total))

    def account_started(self, name, worker):
        self.events.append(("started", name))

    def account_progress(self, name, messages, messages_total, nbytes, bytes_total):
        self.events.append(("progress", name, messages, messages_total))

    def account_finished(self, result):
        self.events.append(("finished", result.name, result.status))

    def notice(self, text):
        self.events.append(("notice", text))


def test_a_batch_of_archives_runs_resumes_and_reports(tmp_path):
    for n in range(5):
        shutil.copy(SAMPLE, tmp_path / f"user{n}.mbox")
    rows = [(f"mbox:{tmp_path}/user{n}.mbox", f"maildir:{tmp_path}/out/user{n}") for n in range(5)]
    rows.append((f"mbox:{tmp_path}/missing.mbox", f"maildir:{tmp_path}/out/missing"))
    m = manifest_of(tmp_path, rows)
    settings = BatchSettings(state_dir=tmp_path / "state", jobs=3)
    seen = Recorder()
    result = run_batch(m, settings, seen)
    statuses = [(a.name, a.status, a.copied) for a in result.accounts]
    assert statuses == [(f"user{n}.mbox", DONE, 12) for n in range(5)] + [
        ("missing.mbox", FAILED, 0)
    ]
    assert "missing.mbox" in (result.accounts[-1].error or "")
    assert not result.ok and result.ran == 6
    assert seen.events[0] == ("planned", 6)
    assert ("finished", "user3.mbox", DONE) in seen.events
    assert any(e[:2] == ("progress", "user3.mbox") and e[3] == 12 for e in seen.events)
    assert all(journal_finished(Path(a.journal)) for a in result.accounts[:5])

    # rerun: nothing to do, the failed account waits for --retry-failed
    again = run_batch(m, settings, Recorder())
    assert again.ran == 0 and [a.ran for a in again.accounts] == [False] * 6
    assert again.accounts[-1].status == FAILED and not again.ok

    # the failed account fixed, retried: the others are left alone
    shutil.copy(SAMPLE, tmp_path / "missing.mbox")
    retry = BatchSettings(state_dir=tmp_path / "state", selection=Selection(only_failed=True))
    fixed = run_batch(m, retry, Recorder())
    assert fixed.ran == 1 and fixed.ok and fixed.accounts[-1].copied == 12

    # --refresh runs everything again and copies nothing twice
    refresh = BatchSettings(state_dir=tmp_path / "state", selection=Selection(refresh=True))
    again = run_batch(m, refresh, Recorder())
    assert again.ran == 6 and again.total("copied") == 0 and again.total("skipped") == 72

    table = results_table(fixed)
    assert "user0.mbox" in table and "done before" in table and "6/6 done" in table
    data = results_json(fixed)
    assert data["accounts_done"] == 6 and data["accounts"][-1]["copied"] == 12
    write_report(tmp_path / "report.csv", fixed)
    with open(tmp_path / "report.csv", newline="") as fh:
        rows_out = list(csv.reader(fh))
    assert rows_out == list(report_rows(fixed))
    assert rows_out[0][:4] == ["name", "source", "target", "status"] and len(rows_out) == 7
    assert rows_out[1][3:5] == ["done", "no"]


# -- stopping: in the threads where Dask runs accounts ------------------------------------------


class SlowAccounts:
    """Stands in for run_job: each account copies until told to stop (or 30 s), as the engine
    does, and says when it started and when it saw the stop."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, job, settings, state_path, reporter, stop):
        with self.lock:
            self.started.append(job.source)
        interrupted = stop.wait(30)
        with self.lock:
            if interrupted:
                self.stopped.append(job.source)
        return RunSummary(folders=[], seconds=0.0, interrupted=interrupted)

    def wait(self, what: str, n: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(getattr(self, what)) < n:
            assert time.monotonic() < deadline, f"{what}: {getattr(self, what)}"
            time.sleep(0.02)


def _task(tmp_path: Path, n: int, topic: str) -> AccountTask:
    job = CopyJob(source=f"mbox:{tmp_path}/u{n}.mbox", target=f"maildir:{tmp_path}/out/u{n}")
    return AccountTask(
        name=f"u{n}",
        source=job.source,
        target=job.target,
        job=job,
        settings=RunSettings(),
        journal=str(tmp_path / "journals" / f"u{n}.sqlite"),
        topic=topic,
        lock_wait=5,
    )


@pytest.fixture
def local_dask():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=1, threads_per_worker=3, processes=False, dashboard_address=None
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_stop_accounts_reaches_accounts_running_in_dask_worker_threads(
    tmp_path, monkeypatch, local_dask
):
    fake = SlowAccounts()
    monkeypatch.setattr(batch_module, "run_job", fake)
    topic = f"test-{uuid.uuid4().hex}"
    futures = [local_dask.submit(run_account, _task(tmp_path, n, topic)) for n in range(2)]
    fake.wait("started", 2)
    started = time.monotonic()
    assert stop_accounts(topic) == 2
    results = [f.result(timeout=10) for f in futures]
    assert time.monotonic() - started < 5
    assert [r.status for r in results] == [INTERRUPTED, INTERRUPTED]
    assert len(fake.stopped) == 2
    # an account of a stopped batch that starts only now does not copy at all
    late = local_dask.submit(run_account, _task(tmp_path, 3, topic)).result(timeout=10)
    assert late.status == NOT_RUN and late.error is None and len(fake.started) == 2


def test_an_account_nobody_waits_for_any_more_stops_by_itself(tmp_path, monkeypatch, local_dask):
    """The client cancelled it, or left (the scheduler then releases its tasks): the account
    commits and ends rather than copying on for nobody."""
    fake = SlowAccounts()
    monkeypatch.setattr(batch_module, "run_job", fake)
    future = local_dask.submit(run_account, _task(tmp_path, 0, f"test-{uuid.uuid4().hex}"))
    fake.wait("started", 1)
    future.cancel()
    fake.wait("stopped", 1, timeout=5)


def test_ctrl_c_stops_a_local_batch_within_seconds(tmp_path, monkeypatch):
    fake = SlowAccounts()
    monkeypatch.setattr(batch_module, "run_job", fake)
    rows = [(f"mbox:{tmp_path}/u{n}.mbox", f"maildir:{tmp_path}/out/u{n}") for n in range(5)]
    m = manifest_of(tmp_path, rows)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:
        fake.wait("started", 3)
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    started = time.monotonic()
    result = run_batch(m, BatchSettings(state_dir=tmp_path / "state", jobs=3), Recorder())
    assert time.monotonic() - started < 15
    assert result.interrupted and sorted(fake.stopped) == sorted(fake.started)
    statuses = [a.status for a in result.accounts]
    assert statuses == [INTERRUPTED] * 3 + [NOT_RUN] * 2
    assert not any(a.error for a in result.accounts)  # none abandoned


# -- what an account copied, by its journal -----------------------------------------------------


def _refs(n: int, start: int = 0) -> list[MessageRef]:
    return [MessageRef(id=str(i), size=100 + i, key=f"k{i}") for i in range(start, start + n)]


def test_copied_counts_every_attempt_and_the_appends_a_dead_worker_left_in_doubt(tmp_path):
    path = tmp_path / "j.sqlite"
    src, dst = ("INBOX",), ("INBOX",)
    journal = Journal.open(path)
    journal.begin(src, "1", dst, _refs(3))  # an earlier run: copied 3 before this batch
    journal.record(Commit(src, "1", dst, [(r, None) for r in _refs(3)], []))
    journal.begin(src, "1", dst, _refs(2, 3))  # ... and left 2 in doubt, already in the target
    journal.close()
    time.sleep(0.01)

    journal = Journal.open(path)  # attempt 1 of batch run "b1"
    journal.begin_attempt("b1")
    journal.begin(src, "1", dst, _refs(4, 5))
    journal.record(Commit(src, "1", dst, [(r, None) for r in _refs(4, 5)], []))
    journal.begin(src, "1", dst, _refs(3, 9))  # its worker dies with these in flight
    journal.close()

    journal = Journal.open(path)  # attempt 2, on another worker
    journal.begin_attempt("b1")
    # the target holds what was in doubt except message 11: found, and 11 copied again
    journal.reconcile(src, "1", dst, _refs(2, 3) + _refs(2, 9))
    journal.record(Commit(src, "1", dst, [(r, None) for r in _refs(1, 11)], []))
    journal.close()

    peek = Journal.peek(path)
    assert peek is not None
    try:
        count, nbytes = peek.copied_in("b1") or (0, 0)
        # 2 + 4 + 2 + 1: what reached the target during "b1", whoever put it there
        assert count == 9
        assert nbytes == sum(r.size for r in _refs(2, 3) + _refs(4, 5) + _refs(3, 9))
        assert peek.copied_in("another run") is None
    finally:
        peek.close()
    assert journal_copied(path, "b1") == (count, nbytes)
    assert journal_copied(tmp_path / "none.sqlite", "b1") is None


def test_counts_in_words_take_the_right_plural(capsys):
    from migrator.batch import Plan
    from migrator.ui.batch import BatchLines
    from migrator.ui.text import plural

    assert plural(1, "account") == "1 account" and plural(0, "account") == "0 accounts"
    kept = AccountResult("k", "s", "t", DONE, ran=False)
    BatchLines().planned(Plan(run=[], kept={"k": kept}), 1)
    BatchLines().planned(Plan(run=[], kept={"k": kept, "l": kept}), 2)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("migrator: 1 account to run; 1 left as it was (")
    assert err[1].startswith("migrator: 2 accounts to run; 2 left as they were (")
