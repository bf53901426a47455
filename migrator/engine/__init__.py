"""The copy engine: moves messages between any two stores, knowing nothing of protocols.

Per folder: ask the journal what is done, list only the rest, compare with the target when the
journal cannot vouch for it (first run, lost journal, new UIDVALIDITY, an append left in doubt),
then stream batches through a bounded queue: a reader thread fetches from the source while the
worker appends the previous batch to the target. Each batch is journaled 'pending' before the
append and 'done' after the target's confirmation, so a kill at any moment loses nothing and
duplicates nothing. Several workers take different target folders, each with its own connections.

The parts (docs/design.md): ``scheduler`` (folders over workers), ``retry`` (reconnects and
backoff), ``plan`` (one folder's listing, budgets and reconciliation), ``pipeline`` (reader and
writers over a typed queue), ``commit`` (the target's answers into the journal), ``flow`` (chunk
sizes and bytes in flight), ``context`` (the state they share) and ``interface`` (what a caller
gives and gets back).
"""

from migrator.engine.interface import CopyOptions, FolderStats, NullReporter, Reporter, RunSummary
from migrator.engine.scheduler import STOP_GRACE, Engine
from migrator.stores.dryrun import DryRunTarget

__all__ = [
    "STOP_GRACE",
    "CopyOptions",
    "DryRunTarget",
    "Engine",
    "FolderStats",
    "NullReporter",
    "Reporter",
    "RunSummary",
]
