"""IMAP4rev1 store, source and target, on imapclient.

Round trips are what make IMAP copies slow, so everything here works in batches: one UID SEARCH
per folder to learn what exists, one UID FETCH per thousand messages for metadata, one UID FETCH
per few megabytes for bodies, and one MULTIAPPEND (RFC 3502, sent without waiting when the server
has LITERAL+) per batch of appends. APPENDUID (RFC 4315) gives the target UIDs back.

The modules: store.py (ImapStore) on writing.py, reading.py, folders.py and session.py, one
layer each; parse.py (pure IMAP text); wire.py (every private imaplib/imapclient member used).
"""

from migrator.stores.imap.parse import (
    batches_by_size,
    complete_bodies,
    expand_uid_set,
    parse_appenduid,
    parse_bodies,
    parse_meta,
    uid_set,
)
from migrator.stores.imap.reading import BODY_BATCH_BYTES, BODY_BATCH_COUNT, FETCH_SLACK
from migrator.stores.imap.session import CLOSE_GRACE, META_BATCH, META_BATCH_MIN
from migrator.stores.imap.store import ImapStore
from migrator.stores.imap.wire import MAX_UNTAGGED, read_fetch_answers

__all__ = [
    "BODY_BATCH_BYTES",
    "BODY_BATCH_COUNT",
    "CLOSE_GRACE",
    "FETCH_SLACK",
    "MAX_UNTAGGED",
    "META_BATCH",
    "META_BATCH_MIN",
    "ImapStore",
    "batches_by_size",
    "complete_bodies",
    "expand_uid_set",
    "parse_appenduid",
    "parse_bodies",
    "parse_meta",
    "read_fetch_answers",
    "uid_set",
]
