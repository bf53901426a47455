"""The checkpoint journal: what happened to every source message, in SQLite.

The crash promise rests on one order of events, as in mbsync: a batch is written as 'pending'
(durably) before it is appended to the target, and marked 'done' once the target has confirmed
it. After a crash, 'pending' rows are the only doubt, and the engine settles it by looking in the
target. A folder is 'reconciled' once the engine has compared it with the target's contents; until
then (first run, lost journal, new UIDVALIDITY) nothing is appended without that comparison.

The journal never holds a secret: endpoints are stored as the user wrote them, and URLs cannot
carry a password.

The parts: ``journal.py`` (Journal, and opening, locking, peeking), ``base.py`` (the shared
connection and transaction), ``schema.py`` (tables, versions, refusing another program's
database), ``ledger.py`` (the copy ledger and the crash rule), ``convergence.py`` (what later
passes keep), ``history.py`` (runs, counts for `status`, a batch's attempts), ``rows.py`` and
``records.py`` (values and statements). See docs/design.md.
"""

from migrator.checkpoint.journal import LOCK_SUFFIX, Journal, lock_path
from migrator.checkpoint.records import (
    RUN_DONE,
    Commit,
    Copied,
    Failure,
    FolderCounts,
    JournalSummary,
)
from migrator.checkpoint.rows import (
    DONE_STATES,
    flags_text,
    folder_path,
    folder_text,
    parse_flags_text,
)
from migrator.checkpoint.schema import _SCHEMA, SCHEMA_VERSION

__all__ = [
    "DONE_STATES",
    "LOCK_SUFFIX",
    "RUN_DONE",
    "SCHEMA_VERSION",
    "_SCHEMA",
    "Commit",
    "Copied",
    "Failure",
    "FolderCounts",
    "Journal",
    "JournalSummary",
    "flags_text",
    "folder_path",
    "folder_text",
    "lock_path",
    "parse_flags_text",
]
