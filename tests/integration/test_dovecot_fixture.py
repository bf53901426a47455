"""Tests of the test infrastructure itself: real Dovecot servers, corpus seeding and snapshots."""

from __future__ import annotations

import imaplib
import os
import poplib
import re
import ssl
import time
from datetime import UTC

import imapclient
import pytest

from tests.corpus import (
    Msg,
    expected_snapshot,
    make_corpus,
    make_message,
    message_date,
    seed_imap,
    snapshot_imap,
)
from tests.dovecot import (
    DovecotServer,
    make_untrusted_ca,
    make_wrong_host_tls,
)


def _delimiters(client) -> set[bytes]:
    return {delim for _flags, delim, _name in client.list_folders()}


def _uids(client, folder: str) -> list[int]:
    client.select_folder(folder, readonly=True)
    return sorted(client.search("ALL"))


def test_seed_and_snapshot_roundtrip_on_source(dovecot_source, account):
    src = account(dovecot_source)
    msgs = make_corpus(seed=1, n=30)
    assert {m.folder for m in msgs} >= {"Archive/2023", "Перепи́ска/Ünïcødé", "Lists/Dev & Ops"}
    assert any(b"\r\nFrom " in m.data for m in msgs)
    assert any(m.message_id is None for m in msgs)
    client = src.client()
    seed_imap(client, msgs, dovecot_source.separator)

    assert _delimiters(client) == {b"/"}
    snap = snapshot_imap(client)
    assert snap == expected_snapshot(msgs)
    assert sum(len(v) for v in snap.values()) == 30
    # byte-identical, flags and dates included: spot-check one message field by field
    m = msgs[5]
    got = next(s for s in snap[m.folder] if s.body == m.data)
    assert got.flags == frozenset(m.flags)
    assert got.date == m.date.astimezone(UTC)
    assert got.date.tzinfo is not None


def test_target_uses_dot_separator_and_special_use(dovecot_target, account):
    dst = account(dovecot_target)
    msgs = make_corpus(seed=2, n=20)
    client = dst.client()
    seed_imap(client, msgs, dovecot_target.separator)

    folders = client.list_folders()
    assert {delim for _f, delim, _n in folders} == {b"."}
    names = {name for _f, _d, name in folders}
    assert "Archive.2023.Q1" in names
    assert "Перепи́ска.Ünïcødé" in names
    flags_of = {name: set(flags) for flags, _d, name in folders}
    assert b"\\Sent" in flags_of["Sent"]
    assert b"\\Drafts" in flags_of["Drafts"]
    assert b"\\Archive" in flags_of["Archive"]
    # snapshot names come back with '/' whatever the server's separator
    assert snapshot_imap(client) == expected_snapshot(msgs)


def test_only_inbox_exists_for_a_new_account(dovecot_target, account):
    client = account(dovecot_target).client()
    assert [name for _f, _d, name in client.list_folders()] == ["INBOX"]
    assert snapshot_imap(client) == {"INBOX": []}


def test_untrusted_ca_is_refused(dovecot_source, account, tmp_path):
    src = account(dovecot_source)
    bad_ca = make_untrusted_ca(tmp_path)
    ctx = ssl.create_default_context(cafile=str(bad_ca))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        imapclient.IMAPClient(
            dovecot_source.host, port=dovecot_source.imaps_port, ssl_context=ctx, timeout=10
        )
    # ... while the right CA works
    assert src.client().noop()


def test_wrong_host_certificate_is_refused(tls_files, dovecot_tmp):
    wrong = make_wrong_host_tls(tls_files, dovecot_tmp / "tls")
    with DovecotServer(dovecot_tmp / "srv", tls=wrong) as server:
        server.add_user("bob", "pw")
        with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
            server.client("bob", "pw", timeout=10)
        # the chain itself is trusted: only the host name is wrong
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_file))
        ctx.check_hostname = False
        c = imapclient.IMAPClient(server.host, port=server.imaps_port, ssl_context=ctx, timeout=10)
        c.login("bob", "pw")
        c.logout()


def test_failed_logins_are_refused_without_growing_delays(dovecot_source, account):
    src = account(dovecot_source)
    for k in range(4):
        started = time.monotonic()
        with pytest.raises(imapclient.exceptions.LoginError):
            dovecot_source.client(src.user, f"wrong-{k}", timeout=10)
        assert time.monotonic() - started < 2.5  # no auth penalty (it would reach 4-15 s)
    started = time.monotonic()
    src.client()
    assert time.monotonic() - started < 2.5


def _imap_caps(port: int) -> set[str]:
    conn = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    try:
        return set(conn.capabilities)
    finally:
        conn.shutdown()


def _pop3_capa(port: int) -> dict:
    conn = poplib.POP3("127.0.0.1", port, timeout=10)
    try:
        return conn.capa()
    finally:
        conn.quit()


def test_starttls_offered_and_not_offered(dovecot_source, account):
    src = account(dovecot_source)
    server = dovecot_source
    assert "STARTTLS" in _imap_caps(server.imap_port)
    assert "STARTTLS" not in _imap_caps(server.imap_nostarttls_port)
    assert "STLS" in _pop3_capa(server.pop3_port)
    assert "STLS" not in _pop3_capa(server.pop3_nostls_port)

    # STARTTLS really upgrades, with the certificate verified
    conn = imaplib.IMAP4(server.host, server.imap_port, timeout=10)
    conn.starttls(ssl_context=server.ssl_context())
    conn.login(src.user, src.password)
    conn.logout()
    pop = poplib.POP3(server.host, server.pop3_port, timeout=10)
    pop.stls(context=server.ssl_context())
    pop.user(src.user)
    pop.pass_(src.password)
    pop.quit()
    # plaintext login works where STARTTLS is not offered (tls=none endpoints)
    conn = imaplib.IMAP4(server.host, server.imap_nostarttls_port, timeout=10)
    conn.login(src.user, src.password)
    conn.logout()


