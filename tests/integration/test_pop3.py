"""Pop3Store against a real Dovecot POP3 server (pop3s, pop3 + STLS, plaintext), plus a few
socket-level stand-ins for what Dovecot cannot be made to do: a server without UIDL, one that
hangs up at once, APOP, and a connection cut at a chosen moment (a TCP proxy in front of Dovecot).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from migrator.endpoints import AccessOptions, open_store, parse_endpoint, server_access
from migrator.errors import ConnectError, FolderError, MessageError, StoreError
from migrator.model import INBOX, MessageRef, message_key, to_crlf
from migrator.stores.base import ServerAccess
from migrator.stores.pop3 import Pop3Store, header_block
from tests.corpus import Msg, Snap, make_corpus, make_message, message_date, snapshot_imap
from tests.dovecot import DovecotServer, make_untrusted_ca, make_wrong_host_tls

UIDL_RE = re.compile(r"^[0-9A-Fa-f]{16}$")  # pop3_uidl_format = %08Xu%08Xv

# -- helpers ---------------------------------------------------------------------------------


def _access(
    server: DovecotServer | None,
    url: str,
    password: str,
    *,
    ca_file: Any = None,
    timeout: float = 10.0,
) -> ServerAccess:
    endpoint = parse_endpoint(url)
    if ca_file is None and server is not None:
        ca_file = server.ca_file
    return server_access(
        endpoint,  # type: ignore[arg-type]
        AccessOptions(secret=lambda: password, ca_file=ca_file, timeout=timeout),
    )


def _url(acct: Any, kind: str, port: int | None = None) -> str:
    server = acct.server
    ports = {
        "pop3s": ("pop3s", server.pop3s_port, ""),
        "stls": ("pop3", server.pop3_port, ""),
        "nostls": ("pop3", server.pop3_nostls_port, ""),
        "plain": ("pop3", server.pop3_nostls_port, "?tls=none"),
    }
    scheme, default_port, query = ports[kind]
    return f"{scheme}://{acct.user}@127.0.0.1:{port or default_port}{query}"


def _store(acct: Any, kind: str = "pop3s", *, password: str | None = None, **kw: Any) -> Pop3Store:
    port = kw.pop("port", None)
    access = _access(acct.server, _url(acct, kind, port), password or acct.password)
    kw.setdefault("backoff", 0.0)
    return Pop3Store(access, **kw)


def _seed(acct: Any, messages: list[bytes], dates: list[Any] | None = None) -> None:
    client = acct.client()
    for k, data in enumerate(messages):
        client.append("INBOX", data, msg_time=dates[k] if dates else None)


def _listing(store: Pop3Store, skip: Any = ()) -> list[MessageRef]:
    return list(store.list_messages(INBOX, skip))


def _fetch_all(store: Pop3Store, refs: list[MessageRef]) -> list[bytes | MessageError]:
    return [data for _, data in store.fetch(INBOX, refs)]


def _count_on_server(acct: Any) -> int:
    return acct.server.mailbox_status(acct.user, "INBOX", ("messages",))["messages"]


SPECIAL = [
    # dot-stuffing both ways, a line far beyond poplib's 2,048-octet limit, 8-bit bytes
    b"Subject: dots\r\nMessage-ID: <dots@t>\r\n\r\n.\r\n..\r\n.leading\r\nend.\r\n",
    b"Subject: long line\r\nMessage-ID: <long@t>\r\n\r\n" + b"y" * 20_000 + b"\r\n",
    b"Subject: \xc3\xa4 8-bit\r\nMessage-ID: <8bit@t>\r\n\r\ncaf\xc3\xa9 \xff\r\n",
    b"Subject: no message-id, no date\r\n\r\nbody\r\n",
]


@pytest.fixture
def mailbox(dovecot_source: DovecotServer, account: Callable[..., Any]) -> tuple[Any, list[bytes]]:
    """A POP account holding corpus messages (one of 300 kB), then the special ones."""
    acct = account(dovecot_source, prefix="pop")
    messages = [make_message(i) for i in range(1, 9)] + [make_message(9, size=300_000)]
    _seed(acct, messages + SPECIAL)
    return acct, messages + SPECIAL


# -- listing and fetching ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["pop3s", "stls", "plain"])
def test_lists_uidl_ids_sizes_received_dates_and_keys(mailbox: Any, kind: str) -> None:
    acct, messages = mailbox
    with _store(acct, kind) as store:
        assert store.list_folders()[0].path == INBOX
        state = store.open_folder(INBOX)
        assert state.count == len(messages)
        refs = _listing(store)
    assert state.validity == "pop3" and store.stable_ids and not store.weak_ids
    assert [r.size for r in refs] == [len(m) for m in messages]
    assert all(UIDL_RE.match(r.id) for r in refs)
    assert len({r.id for r in refs}) == len(refs)
    assert [r.date for r in refs[:9]] == [message_date(i) for i in range(1, 10)]
    assert refs[9].date is None and refs[-1].date is None  # no Received, no Date
    assert [r.key for r in refs] == [message_key(header_block(m), len(m)) for m in messages]
    assert all(r.flags == frozenset() for r in refs)


@pytest.mark.parametrize("kind", ["pop3s", "stls"])
def test_fetch_returns_exactly_the_appended_bytes(mailbox: Any, kind: str) -> None:
    acct, messages = mailbox
    with _store(acct, kind) as store:
        refs = _listing(store)
        got = _fetch_all(store, list(reversed(refs)))
    assert list(reversed(got)) == messages


def test_ids_are_the_same_in_every_session_and_skip_leaves_messages_out(mailbox: Any) -> None:
    acct, _messages = mailbox
    with _store(acct) as store:
        first = _listing(store)
    with _store(acct, "stls") as store:
        again = _listing(store)
        skip = {r.id for r in first[::2]}
        rest = _listing(store, skip)
    assert again == first
    assert rest == [r for r in first if r.id not in skip]


def test_flags_are_given_to_every_message(mailbox: Any) -> None:
    acct, _ = mailbox
    with _store(acct, flags=frozenset({"\\Seen"})) as store:
        assert {r.flags for r in _listing(store)} == {frozenset({"\\Seen"})}


def test_endpoint_builds_the_store_and_only_inbox_exists(mailbox: Any) -> None:
    acct, messages = mailbox
    endpoint = parse_endpoint(_url(acct, "pop3s"))
    store = open_store(
        endpoint, AccessOptions(secret=lambda: acct.password, ca_file=acct.server.ca_file), "source"
    )
    assert isinstance(store, Pop3Store) and store.can_delete
    with store:
        assert store.open_folder(INBOX).count == len(messages)
        with pytest.raises(FolderError, match="only INBOX"):
            store.open_folder(("Archive",))


def test_many_messages_are_listed_and_fetched_through_the_pipeline(
    dovecot_source: DovecotServer, account: Callable[..., Any]
) -> None:
    acct = account(dovecot_source)
    messages = [make_message(100 + i) for i in range(230)]
    _seed(acct, messages)
    with _store(acct) as store:
        refs = _listing(store)
        assert len(refs) == 230
        assert _fetch_all(store, refs) == messages


def test_a_message_gone_since_listing_is_a_message_error(mailbox: Any) -> None:
    acct, messages = mailbox
    with _store(acct) as store:
        refs = _listing(store)
        client = acct.client()
        client.select_folder("INBOX")
        client.delete_messages([client.search("ALL")[0]])
        client.expunge()
        store._drop()  # a new session: numbers are recomputed and the first id is gone
        got = list(store.fetch(INBOX, refs[:3]))
    assert isinstance(got[0][1], MessageError) and "no longer" in str(got[0][1])
    assert [data for _, data in got[1:]] == messages[1:3]


def test_abandoned_fetch_leaves_the_store_usable(mailbox: Any) -> None:
    acct, messages = mailbox
    with _store(acct) as store:
        refs = _listing(store)
        stream = store.fetch(INBOX, refs)
        next(stream)
        assert _listing(store) == refs  # another command while RETRs are unanswered
        assert [data for _, data in stream] == messages[1:]  # the stream goes on, resent
        stream = store.fetch(INBOX, refs)
        next(stream)
        stream.close()
        assert _fetch_all(store, refs[-2:]) == messages[-2:]


def test_new_mail_shows_in_the_next_session_only_once_skipped(mailbox: Any) -> None:
    acct, _messages = mailbox
    with _store(acct) as store:
        old = _listing(store)
    new = make_message(500)
    _seed(acct, [new])
    with _store(acct) as store:
        refs = _listing(store, {r.id for r in old})
        assert [(_fetch_all(store, refs))] == [[new]]
    assert len(refs) == 1 and refs[0].date == message_date(500)


# -- login and TLS failures: one line, exit 3, never the password --------------------------------


def _one_line(exc: BaseException, store_label: str, password: str) -> str:
    text = str(exc)
    assert "\n" not in text
    assert text.startswith(store_label + ":")
    assert password not in text
    return text


@pytest.mark.parametrize("kind", ["pop3s", "stls", "plain"])
def test_wrong_password_is_a_connect_error_without_the_password(mailbox: Any, kind: str) -> None:
    acct, _ = mailbox
    store = _store(acct, kind, password="Wrong-Pa55word")
    with pytest.raises(ConnectError) as err:
        store.connect()
    text = _one_line(err.value, store.label, "Wrong-Pa55word")
    assert "login failed" in text and "Authentication failed" in text and "password" in text
    assert err.value.exit_status == 3
    store.close()


@pytest.mark.parametrize("kind", ["pop3s", "stls"])
def test_untrusted_certificate_is_refused(mailbox: Any, kind: str, tmp_path: Any) -> None:
    acct, _ = mailbox
    other_ca = make_untrusted_ca(tmp_path)
    access = _access(acct.server, _url(acct, kind), acct.password, ca_file=other_ca)
    with pytest.raises(ConnectError) as err:
        Pop3Store(access).connect()
    text = _one_line(err.value, access.label, acct.password)
    assert "not trusted" in text and "--source-ca-file" in text


def test_certificate_for_another_host_is_refused(
    tls_files: Any, dovecot_tmp: Any, account: Callable[..., Any]
) -> None:
    wrong = make_wrong_host_tls(tls_files, dovecot_tmp / "tls")
    with DovecotServer(dovecot_tmp / "srv", tls=wrong) as server:
        acct = account(server)
        for kind in ("pop3s", "stls"):
            access = _access(server, _url(acct, kind), acct.password)
            with pytest.raises(ConnectError, match=r"not trusted.*(?i:host|match)"):
                Pop3Store(access).connect()


def test_stls_not_offered_is_refused_not_downgraded(mailbox: Any) -> None:
    acct, _ = mailbox
    store = _store(acct, "nostls")
    with pytest.raises(ConnectError) as err:
        store.connect()
    text = _one_line(err.value, store.label, acct.password)
    assert "does not offer STLS" in text and "pop3s://" in text


def test_connection_refused_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    access = _access(None, f"pop3s://bob@127.0.0.1:{port}", "pw", timeout=5)
    with pytest.raises(ConnectError) as err:
        Pop3Store(access).connect()
    assert "refused the connection" in _one_line(err.value, access.label, "pw")


@pytest.mark.parametrize("scheme", ["pop3s", "pop3"])
def test_server_that_hangs_up_is_one_line(scheme: str) -> None:
    with FakePop3(hang_up=True) as fake:
        access = _access(None, f"{scheme}://bob@127.0.0.1:{fake.port}", "pw", timeout=5)
        with pytest.raises(ConnectError) as err:
            Pop3Store(access).connect()
    assert "closed the connection" in _one_line(err.value, access.label, "pw")


# -- delete ------------------------------------------------------------------------------------


def test_delete_applies_at_quit_and_the_next_call_reconnects(mailbox: Any) -> None:
    acct, messages = mailbox
    with _store(acct) as store:
        refs = _listing(store)
        store.delete(INBOX, [refs[0].id, refs[2].id, "NOT-ON-THE-SERVER"])
        assert _count_on_server(acct) == len(messages) - 2
        left = _listing(store)  # a new session, opened lazily
        assert [r.id for r in left] == [r.id for r in refs if r.id not in (refs[0].id, refs[2].id)]
        assert _fetch_all(store, left[:2]) == [messages[1], messages[3]]
        store.delete(INBOX, [refs[0].id])  # already gone: nothing to do, no error
    with _store(acct, "stls") as store:
        assert _listing(store) == left


def test_connection_cut_before_quit_deletes_nothing(mailbox: Any) -> None:
    acct, messages = mailbox
    with CutProxy(acct.server.pop3_nostls_port, cut_on=b"QUIT") as proxy:
        store = _store(acct, "plain", port=proxy.port, retries=0)
        refs = _listing(store)
        with pytest.raises(StoreError) as err:
            store.delete(INBOX, [r.id for r in refs])
        assert err.value.transient and "nothing was deleted" in str(err.value)
        store.close()
    assert _count_on_server(acct) == len(messages)
    with _store(acct) as store:
        assert _listing(store) == refs
        store.delete(INBOX, [r.id for r in refs[:4]])  # the retry later succeeds
    assert _count_on_server(acct) == len(messages) - 4


def test_session_killed_between_dele_and_quit_deletes_nothing_then_reconnects(
    mailbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct, messages = mailbox
    real_quit = Pop3Store._quit
    kicks: list[str] = []

    def kick_then_quit(self: Pop3Store, wire: Any) -> None:
        if not kicks:  # the server ends the session after the DELEs, before QUIT
            kicks.append(acct.server.doveadm("kick", acct.user))
            assert _count_on_server(acct) == len(messages)
        real_quit(self, wire)

    monkeypatch.setattr(Pop3Store, "_quit", kick_then_quit)
    with _store(acct, retries=2) as store:
        refs = _listing(store)
        store.delete(INBOX, [r.id for r in refs[:3]])  # reconnects and does it again
    assert kicks and _count_on_server(acct) == len(messages) - 3


# -- dropped connections mid-run -----------------------------------------------------------------


def test_fetch_reconnects_after_a_drop_and_goes_on(mailbox: Any) -> None:
    acct, messages = mailbox
    with CutProxy(acct.server.pop3_nostls_port, cut_after=60_000, cut_times=2) as proxy:
        store = _store(acct, "plain", port=proxy.port, retries=3)
        refs = _listing(store)
        assert _fetch_all(store, refs) == messages
        store.close()
    assert proxy.cuts == 2


def test_listing_reconnects_after_a_drop(dovecot_source: DovecotServer, account: Any) -> None:
    acct = account(dovecot_source)
    messages = [make_message(700 + i) for i in range(150)]
    _seed(acct, messages)
    with CutProxy(acct.server.pop3_nostls_port, cut_after=50_000, cut_times=1) as proxy:
        store = _store(acct, "plain", port=proxy.port, retries=2)
        refs = _listing(store)
        store.close()
    assert proxy.cuts == 1
    assert [r.date for r in refs] == [message_date(700 + i) for i in range(150)]


def test_drop_after_the_last_retry_is_a_transient_store_error(mailbox: Any) -> None:
    acct, _ = mailbox
    with CutProxy(acct.server.pop3_nostls_port, cut_after=60_000, cut_times=99) as proxy:
        store = _store(acct, "plain", port=proxy.port, retries=1)
        refs = _listing(store)
        with pytest.raises(StoreError) as err:
            _fetch_all(store, refs)
        store.close()
    assert err.value.transient and "1 reconnect(s) failed" in str(err.value)
    assert "\n" not in str(err.value) and acct.password not in str(err.value)


def test_server_restart_mid_run_is_survived(
    dovecot_tmp: Any, tls_files: Any, account: Callable[..., Any]
) -> None:
    with DovecotServer(dovecot_tmp / "srv", tls=tls_files) as server:
        acct = account(server)
        messages = [make_message(800 + i) for i in range(20)]
        _seed(acct, messages)
        store = _store(acct, retries=5, backoff=0.2)
        refs = _listing(store)
        stream = store.fetch(INBOX, refs)
        first = [item[1] for _, item in zip(range(5), stream, strict=False)]
        server.restart()
        assert first + [data for _, data in stream] == messages
        store.close()


# -- servers Dovecot cannot imitate -------------------------------------------------------------


def test_server_without_uidl_uses_header_digests_as_weak_ids() -> None:
    mails = [make_message(i) for i in range(1, 6)] + [SPECIAL[3], SPECIAL[3]]
    with FakePop3(mails, caps=("TOP", "USER")) as fake:
        access = _access(None, f"pop3://bob@127.0.0.1:{fake.port}?tls=none", "pw")
        with Pop3Store(access) as store:
            state = store.open_folder(INBOX)
            refs = _listing(store)
            assert _fetch_all(store, refs) == mails
        assert store.weak_ids and not store.stable_ids and state.validity == "pop3-headers"
        assert len({r.id for r in refs}) == len(mails)  # identical headers told apart by order
        assert [r.date for r in refs[:5]] == [message_date(i) for i in range(1, 6)]
        fake.mailbox.insert(0, make_message(99))  # numbers shift; digests do not
        with Pop3Store(access) as store:
            again = _listing(store)
            assert [r.id for r in again[1:]] == [r.id for r in refs]
            store.delete(INBOX, [refs[1].id])
        assert fake.mailbox == [make_message(99), *mails[:1], *mails[2:]]
        assert "UIDL" not in fake.commands  # CAPA did not list it


def test_without_capa_or_pipelining_one_command_at_a_time() -> None:
    mails = [make_message(i) for i in range(1, 4)]
    with FakePop3(mails, caps=None) as fake:
        access = _access(None, f"pop3://bob@127.0.0.1:{fake.port}?tls=none", "pw")
        with Pop3Store(access) as store:
            refs = _listing(store)
            assert _fetch_all(store, refs) == mails
        assert not store.weak_ids and [r.id for r in refs] == ["uid1", "uid2", "uid3"]
        assert fake.max_pipelined == 1


def test_sasl_plain_is_used_when_offered_with_or_without_initial_response() -> None:
    for initial in (True, False):
        with FakePop3([make_message(1)], caps=("SASL PLAIN", "UIDL", "TOP"), sasl_ir=initial) as f:
            access = _access(None, f"pop3://bob@127.0.0.1:{f.port}?tls=none", "p ä:ss")
            with Pop3Store(access) as store:
                assert store.open_folder(INBOX).count == 1
            assert any(c.startswith("AUTH PLAIN") for c in f.commands)
            assert not any(c.startswith(("USER", "PASS")) for c in f.commands)


def test_apop_when_asked_for() -> None:
    with FakePop3([make_message(1)], caps=("UIDL", "TOP", "USER"), apop=True) as fake:
        access = _access(None, f"pop3://bob@127.0.0.1:{fake.port}?tls=none", "tanstaaf")
        with Pop3Store(access, apop=True) as store:
            assert store.open_folder(INBOX).count == 1
        wrong = _access(None, f"pop3://bob@127.0.0.1:{fake.port}?tls=none", "nope")
        with pytest.raises(ConnectError, match="login failed"):
            Pop3Store(wrong, apop=True).connect()
    with FakePop3([], caps=("UIDL",)) as fake:
        access = _access(None, f"pop3://bob@127.0.0.1:{fake.port}?tls=none", "pw")
        with pytest.raises(ConnectError, match="APOP"):
            Pop3Store(access, apop=True).connect()


# -- the command line, end to end (issue 4, "What it must show" 1-4) ---------------------------

REPO = Path(__file__).resolve().parents[2]


def _env(src: Any, dst: Any = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["MIGRATOR_SOURCE_PASSWORD"] = src.password
    if dst is not None:
        env["MIGRATOR_TARGET_PASSWORD"] = dst.password
    env["PYTHONPATH"] = str(REPO)
    return env


def _copy_cmd(source: str, target: str, state: Path, ca: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "migrator", "copy", source, target, "--state", str(state),
        "--source-ca-file", str(ca), "--target-ca-file", str(ca), "--json", *extra,
    ]  # fmt: skip


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _copied(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    assert summary["failed"] == 0
    return summary


def _target_inbox(dst: Any) -> list[Snap]:
    return snapshot_imap(dst.client()).get("INBOX", [])


def _assert_exactly_once(dst: Any, msgs: list[Msg]) -> None:
    held = _target_inbox(dst)
    counts = Counter(s.body for s in held)
    expected = {m.data for m in msgs}
    twice = [b[:400] for b, n in counts.items() if n > 1]
    missing = [m.data[:400] for m in msgs if m.data not in counts]
    extra = [b[:400] for b in counts if b not in expected]
    assert (twice, missing, extra) == ([], [], []), (
        len(held),
        len(twice),
        len(missing),
        len(extra),
    )
    assert sorted(s.body for s in held) == sorted(m.data for m in msgs)
    dates = {s.body: s.date for s in held}
    assert all(dates[m.data] == m.date.astimezone(UTC) for m in msgs)  # from Received


def _pop_corpus(acct: Any, n: int, seed: int) -> list[Msg]:
    """n corpus messages in the POP box, appended without their dates (INTERNALDATE = now), so
    that a copy dated right must have read the Received field."""
    msgs = make_corpus(seed, n, folders=("INBOX",))
    client = acct.client()
    for start in range(0, n, 50):
        client.multiappend("INBOX", [{"msg": m.data} for m in msgs[start : start + 50]])
    return msgs


@pytest.fixture
def pop_box(dovecot_source: DovecotServer, account: Callable[..., Any]) -> tuple[Any, list[Msg]]:
    """A POP mailbox of 300 messages, two dozen of them 20-200 kB."""
    acct = account(dovecot_source, prefix="box")
    msgs = _pop_corpus(acct, 300, seed=41)
    assert sum(len(m.data) > 20_000 for m in msgs) >= 10
    return acct, msgs


def test_cli_copies_pop_to_imap_byte_identical_dated_from_received_and_leaves_mail(
    pop_box: Any, dovecot_target: DovecotServer, account: Callable[..., Any], tmp_path: Path
) -> None:
    src, msgs = pop_box
    dst = account(dovecot_target)
    cmd = _copy_cmd(src.url("pop3s"), dst.url("imaps"), tmp_path / "j.db", src.server.ca_file)
    summary = _copied(_run(cmd, _env(src, dst)))
    assert summary["copied"] == 300 and summary["deleted"] == 0
    _assert_exactly_once(dst, msgs)
    assert _count_on_server(src) == 300  # nothing deleted on the server
    again = _copied(_run(cmd, _env(src, dst)))
    assert again["copied"] == 0 and again["skipped"] == 300


def test_cli_copies_pop_to_mbox_byte_identical_dated_from_received(
    pop_box: Any, tmp_path: Path
) -> None:
    from migrator.stores.mbox import MboxStore

    src, msgs = pop_box
    archive = tmp_path / "archive"
    cmd = _copy_cmd(src.url("pop3"), f"mbox:{archive}", tmp_path / "j.db", src.server.ca_file)
    assert _copied(_run(cmd, _env(src)))["copied"] == 300
    store = MboxStore(archive)
    with store:
        refs = list(store.list_messages(INBOX))
        got = {}
        for ref, data in store.fetch(INBOX, refs):
            assert isinstance(data, bytes)
            got[to_crlf(data)] = ref.date
    assert sorted(got) == sorted(m.data for m in msgs)
    assert all(got[m.data] == m.date for m in msgs)
    assert _count_on_server(src) == 300


@pytest.mark.parametrize(
    ("phase", "delete"), [("fetch", False), ("append", False), ("fetch", True)]
)
def test_cli_sigkill_mid_run_then_rerun_copies_exactly_once(
    pop_box: Any,
    dovecot_target: DovecotServer,
    account: Callable[..., Any],
    tmp_path: Path,
    phase: str,
    delete: bool,
) -> None:
    src, msgs = pop_box
    dst = account(dovecot_target)
    total = sum(len(m.data) for m in msgs)
    extra = ("--delete-source",) if delete else ()
    # Slow one side down through a proxy, and kill the run when 40% of the mail went through it.
    upstream, direction = (
        (src.server.pop3s_port, "down") if phase == "fetch" else (dst.server.imaps_port, "up")
    )
    with CutProxy(upstream, rate=1_500_000, throttle=direction) as proxy:
        src_port = proxy.port if phase == "fetch" else src.server.pop3s_port
        dst_port = proxy.port if phase == "append" else dst.server.imaps_port
        source = f"pop3s://{src.user}@127.0.0.1:{src_port}"
        target = f"imaps://{dst.user}@127.0.0.1:{dst_port}"
        cmd = _copy_cmd(source, target, tmp_path / "j.db", src.server.ca_file, *extra)
        proc = subprocess.Popen(
            cmd, env=_env(src, dst), cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while proxy.forwarded[direction] < 0.4 * total and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.kill()
        proxy.drop_all()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, (out, err)  # killed mid-run, not finished
        assert _count_on_server(src) == 300  # nothing deleted by a run that did not finish
        rerun = _copied(_run(cmd, _env(src, dst)))
    assert rerun["copied"] + rerun["skipped"] == 300
    _assert_exactly_once(dst, msgs)
    assert _count_on_server(src) == (0 if delete else 300)
    last = _copied(_run(cmd, _env(src, dst)))
    assert last["copied"] == 0


def test_cli_killed_between_dele_and_quit_loses_nothing_and_the_rerun_finishes(
    pop_box: Any, dovecot_target: DovecotServer, account: Callable[..., Any], tmp_path: Path
) -> None:
    src, msgs = pop_box
    dst = account(dovecot_target)
    proc: subprocess.Popen[bytes] | None = None
    seen_dele = threading.Event()
    killed = threading.Event()

    def kill_before_quit(data: bytes) -> bool:
        if b"DELE " in data:
            seen_dele.set()
        if b"QUIT" in data and seen_dele.is_set() and not killed.is_set():
            assert proc is not None
            os.kill(proc.pid, signal.SIGKILL)  # the CLI dies; its QUIT never reaches the server
            killed.set()
            return True
        return False

    with CutProxy(src.server.pop3_nostls_port, on_client=kill_before_quit) as proxy:
        source = f"pop3://{src.user}@127.0.0.1:{proxy.port}?tls=none"
        cmd = _copy_cmd(source, dst.url("imaps"), tmp_path / "j.db", src.server.ca_file)
        cmd.append("--delete-source")
        proc = subprocess.Popen(
            cmd, env=_env(src, dst), cwd=REPO, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        proc.communicate(timeout=300)
        assert killed.is_set() and proc.returncode == -signal.SIGKILL
        assert _count_on_server(src) == 300  # DELE without QUIT deletes nothing
        _assert_exactly_once(dst, msgs)
        rerun = _copied(_run(cmd, _env(src, dst)))
    assert rerun["copied"] == 0 and rerun["deleted"] == 300
    assert _count_on_server(src) == 0
    _assert_exactly_once(dst, msgs)


def test_cli_new_mail_between_runs_is_copied_and_only_it(
    dovecot_source: DovecotServer,
    dovecot_target: DovecotServer,
    account: Callable[..., Any],
    tmp_path: Path,
) -> None:
    src, dst = account(dovecot_source), account(dovecot_target)
    first = _pop_corpus(src, 40, seed=42)
    cmd = _copy_cmd(src.url("pop3"), dst.url("imaps"), tmp_path / "j.db", src.server.ca_file)
    assert _copied(_run(cmd, _env(src, dst)))["copied"] == 40
    new = _pop_corpus(src, 7, seed=43)
    summary = _copied(_run(cmd, _env(src, dst)))
    assert summary["copied"] == 7 and summary["skipped"] == 40
    _assert_exactly_once(dst, first + new)
    more = _pop_corpus(src, 3, seed=44)
    summary = _copied(_run([*cmd, "--delete-source"], _env(src, dst)))
    assert summary["copied"] == 3 and summary["deleted"] == 50
    _assert_exactly_once(dst, first + new + more)
    assert _count_on_server(src) == 0


def _fails_with_one_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_cli_wrong_password_is_one_line_exit_3(
    mailbox: Any, dovecot_target: DovecotServer, account: Callable[..., Any], tmp_path: Path
) -> None:
    src, _ = mailbox
    dst = account(dovecot_target)
    env = _env(src, dst)
    env["MIGRATOR_SOURCE_PASSWORD"] = "Not-The-Password-42"
    cmd = _copy_cmd(src.url("pop3s"), dst.url("imaps"), tmp_path / "j.db", src.server.ca_file)
    line = _fails_with_one_line(_run(cmd, env), src.url("pop3s"), "login failed", "password")
    assert "Not-The-Password-42" not in line


def test_cli_stls_not_offered_is_one_line_exit_3(
    mailbox: Any, dovecot_target: DovecotServer, account: Callable[..., Any], tmp_path: Path
) -> None:
    src, _ = mailbox
    dst = account(dovecot_target)
    source = f"pop3://{src.user}@127.0.0.1:{src.server.pop3_nostls_port}"
    cmd = _copy_cmd(source, dst.url("imaps"), tmp_path / "j.db", src.server.ca_file)
    _fails_with_one_line(_run(cmd, _env(src, dst)), source, "does not offer STLS")
    assert not (tmp_path / "archive").exists()


def test_cli_untrusted_certificate_is_one_line_exit_3(
    mailbox: Any, dovecot_target: DovecotServer, account: Callable[..., Any], tmp_path: Path
) -> None:
    src, _ = mailbox
    dst = account(dovecot_target)
    cmd = _copy_cmd(src.url("pop3s"), dst.url("imaps"), tmp_path / "j.db", src.server.ca_file)
    cmd[cmd.index("--source-ca-file") + 1] = str(make_untrusted_ca(tmp_path / "other"))
    _fails_with_one_line(_run(cmd, _env(src, dst)), "not trusted")


@pytest.mark.parametrize("scheme", ["pop3s", "pop3"])
def test_cli_server_that_drops_the_connection_is_one_line_exit_3(
    scheme: str, tmp_path: Path, tls_files: Any
) -> None:
    with FakePop3(hang_up=True) as fake:
        source = f"{scheme}://bob@127.0.0.1:{fake.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
        env |= {"MIGRATOR_SOURCE_PASSWORD": "pw", "PYTHONPATH": str(REPO)}
        cmd = _copy_cmd(
            source, f"mbox:{tmp_path / 'archive'}", tmp_path / "j.db", tls_files.ca_file
        )
        _fails_with_one_line(_run(cmd, env), source, "closed the connection")


# -- stand-ins -----------------------------------------------------------------------------------


class CutProxy:
    """A TCP proxy in front of a server (TLS passes through untouched). It cuts a connection when
    the client sends ``cut_on`` or when ``on_client(data)`` says so, or after ``cut_after`` octets
    from the server, ``cut_times`` times in all; ``rate`` slows one direction ("down": from the
    server, "up": to it) to that many octets a second. ``forwarded`` counts octets each way."""

    def __init__(
        self,
        port: int,
        *,
        cut_on: bytes | None = None,
        cut_after: int | None = None,
        cut_times: int = 1,
        on_client: Callable[[bytes], bool] | None = None,
        rate: float | None = None,
        throttle: str = "down",
    ) -> None:
        self.upstream = port
        self.cut_on = cut_on
        self.cut_after = cut_after
        self.cut_times = cut_times
        self.on_client = on_client
        self.rate = rate
        self.throttle = throttle
        self.cuts = 0
        self.forwarded = {"up": 0, "down": 0}
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CutProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
        self.drop_all()

    def drop_all(self) -> None:
        """Close every connection now, dropping what is still buffered here: what a killed
        process's connection carries no further."""
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self._socks += [client, server]
            cut = threading.Event()
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, cut, up), daemon=True).start()

    def _cut(self, a: socket.socket, b: socket.socket, cut: threading.Event) -> bool:
        with self._lock:
            if self.cuts >= self.cut_times or cut.is_set():
                return False
            self.cuts += 1
            cut.set()
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        return True

    def _pump(self, src: socket.socket, dst: socket.socket, cut: threading.Event, up: bool) -> None:
        direction = "up" if up else "down"
        slow = self.rate is not None and self.throttle == direction
        seen = 0
        while True:
            try:
                data = src.recv(8192 if slow else 65536)
            except OSError:
                data = b""
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            if (
                up
                and (
                    (self.cut_on is not None and self.cut_on in data)
                    or (self.on_client is not None and self.on_client(data))
                )
                and self._cut(src, dst, cut)
            ):
                return
            seen += len(data)
            if (
                not up
                and self.cut_after is not None
                and seen > self.cut_after
                and self._cut(src, dst, cut)
            ):
                return
            try:
                dst.sendall(data)
            except OSError:
                return
            self.forwarded[direction] += len(data)
            if slow:
                time.sleep(len(data) / self.rate)  # type: ignore[operator]


