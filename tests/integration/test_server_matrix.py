"""The server matrix: what proves fidelity and exactly-once, against each IMAP server we run.

Servers (tests/integration/conftest.py): Dovecot 2.3 without a namespace prefix ('/' and '.'),
Dovecot with ``prefix = INBOX.`` and '.', Cyrus IMAP 3.6 with ``altnamespace: no`` (Debian's
default: ``INBOX.`` and '.') and ``altnamespace: yes`` ('' and '/'). Each pair below is run as
source -> target and back, so that every server is read and written with its own namespace.
"""

from __future__ import annotations

import pytest

from tests.corpus import make_corpus, make_message


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
