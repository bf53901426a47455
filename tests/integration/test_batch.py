"""Issue 9: `migrator batch` against real Dovecot servers and a real Dask cluster.

Twenty accounts per test, their sources on ``dovecot_source`` ('/') and their targets alternately
on ``dovecot_target`` ('.') and a second target server started here. Source passwords come from
environment variables named in the manifest, target passwords from password files. Every check
compares full snapshots (bytes, flags, INTERNALDATE) of each account's source and target, so a
message copied twice, lost or altered fails the test.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import make_corpus, seed_imap, snapshot_imap
from tests.dovecot import DovecotServer, TlsFiles
from tests.integration.jobs import REPO, base_env, run_in_pty

ACCOUNTS = 20
MESSAGES = 30
COLUMNS = (
    "name,source,target,source_password_env,target_password_file,source_ca_file,target_ca_file"
)


def batch_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "migrator", "batch", *args]


@pytest.fixture(scope="module")
def second_target(dovecot_root: Path, tls_files: TlsFiles) -> Iterator[DovecotServer]:
    """Another target server, '/' separator, for half of the accounts."""
    server = DovecotServer(dovecot_root / "batch-target-2", separator="/", tls=tls_files)
    try:
        server.start()
        yield server
    finally:
        server.close()


@dataclass
class Fleet:
    """N source accounts with mail and N empty targets, a manifest naming them, and the
    environment holding the source passwords (the target passwords are in files)."""

    pairs: list[tuple[object, object]]
    manifest: Path
    env: dict[str, str]
    state: Path
    messages: int = MESSAGES

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240):
        return subprocess.run(
            batch_cmd(str(self.manifest), "--state-dir", str(self.state), *args),
            env=env or self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )

    def run_json(self, *args: str, expect: int = 0, **kw) -> dict:
        result = self.run("--json", *args, **kw)
        assert result.returncode == expect, result.stderr
        assert "Traceback" not in result.stderr
        return json.loads(result.stdout)

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            batch_cmd(str(self.manifest), "--state-dir", str(self.state), *args),
            env=env or self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def ledger(self, column: str = "status") -> dict[str, str]:
        """Account -> status (or another column), as the batch's ledger has it now."""
        path = self.state / "batch.sqlite"
        if not path.exists():
            return {}
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                return dict(db.execute(f"SELECT name, {column} FROM accounts").fetchall())
        except sqlite3.OperationalError:
            return {}

    def wait_until(self, done: int, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(s == "done" for s in self.ledger().values()) >= done:
                return
            time.sleep(0.02)
        raise AssertionError(f"the batch did not reach {done} accounts: {self.ledger()}")

    def target_count(self) -> int:
        """Messages in all the targets now (STATUS of every folder)."""
        total = 0
        for _, dst in self.pairs:
            client = dst.client()  # type: ignore[attr-defined]
            try:
                total += _messages_in(client)
            finally:
                with contextlib.suppress(Exception):
                    client.logout()
        return total

    def assert_exactly_once(self) -> None:
        for src, dst in self.pairs:
            a, b = snapshot_imap(src.client()), snapshot_imap(dst.client())  # type: ignore[attr-defined]
            assert sum(map(len, a.values())) == self.messages
            for folder, messages in a.items():
                assert b.get(folder) == messages, (
                    f"{src.user} {folder}: {len(messages)} in source, "  # type: ignore[attr-defined]
                    f"{len(b.get(folder, []))} in target"
                )
            extra = {f: len(v) for f, v in b.items() if f not in a and v}
            assert not extra, extra


@pytest.fixture
def fleet(
    account, dovecot_source, dovecot_target, second_target, dovecot_tmp, tls_files
) -> Callable[..., Fleet]:
    def make(
        n: int = ACCOUNTS, seed: int = 0, prefix: str = "b", messages: int = MESSAGES
    ) -> Fleet:
        env = base_env()
        rows = [COLUMNS]
        pairs = []
        for i in range(n):
            src = account(dovecot_source, prefix=prefix)
            dst = account(dovecot_target if i % 2 == 0 else second_target, prefix=prefix)
            seed_imap(src.client(), make_corpus(seed * 100 + i, messages), "/")
            var = f"BATCH_SRC_PW_{i}"
            env[var] = src.password
            pw_file = dovecot_tmp / f"target-{i}.pw"
            pw_file.write_text(dst.password + "\n")
            pw_file.chmod(0o600)
            ca = tls_files.ca_file
            rows.append(
                f"acct{i:02d},{src.url('imaps')},{dst.url('imaps')},{var},{pw_file},{ca},{ca}"
            )
            pairs.append((src, dst))
        manifest = dovecot_tmp / "accounts.csv"
        manifest.write_text("\n".join(rows) + "\n")
        return Fleet(pairs, manifest, env, dovecot_tmp / "state", messages)

    return make


# -- 1. twenty accounts, four at a time ----------------------------------------------------------


def test_twenty_accounts_four_at_a_time_exactly_once_and_a_rerun_does_nothing(fleet):
    f = fleet()
    report = f.state.parent / "report.csv"
    data = f.run_json("--jobs", "4", "--report", str(report))
    assert (
        data["accounts_done"] == ACCOUNTS
        and data["accounts_ran"] == ACCOUNTS
        and data["accounts_failed"] == 0
    )
    assert all(a["copied"] == MESSAGES and a["status"] == "done" for a in data["accounts"])
    assert data["messages_copied"] == ACCOUNTS * MESSAGES
    f.assert_exactly_once()
    with open(report, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == [f"acct{i:02d}" for i in range(ACCOUNTS)]
    assert {r["status"] for r in rows} == {"done"} and {r["copied"] for r in rows} == {"30"}
    journals = list((f.state / "journals").glob("*.sqlite"))
    assert len(journals) == ACCOUNTS
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in journals)

    started = time.monotonic()
    again = f.run()
    elapsed = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert elapsed < 2.0, f"a rerun with nothing to do took {elapsed:.2f}s"
    assert again.stdout.count("done before") == ACCOUNTS and "20/20 done" in again.stdout
    f.assert_exactly_once()


def test_a_terminal_shows_an_overall_bar_and_a_bar_per_running_account(fleet):
    f = fleet(4, seed=3)
    shown = run_in_pty(
        batch_cmd(str(f.manifest), "--state-dir", str(f.state), "--jobs", "2"), f.env
    )
    assert b"accounts: 100%|" in shown and b"4/4" in shown, shown[-2000:]
    assert b"acct00" in shown and b"msg" in shown  # a bar per account while it runs
    assert b"\x1b[" in shown  # bars redrawn in place
    assert b"4/4 done" in shown  # and the table at the end
    f.assert_exactly_once()


def test_a_failed_account_exits_1_names_its_error_and_waits_for_retry_failed(fleet):
    f = fleet(3, seed=4)
    pw_file = f.manifest.parent / "target-1.pw"
    good = pw_file.read_text()
    pw_file.write_text("wrong\n")
    result = f.run("--report", str(f.state.parent / "r.csv"))
    assert result.returncode == 1, result.stderr
    assert "acct01   failed" in result.stdout and "2/3 done" in result.stdout
    assert "first error per account:" in result.stdout
    assert "acct01: imaps://" in result.stdout and "authentication" in result.stdout.lower()
    assert "wrong" not in result.stdout + result.stderr
    again = f.run_json(expect=1)  # left alone: still failed, nothing run
    assert again["accounts_ran"] == 0 and again["accounts_failed"] == 1
    pw_file.write_text(good)
    fixed = f.run_json("--retry-failed")
    assert fixed["accounts_ran"] == 1 and fixed["accounts_done"] == 3
    f.assert_exactly_once()


# -- 2. SIGKILL half-way ------------------------------------------------------------------------


def test_sigkill_half_way_then_rerun_completes_exactly_once(fleet):
    f = fleet(seed=1)
    proc = f.start("--jobs", "2")
    f.wait_until(ACCOUNTS // 4, proc)
    time.sleep(0.1)
    assert proc.poll() is None, "the batch finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    status = f.ledger()
    assert "running" in status.values(), status  # killed with accounts in flight
    assert sum(s == "done" for s in status.values()) < ACCOUNTS

    data = f.run_json("--jobs", "4")
    resumed = [a for a in data["accounts"] if a["ran"]]
    assert data["accounts_done"] == ACCOUNTS
    assert len(resumed) == ACCOUNTS - sum(s == "done" for s in status.values())
    f.assert_exactly_once()


# -- 3. a real Dask scheduler and two workers ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DaskCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1 (``python -m dask``, the same
    entry point as the `dask` command), stopped at the end."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "dask", *argv],
            # as README says for Python 3.11 < 3.11.9 (CPython gh-106883)
            env=dict(self.env, DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED="False"),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def start(self, workers: int = 2) -> None:
        self._spawn(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
        )
        # Workers listen on ports of their own choosing: one started before the scheduler has
        # bound its port could take it (seen on Python 3.13), so they start once it listens.
        self.wait_for_scheduler()
        for n in range(workers):
            self._spawn(
                f"worker{n}",
                [
                    "worker",
                    self.address,
                    "--name",
                    f"worker{n}",
                    "--nthreads",
                    "2",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--death-timeout",
                    "60",
                    "--local-directory",
                    str(self.directory / f"worker{n}"),
                ],
            )
        self.wait_for_workers(workers)

    def wait_for_scheduler(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["scheduler"].poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"the Dask scheduler did not listen within {timeout}s: {self.logs()}")

    def wait_for_workers(self, n: int, timeout: float = 60) -> None:
        from distributed import Client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with Client(self.address, timeout="5s") as client:
                    client.wait_for_workers(n, timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (OSError, TimeoutError):
                time.sleep(0.2)
        raise AssertionError(f"no {n} Dask workers after {timeout}s: {self.logs()}")

    def worker_addresses(self) -> list[str]:
        from distributed import Client

        with Client(self.address, timeout="5s") as client:
            return list(client.scheduler_info()["workers"])

    def name_of(self, address: str) -> str:
        from distributed import Client

        with Client(self.address, timeout="5s") as client:
            return str(client.scheduler_info()["workers"][address]["name"])

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(timeout=30)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}"
            for p in sorted(self.directory.glob("*.log"))
        )

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)