class FakePop3:
    """A minimal POP3 server on a socket, for behaviours no Dovecot setting gives: no UIDL, no
    CAPA, AUTH PLAIN without an initial response, APOP, hanging up at once. It answers each
    command in turn, so pipelined commands simply queue up in the socket."""

    def __init__(
        self,
        mailbox: list[bytes] | None = None,
        *,
        caps: tuple[str, ...] | None = ("UIDL", "TOP", "USER"),
        sasl_ir: bool = True,
        apop: bool = False,
        hang_up: bool = False,
    ) -> None:
        self.mailbox = list(mailbox or [])
        self.caps, self.sasl_ir, self.apop, self.hang_up = caps, sasl_ir, apop, hang_up
        self.commands: list[str] = []
        self.max_pipelined = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]

    def __enter__(self) -> FakePop3:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                if not self.hang_up:
                    with contextlib.suppress(OSError):
                        self._session(conn)

    def _session(self, conn: socket.socket) -> None:
        stamp = b"<1896.697170952@dbc.mtview.ca.us>"
        conn.sendall(b"+OK fake ready" + (b" " + stamp if self.apop else b"") + b"\r\n")
        buf = bytearray()

        def readline() -> bytes:
            while b"\n" not in buf:
                chunk = conn.recv(65536)
                if not chunk:
                    return b""
                buf.extend(chunk)
            end = buf.index(b"\n") + 1
            line = bytes(buf[:end])
            del buf[:end]
            self.max_pipelined = max(self.max_pipelined, 1 + buf.count(b"\n"))
            return line

        box = list(self.mailbox)
        deleted: set[int] = set()
        authed = False

        def send(*lines: bytes) -> None:
            conn.sendall(b"".join(line + b"\r\n" for line in lines))

        def multi(data: bytes) -> None:
            lines = data.split(b"\r\n")[:-1] if data.endswith(b"\r\n") else data.split(b"\r\n")
            stuffed = [b"." + x if x.startswith(b".") else x for x in lines]
            send(b"+OK", *stuffed, b".")

        def uid(n: int) -> bytes:
            return f"uid{n}".encode()

        while True:
            line = readline()
            if not line:
                return
            words = line.decode().strip().split(" ")
            cmd = words[0].upper()
            self.commands.append(" ".join(words) if cmd not in ("PASS",) else "PASS")
            live = [n for n in range(1, len(box) + 1) if n not in deleted]
            if cmd == "CAPA" and self.caps is not None:
                send(b"+OK", *(c.encode() for c in self.caps), b".")
            elif cmd == "USER":
                send(b"+OK")
            elif cmd == "PASS":
                authed = True
                send(b"+OK logged in")
            elif cmd == "AUTH" and len(words) >= 2:
                response = words[2] if len(words) > 2 and self.sasl_ir else None
                if response is None:  # ask for the credentials in a continuation
                    send(b"+ ")
                    response = readline().decode().strip()
                _, _user, password = base64.b64decode(response).split(b"\0")
                authed = password == "p ä:ss".encode()
                send(b"+OK logged in" if authed else b"-ERR [AUTH] Authentication failed.")
            elif cmd == "APOP":
                good = hashlib.md5(stamp + b"tanstaaf").hexdigest()
                authed = words[2] == good
                send(b"+OK" if authed else b"-ERR [AUTH] Authentication failed.")
            elif cmd == "QUIT":
                self.mailbox = [m for n, m in enumerate(box, 1) if n not in deleted]
                send(b"+OK bye")
                return
            elif not authed:
                send(b"-ERR not logged in")
            elif cmd == "STAT":
                send(f"+OK {len(live)} {sum(len(box[n - 1]) for n in live)}".encode())
            elif cmd == "LIST":
                send(b"+OK", *(f"{n} {len(box[n - 1])}".encode() for n in live), b".")
            elif cmd == "UIDL" and self.caps is not None and "UIDL" not in self.caps:
                send(b"-ERR unknown command")
            elif cmd == "UIDL":
                send(b"+OK", *(f"{n} ".encode() + uid(n) for n in live), b".")
            elif cmd in ("TOP", "RETR", "DELE") and (
                not words[1].isdigit() or int(words[1]) not in live
            ):
                send(b"-ERR no such message")
            elif cmd == "TOP":
                data = box[int(words[1]) - 1]
                multi(data[: data.index(b"\r\n\r\n") + 4])
            elif cmd == "RETR":
                multi(box[int(words[1]) - 1])
            elif cmd == "DELE":
                deleted.add(int(words[1]))
                send(b"+OK deleted")
            else:
                send(b"-ERR unknown command")