def test_server_without_starttls(tls_files, dovecot_tmp):
    with DovecotServer(dovecot_tmp / "srv", tls=tls_files, starttls_offered=False) as server:
        assert server.imap_port == server.imap_nostarttls_port
        assert server.pop3_port == server.pop3_nostls_port
        assert "STARTTLS" not in _imap_caps(server.imap_port)
        assert "STLS" not in _pop3_capa(server.pop3_port)
        assert server.url("imap", "carol") == f"imap://carol@127.0.0.1:{server.imap_port}"
        server.add_user("carol", "pw")
        server.client("carol", "pw").logout()


def _corpus_in_inbox(seed: int, n: int) -> list[Msg]:
    return [Msg("INBOX", m.data, m.flags, m.date) for m in make_corpus(seed, n)]


def test_pop3s_serves_the_inbox_without_touching_flags(dovecot_source, account):
    src = account(dovecot_source)
    msgs = [Msg("INBOX", make_message(900 + k), (), message_date(900 + k)) for k in range(3)]
    client = src.client()
    seed_imap(client, msgs, "/")
    pop = src.pop3()
    assert pop.stat()[0] == 3
    uidls = [line.split()[1] for line in pop.uidl()[1]]
    assert all(re.fullmatch(rb"[0-9a-f]{16}", u) for u in uidls)  # %08Xu%08Xv: lower case
    _resp, lines, _octets = pop.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == msgs[0].data
    pop.quit()
    assert snapshot_imap(client) == expected_snapshot(msgs)  # RETR did not add \Seen


@pytest.mark.parametrize("renumber", [False, True])
def test_set_uidvalidity_keeps_messages(dovecot_source, account, renumber):
    src = account(dovecot_source)
    msgs = [m for m in make_corpus(seed=3, n=12) if m.folder == "INBOX" or "/" in m.folder]
    client = src.client()
    seed_imap(client, msgs, "/")
    before = snapshot_imap(client)
    folder = "Archive/2023"
    old = client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"]
    old_uids = _uids(client, folder)
    assert old == src.uidvalidity(folder)
    client.logout()

    new = src.set_uidvalidity(folder, renumber=renumber)
    assert new != old

    client = src.client()
    assert client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"] == new
    assert snapshot_imap(client) == before
    new_uids = _uids(client, folder)
    assert len(new_uids) == len(old_uids) > 0
    if renumber:
        assert not set(new_uids) & set(old_uids)
    else:
        assert new_uids == old_uids
    # an explicit value, on a non-ASCII folder
    assert src.set_uidvalidity("Перепи́ска/Ünïcødé", 4242) == 4242
    assert client.folder_status("Перепи́ска/Ünïcødé", ["UIDVALIDITY"])[b"UIDVALIDITY"] == 4242


def test_restart_keeps_ports_users_and_mail(tls_files, dovecot_tmp):
    msgs = _corpus_in_inbox(seed=4, n=5)
    with DovecotServer(dovecot_tmp / "srv", tls=tls_files, separator=".") as server:
        server.add_user("dave", "pw")
        seed_imap(server.client("dave", "pw"), msgs, ".")
        ports = server.ports
        server.restart()
        assert server.running and server.ports == ports
        assert snapshot_imap(server.client("dave", "pw")) == expected_snapshot(msgs)
        server.stop()
        assert not server.running
        with pytest.raises(ConnectionRefusedError):
            imapclient.IMAPClient(server.host, port=server.imaps_port, ssl=False, timeout=5)
    assert "starting up" in server.log_text()


def test_mbox_mail_location(dovecot_target, account):
    acct = account(dovecot_target, mail="mbox:~/mail:INBOX=~/mail/inbox")
    msgs = [m for m in make_corpus(seed=5, n=15) if "/" not in m.folder]
    client = acct.client()
    seed_imap(client, msgs, ".")
    assert snapshot_imap(client) == expected_snapshot(msgs)
    home = dovecot_target.home(acct.user)
    assert (home / "mail" / "inbox").is_file()
    assert (home / "mail" / "Sent").is_file()


def test_serves_a_tree_written_by_the_tests(dovecot_source, account, dovecot_tmp):
    """A Maildir written by root with 0600 files (as migrator writes archives), then served."""
    maildir = dovecot_tmp / "archive" / "Maildir"
    msgs = [make_message(700 + k) for k in range(3)]
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for k, data in enumerate(msgs):
        path = maildir / "cur" / f"1700000000.{k}.test:2,S"
        path.write_bytes(data.replace(b"\r\n", b"\n"))
        os.chmod(path, 0o600)
    dovecot_source.adopt(maildir)
    acct = account(dovecot_source, mail=f"maildir:{maildir}")
    snap = snapshot_imap(acct.client())
    assert sorted(s.body for s in snap["INBOX"]) == sorted(msgs)
    assert all(s.flags == {"\\Seen"} for s in snap["INBOX"])


def test_doveadm_and_log(dovecot_source, account):
    # outside pytest's temp dir, which a concurrently starting pytest session chmods to 0700
    assert "pytest-of-" not in str(dovecot_source.root)
    src = account(dovecot_source)
    src.client().create_folder("Archive/2024")
    listing = dovecot_source.doveadm("mailbox", "list", "-u", src.user).split()
    assert "Archive/2024" in listing
    assert f"user=<{src.user}>" in dovecot_source.log_text()