def test_on_a_dask_cluster_secrets_stay_on_workers_and_a_dead_worker_loses_nothing(
    fleet, dovecot_tmp
):
    count = 12
    f = fleet(count, seed=2)
    # The workers have the source passwords; the client that submits the batch does not.
    worker_env = dict(f.env, PYTHONPATH=str(REPO))
    client_env = {k: v for k, v in f.env.items() if not k.startswith("BATCH_SRC_PW_")}
    cluster = DaskCluster(dovecot_tmp, worker_env)
    try:
        cluster.start(workers=2)
        # A first batch of 4 accounts runs on both workers.
        lines = f.manifest.read_text().splitlines()
        first = f.manifest.with_name("first.csv")
        first.write_text("\n".join(lines[:5]) + "\n")
        result = subprocess.run(
            batch_cmd(
                str(first), "--state-dir", str(f.state), "--cluster", cluster.address, "--json"
            ),
            env=client_env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=180,
        )
        assert result.returncode == 0, result.stderr + cluster.logs()
        data = json.loads(result.stdout)
        copied_first = data["messages_copied"]
        assert data["accounts_done"] == 4
        assert {a["worker"] for a in data["accounts"]} == set(cluster.worker_addresses())

        # The whole manifest, four accounts at a time; a worker dies half-way.
        victim, survivor = cluster.worker_addresses()
        victim_name = cluster.name_of(victim)
        proc = f.start("--cluster", cluster.address, "--jobs", "4", "--json", env=client_env)
        deadline = time.monotonic() + 120
        lost: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            status, worker, since = f.ledger(), f.ledger("worker"), f.ledger("updated")
            # an account the victim has only just started: it cannot finish before the kill
            fresh = [
                n
                for n, s in status.items()
                if s == "running" and worker[n] == victim and time.time() - since[n] < 0.3
            ]
            if fresh and sum(s == "done" for s in status.values()) >= 6:
                cluster.kill(victim_name)
                lost = [n for n, s in status.items() if s == "running" and worker[n] == victim]
                break
            time.sleep(0.01)
        assert lost, f"no account started on {victim} after 6 were done: {f.ledger()}"
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode() + cluster.logs()
        data = json.loads(out)
        assert data["accounts_done"] == count and data["accounts_ran"] == count - 4
        by_name = {a["name"]: a for a in data["accounts"]}
        # what the dead worker was copying was finished by the other one (all but a freshly
        # started one could have finished in the instant before the kill)
        moved = [n for n in lost if by_name[n]["worker"] == survivor]
        assert moved, [(n, by_name[n]["worker"], victim, survivor) for n in lost]
        # what the dead worker copied counts once, in the account that was run again
        assert copied_first + data["messages_copied"] == count * MESSAGES, data
        f.assert_exactly_once()
    finally:
        cluster.close()


