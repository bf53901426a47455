"""ImapStore: one IMAP account, source and target, in four layers, each on the one before:
session.py (connection, login, capabilities), folders.py (names, LIST, SELECT, rights),
reading.py (listing and fetching), writing.py (appending and a later pass's changes). Every
private imaplib/imapclient member they need is used in wire.py."""

from __future__ import annotations

from migrator.stores.imap.writing import ImapWriting


class ImapStore(ImapWriting):
    """One IMAP account. Not thread-safe: the engine gives each worker its own store."""

    can_delete = True
    #: A network server may file an APPEND up to a second after the process that sent it died.
    late_append_window = 1.0
    concurrent_appends = True
    can_update = True
