"""Issue 8: faults between migrator and its servers, through tests/faultproxy.py.

Every copy here ends with a full comparison of both accounts (bytes, flags, INTERNALDATE), so a
message lost, copied twice or altered by a reconnect fails the test.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import FLAGS, KEYWORDS, Msg, make_message, message_date, seed_imap, snapshot_imap
from tests.faultproxy import FaultProxy, LiteralTracker
from tests.integration.jobs import Job

FOLDERS = ("INBOX", "Archive/2023", "Перепи́ска")


# -- the proxy itself, against a plain echo server ---------------------------------------------


class _Echo:
    """A loopback echo server: what goes up comes back down."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo():
    server = _Echo()
    yield server
    server.close()


def _talk(port: int, payload: bytes, timeout: float = 5) -> tuple[bytes, str]:
    """Send payload, read until EOF or error; return what came back and how it ended."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while data := s.recv(65536):
                got += data
        except ConnectionResetError:
            return got, "reset"
        except TimeoutError:
            return got, "timeout"
        except OSError as exc:
            return got, type(exc).__name__
    return got, "eof"


def test_proxy_forwards_and_cuts_each_connection_after_n_bytes(echo):
    with FaultProxy(echo.port, lifetime=30) as proxy:
        assert _talk(proxy.port, b"x" * 1000) == (b"x" * 1000, "eof")
        proxy.cut_every("down", 3000)
        for _ in range(2):  # every new connection is cut again
            got, how = _talk(proxy.port, b"y" * 10_000)
            assert got == b"y" * 3000 and how in ("eof", "reset")
        assert proxy.cuts == 2 and proxy.connections == 3
        with pytest.raises(ValueError, match="loopback"):
            FaultProxy(1, upstream_host="192.0.2.1")


def test_proxy_stall_bye_reset_in_literal_and_refusal(echo):
    with FaultProxy(echo.port, lifetime=30) as proxy:
        proxy.stall("down", after=4, seconds=1.5)
        start = time.monotonic()
        assert _talk(proxy.port, b"12345678") == (b"12345678", "eof")
        assert time.monotonic() - start >= 1.4
        proxy.clear()
        proxy.bye_on(b"LOGOUT")
        got, _ = _talk(proxy.port, b"a1 LOGOUT\r\n")
        assert got.startswith(b"* BYE")
        literal = b"* 1 FETCH (BODY[] {100}\r\n" + b"z" * 100 + b")\r\n"
        proxy.reset_in_literal("down", into=40)
        got, how = _talk(proxy.port, literal)
        assert got == literal[: literal.index(b"z") + 40] and how in ("reset", "eof")
        proxy.refuse_for(1.0)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        time.sleep(1.3)
        assert _talk(proxy.port, b"back")[0] == b"back"
    # a proxy stops by itself at its deadline
    short = FaultProxy(echo.port, lifetime=0.5).__enter__()
    time.sleep(1.2)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", short.port), timeout=2)


def test_literal_tracker_finds_the_middle_of_literals():
    t = LiteralTracker()
    assert t.feed(b"a APPEND x {5+}\r\nab", into=3) is None
    assert t.feed(b"cdef\r\n", into=3) == 1
    t = LiteralTracker()
    assert t.feed(b"* 1 FETCH (BODY[] {3}\r\nabc)\r\n", into=5) is None
    assert t.remaining == 0


# -- helpers -----------------------------------------------------------------------------------


def small_corpus(seed: int, n: int, folders: tuple[str, ...] = FOLDERS) -> list[Msg]:
    """n messages of 1.5-3 kB (plain, 8-bit, no Message-ID, From_ lines; a few 30-60 kB), with
    random flags and keywords, over ``folders``."""
    rng = random.Random(f"faults-{seed}-{n}")
    msgs = []
    for k in range(n):
        i = seed * 1_000_000 + k
        kind = rng.random()
        data = make_message(
            i,
            size=rng.randrange(30_000, 60_000) if kind < 0.01 else None,
            message_id=not (0.1 <= kind < 0.2),
            from_lines=0.2 <= kind < 0.3,
            eight_bit=0.3 <= kind < 0.45,
        )
        flags = [f for f in FLAGS if rng.random() < (0.6 if f == "\\Seen" else 0.2)]
        flags += [kw for kw in KEYWORDS if rng.random() < 0.15]
        folder = folders[k % len(folders)]
        msgs.append(Msg(folder, data, tuple(flags), message_date(i)))
    return msgs


def url(acct: Any, port: int, scheme: str = "imaps") -> str:
    return f"{scheme}://{acct.user}@127.0.0.1:{port}"


def assert_exactly_once(msgs: list[Msg], dst: Any) -> None:
    """The target holds every message exactly once, byte-identical, with its flags and date."""
    snap = snapshot_imap(dst.client())
    want = Counter((m.folder, m.snap()) for m in msgs)
    got = Counter((folder, s) for folder, snaps in snap.items() for s in snaps)
    missing = want - got
    extra = got - want
    assert not missing and not extra, (
        f"{sum(missing.values())} missing, {sum(extra.values())} extra "
        f"(of {len(msgs)}): {[(f, s.body[:80]) for f, s in list(missing)[:3]]} "
        f"{[(f, s.body[:80]) for f, s in list(extra)[:3]]}"
    )


def seeded_pair(account, dovecot_source, dovecot_target, msgs: list[Msg]):
    src, dst = account(dovecot_source), account(dovecot_target)
    seed_imap(src.client(), msgs, "/")
    return src, dst


def no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


# -- issue item 1: cut every ~200 kB on both sides ---------------------------------------------


def test_cut_every_200kb_on_both_sides_copies_every_message_exactly_once(
    account, dovecot_source, dovecot_target, tmp_path
):
    msgs = small_corpus(1, 1000)
    src, dst = seeded_pair(account, dovecot_source, dovecot_target, msgs)
    total = sum(len(m.data) for m in msgs)
    with (
        FaultProxy(dovecot_source.imaps_port, lifetime=240) as sp,
        FaultProxy(dovecot_target.imaps_port, lifetime=240) as tp,
    ):
        sp.cut_every("down", 200_000)
        tp.cut_every("up", 200_000)
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.source, job.target = url(src, sp.port), url(dst, tp.port)
        started = time.monotonic()
        result = job.run("--workers", "1", timeout=220)
        elapsed = time.monotonic() - started
    print(
        f"\n1,000 messages ({total / 1e6:.1f} MB), cut every 200 kB: source cut {sp.cuts} times, "
        f"target cut {tp.cuts} times, {elapsed:.0f}s; proxy events: {sp.events[:3]}..."
    )
    assert result.returncode == 0, result.stderr[-3000:]
    no_traceback(result.stderr)
    assert sp.cuts >= total // 200_000 - 1 and tp.cuts >= total // 200_000 - 1
    assert "reconnecting" in result.stderr
    assert_exactly_once(msgs, dst)


# -- one fault at a time: the run reconnects, resumes the folder and finishes --------------------


def plain_url(acct: Any, port: int) -> str:
    return f"imap://{acct.user}@127.0.0.1:{port}?tls=none"


def _done(state: Path) -> int:
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM messages WHERE state='done'").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for(condition, proc: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition() or (proc is not None and proc.poll() is not None):
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.fixture
def pair(account, dovecot_source, dovecot_target):
    msgs = small_corpus(7, 240)
    src, dst = seeded_pair(account, dovecot_source, dovecot_target, msgs)
    return msgs, src, dst


def test_a_server_that_stalls_mid_response_is_timed_out_and_the_run_resumes(pair, tmp_path):
    msgs, src, dst = pair
    with FaultProxy(src.server.imaps_port, lifetime=120) as sp:
        sp.stall("down", after=60_000, seconds=60)  # the first connection hangs, once
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.source = url(src, sp.port)
        started = time.monotonic()
        result = job.run("--timeout", "3", timeout=100)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 40  # not the 60s of the stall
    assert "no answer" in result.stderr or "timed out" in result.stderr, result.stderr
    assert "reconnecting" in result.stderr
    no_traceback(result.stderr)
    assert_exactly_once(msgs, dst)


@pytest.mark.parametrize("side", ["source", "target"])
def test_bye_and_a_reset_mid_literal_are_survived(pair, tmp_path, side):
    msgs, src, dst = pair
    server = src.server if side == "source" else dst.server
    with FaultProxy(server.imap_nostarttls_port, lifetime=120) as proxy:
        if side == "source":
            proxy.bye_on(b"BODY.PEEK[]", times=1)
            proxy.reset_in_literal("down", into=1_000, times=2)
        else:
            proxy.bye_on(b"APPEND", times=1)
            proxy.reset_in_literal("up", into=1_000, times=2)
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        if side == "source":
            job.source = plain_url(src, proxy.port)
        else:
            job.target = plain_url(dst, proxy.port)
        result = job.run("--workers", "1", timeout=100)
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    kinds = " ".join(proxy.events)
    assert "BYE" in kinds and "into a literal" in kinds, proxy.events
    assert "reconnecting" in result.stderr
    assert_exactly_once(msgs, dst)


def test_connections_refused_for_a_while_then_the_run_goes_on(pair, tmp_path):
    msgs, src, dst = pair
    with FaultProxy(dst.server.imaps_port, lifetime=120) as tp:
        tp.throttle("up", 150_000)
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.target = url(dst, tp.port)
        proc = job.start("--workers", "1")
        wait_for(lambda: _done(job.state) > 0, proc)
        tp.refuse_for(3.0)
        tp.drop_all()
        tp.throttle("up", None)
        _, err = proc.communicate(timeout=100)
    assert proc.returncode == 0, err.decode()
    assert b"cannot connect" in err or b"refused" in err.lower(), err.decode()
    no_traceback(err.decode())
    assert_exactly_once(msgs, dst)


def test_gives_up_after_retries_with_one_line_then_a_rerun_finishes(pair, tmp_path):
    msgs, src, dst = pair
    with FaultProxy(dst.server.imaps_port, lifetime=120) as tp:
        tp.throttle("up", 150_000)
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.target = url(dst, tp.port)
        proc = job.start("--workers", "1", "--retries", "2")
        wait_for(lambda: _done(job.state) > 0, proc)
        tp.refuse_for(600)
        tp.drop_all()
        started = time.monotonic()
        _, err_bytes = proc.communicate(timeout=100)
        err = err_bytes.decode()
        assert time.monotonic() - started < 30
        assert proc.returncode == 3, err  # cannot connect: SPEC's exit 3
        errors = [line for line in err.splitlines() if line.startswith("migrator: error")]
        assert len(errors) == 1 and "gave up after 2 reconnects" in errors[0], err
        assert "rerun the same command" in errors[0]
        no_traceback(err)
        tp.refuse_for(0)  # the server is back
        time.sleep(0.3)
        rerun = job.run("--workers", "1", timeout=100)
    assert rerun.returncode == 0, rerun.stderr
    assert_exactly_once(msgs, dst)


# -- issue item 2: SIGKILL at 20 random moments ------------------------------------------------

KILL_FOLDERS = ("INBOX", "Archive/2023", "Lists/Dev & Ops", "Перепи́ска", "Projects")


def corpus_ids(client: Any) -> Counter:
    """(folder, X-Corpus-Index) of every message in an account: cheap enough to take often."""
    found: Counter = Counter()
    for flags, delim, name in client.list_folders():
        if any(f.lower() == b"\\noselect" for f in flags):
            continue
        folder = name.replace(delim.decode(), "/") if delim else name
        folder = "INBOX" if folder.upper() == "INBOX" else folder
        client.select_folder(name, readonly=True)
        uids = client.search("ALL")
        if uids:
            items = client.fetch(uids, ["BODY.PEEK[HEADER.FIELDS (X-CORPUS-INDEX)]"])
            for item in items.values():
                header = item[b"BODY[HEADER.FIELDS (X-CORPUS-INDEX)]"]
                found[(folder, int(header.split(b":")[1]))] += 1
    return found


def msg_index(m: Msg) -> int:
    return int(m.data.split(b"X-Corpus-Index: ")[1].split(b"\r\n")[0])


@pytest.mark.parametrize("delete", [False, True], ids=["keep-source", "delete-source"])
def test_sigkill_at_20_random_moments_loses_nothing_and_ends_exactly_once(
    account, dovecot_source, dovecot_target, tmp_path, delete
):
    msgs = small_corpus(11 + delete, 1000, KILL_FOLDERS)
    src, dst = seeded_pair(account, dovecot_source, dovecot_target, msgs)
    wanted = Counter((m.folder, msg_index(m)) for m in msgs)
    extra = ["--delete-source"] if delete else []
    rng = random.Random(f"kill-{delete}")
    kills = 0
    src_client, dst_client = src.client(), dst.client()
    with FaultProxy(src.server.imaps_port, lifetime=280) as sp:
        sp.throttle("down", 300_000)  # a 4-second copy, so that the kills land all through it
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.source = url(src, sp.port)
        for n in range(20):
            proc = job.start("--workers", str(1 + n % 2), *extra)
            time.sleep(rng.uniform(0.3, 1.6))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
            _, err = proc.communicate(timeout=60)
            no_traceback(err.decode())
            sp.drop_all()  # what the dead process had in flight goes no further
            held_src, held_dst = corpus_ids(src_client), corpus_ids(dst_client)
            lost = wanted - (held_src | held_dst)
            assert not lost, f"after kill {n + 1}: {len(lost)} messages in neither account"
            twice = [k for k, v in held_dst.items() if v > 1]
            assert not twice, f"after kill {n + 1}: {len(twice)} messages twice in the target"
        final = job.run(*extra, timeout=120)
    assert final.returncode == 0, final.stderr
    assert kills >= 12
    assert_exactly_once(msgs, dst)
    left = corpus_ids(src_client)
    assert sum(left.values()) == (0 if delete else 1000)
    print(f"\n{kills} SIGKILLs ({'with' if delete else 'without'} --delete-source): nothing lost")


def test_an_append_still_in_flight_when_the_run_died_is_not_copied_twice(
    account, dovecot_source, dovecot_target, tmp_path
):
    """The known risk: bytes of an APPEND that a SIGKILLed run had handed to the kernel reach the
    server after the rerun has looked at the target. Here a slow link (the proxy, throttled)
    keeps delivering the dead run's APPEND for a second or two after the kill; the rerun must
    wait for it (the engine's late-append window) rather than copy those messages again."""
    msgs = small_corpus(13, 300, ("INBOX",))
    src, dst = seeded_pair(account, dovecot_source, dovecot_target, msgs)
    with FaultProxy(dst.server.imaps_port, lifetime=200) as tp:
        tp.throttle("up", 50_000)  # the dead run's APPEND keeps arriving for ~4 s
        job = Job.between(src, dst, tmp_path / "j.sqlite")
        job.target = url(dst, tp.port)
        proc = job.start("--workers", "1")
        wait_for(lambda: tp.forwarded["up"] > 60_000, proc)
        os.kill(proc.pid, signal.SIGKILL)  # mid-APPEND: the rest is still on its way
        proc.communicate(timeout=30)
        in_flight_until = time.monotonic()
        rerun = job.run("--workers", "1", timeout=150)
        assert time.monotonic() - in_flight_until > 2
    assert rerun.returncode == 0, rerun.stderr
    assert_exactly_once(msgs, dst)  # without the wait: ~170 messages twice
    assert "an interrupted append may still deliver" in rerun.stderr, rerun.stderr