# -- 5. Ctrl-C: a stop that stops, and numbers that add up -------------------------------------


def _messages_in(client: Any) -> int:
    """Messages in every folder of one account now, over a connection kept open."""
    total = 0
    for _flags, _sep, folder in client.list_folders():
        with contextlib.suppress(Exception):
            total += client.folder_status(folder, [b"MESSAGES"])[b"MESSAGES"]
    return total


def _interrupt_then_rerun(f: Fleet, args: tuple[str, ...], env: dict[str, str]) -> None:
    """SIGINT while accounts copy: exit 130 within 20 s; nothing lands in a target after the
    client has gone; the rerun finishes exactly-once; copied in both runs adds up to the
    sources' messages."""
    total = len(f.pairs) * f.messages
    proc = f.start("--jobs", "3", "--workers", "1", "--json", *args, env=env)
    # The first account is in the first wave (--jobs 3). SIGINT goes the moment its target holds
    # some but not half of its mail, so that it is caught mid-copy: one open connection, polled
    # often (logging in to every target at each poll took longer than a whole account's copy).
    watch = f.pairs[0][1].client()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if 0 < _messages_in(watch) < f.messages // 2:
                break
            time.sleep(0.005)
    finally:
        with contextlib.suppress(Exception):
            watch.logout()
    assert proc.poll() is None, "the batch finished before it could be interrupted"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=30)
        raise AssertionError("the batch did not stop within 20 s of SIGINT") from None
    took = time.monotonic() - sent
    assert proc.returncode == 130, err.decode()
    assert took < 20, took
    noise = [line for line in err.decode().splitlines() if not line.startswith("migrator:")]
    assert not noise, noise  # no library warnings (CancelledError, ...) on the terminal
    first = json.loads(out)
    assert first["interrupted"] is True and first["accounts_interrupted"] >= 1, first
    stopped = [a for a in first["accounts"] if a["status"] == "interrupted"]
    assert all(a["error"] is None for a in stopped), stopped  # each ended by itself
    landed = f.target_count()
    time.sleep(3)
    assert f.target_count() == landed, "a target kept growing after the client exited"
    assert first["messages_copied"] == landed  # what the run says it copied is what landed
    assert landed < total

    second = f.run_json("--jobs", "3", *args, env=env)
    assert second["accounts_done"] == len(f.pairs)
    assert first["messages_copied"] + second["messages_copied"] == total
    f.assert_exactly_once()


def test_sigint_stops_a_local_batch_and_the_counts_add_up(fleet):
    f = fleet(6, seed=5, messages=300)
    _interrupt_then_rerun(f, (), f.env)


def test_sigint_stops_a_batch_on_a_real_cluster_and_the_counts_add_up(fleet, dovecot_tmp):
    f = fleet(6, seed=6, messages=300)
    cluster = DaskCluster(dovecot_tmp, dict(f.env, PYTHONPATH=str(REPO)))
    try:
        cluster.start(workers=2)
        _interrupt_then_rerun(f, ("--cluster", cluster.address), f.env)
    finally:
        cluster.close()


def test_a_killed_client_leaves_no_worker_copying_and_no_lock_held(fleet, dovecot_tmp):
    """SIGKILL of the client, so nobody tells the workers: they stop their accounts themselves
    once the scheduler forgets the client's tasks, and the next run starts at once."""
    f = fleet(4, seed=7, messages=300)
    cluster = DaskCluster(dovecot_tmp, dict(f.env, PYTHONPATH=str(REPO)))
    try:
        cluster.start(workers=2)
        proc = f.start("--jobs", "4", "--workers", "1", "--cluster", cluster.address)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if f.target_count() >= len(f.pairs) * f.messages // 8:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the batch finished before it could be killed"
        proc.kill()
        proc.communicate(timeout=30)
        time.sleep(3)  # the watchers look every 0.5 s; an in-flight batch commits
        landed = f.target_count()
        time.sleep(3)
        assert f.target_count() == landed, "a worker kept copying for a client that is gone"
        for lock in (f.state / "journals").glob("*.lock"):  # no journal held by an orphan
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
        again = f.run_json("--cluster", cluster.address, "--jobs", "4")
        assert again["accounts_done"] == len(f.pairs)
        f.assert_exactly_once()
    finally:
        cluster.close()


# -- 4. bad manifests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, bad_row, needle",
    [
        (
            "source,source_password_env,source_ca_file",
            None,
            "line 1 (the header): missing column target",
        ),
        (COLUMNS, "x,gmailx:bob@example.com,{dst},P,{pw},,", "line 3, column source: unknown "),
        (COLUMNS + ",password", None, "line 1 (the header), column password: a secret written"),
        (COLUMNS, "again,{src},{dst},P,{pw},,", "line 3, columns source and target: duplicate"),
    ],
)
def test_a_bad_manifest_says_so_in_one_line_and_starts_nothing(
    account, dovecot_source, dovecot_target, dovecot_tmp, tls_files, header, bad_row, needle
):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), make_corpus(9, 5), "/")
    pw = dovecot_tmp / "pw"
    pw.write_text(dst.password + "\n")
    ca = tls_files.ca_file
    good = f"ok,{src.url('imaps')},{dst.url('imaps')},P,{pw},{ca},{ca}"
    if header == COLUMNS + ",password":
        good += ",hunter2"
    rows = [header, good]
    if bad_row:
        rows.append(bad_row.format(src=src.url("imaps"), dst=dst.url("imaps"), pw=pw))
    manifest = dovecot_tmp / "bad.csv"
    manifest.write_text("\n".join(rows) + "\n")
    state = dovecot_tmp / "state"
    result = subprocess.run(
        batch_cmd(str(manifest), "--state-dir", str(state)),
        env=base_env(P=src.password),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("migrator: error: bad.csv ") and needle in lines[0], lines[0]
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert not result.stdout and not state.exists()  # nothing started
    assert snapshot_imap(dst.client(), include_empty=False) == {}
