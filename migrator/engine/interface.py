"""What a caller gives the engine and gets back: the options of a copy job, each folder's
counts, the run's summary, and the reporter the engine tells its progress to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from migrator.filters import MessageFilter
from migrator.folders import FolderMap, FolderPlan
from migrator.ratelimit import ByteBudgets, TokenBucket
from migrator.rules import MessageRules


@dataclass
class CopyOptions:
    """How a job copies (the CLI's and the manifest's options, after the profiles)."""

    folder_map: FolderMap = field(default_factory=FolderMap)
    message_filter: MessageFilter = field(default_factory=MessageFilter)
    delete_source: bool = False
    dry_run: bool = False
    workers: int = 1
    #: Reconnect attempts in a row that moved nothing before the run gives up (see retry).
    retries: int = 5
    #: First pause before reconnecting; doubles at each attempt.
    retry_delay: float = 1.0
    #: Flags added to every copied message (--flags seen: a POP client had read everything).
    add_flags: frozenset[str] = frozenset()
    #: Bytes and messages per append batch (and per journal transaction): large enough that one
    #: journal commit serves hundreds of messages, small enough that a batch cut off by a lost
    #: connection is cheap to settle and send again.
    batch_bytes: int = 2 * 1024 * 1024
    batch_count: int = 400
    #: Smallest fetch or append chunk after connections kept dropping mid-batch (see flow.Pace):
    #: below it the round trips, not the link, would bound the rate.
    min_batch_bytes: int = 64 * 1024
    #: --max-bytes-per-second and the profiles' rates, shared by every worker.
    byte_rate: TokenBucket | None = None
    message_rate: TokenBucket | None = None
    #: Daily byte budgets (source download, target upload): when spent, the run stops cleanly.
    budgets: ByteBudgets | None = None
    #: Message rules the target's profile switches on; every change is counted.
    rules: MessageRules = field(default_factory=MessageRules)
    #: The largest message the target takes according to its profile, and where that is from.
    size_limit: int | None = None
    size_limit_origin: str = "the target's profile"
    #: Waits a server may ask for ("Suggested Backoff Time") per folder before the run gives up.
    max_throttles: int = 50
    #: `sync`: also remove from the target what this job copied and the source no longer holds,
    #: and move what moved (see migrator.converge); --max-delete lifts the guard up to N a folder.
    mirror: bool = False
    max_delete: int | None = None


@dataclass
class FolderStats:
    plan: FolderPlan
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    deleted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: Set when the folder could not be processed at all.
    error: str | None = None
    #: Messages a rule changed (see migrator.rules), and how many times each rule did.
    changed: int = 0
    changes: Counter[str] = field(default_factory=Counter)
    #: What this pass changed in messages copied before (see migrator.converge).
    flagged: int = 0
    moved: int = 0
    removed: int = 0


@dataclass
class RunSummary:
    folders: list[FolderStats]
    seconds: float
    interrupted: bool = False
    dry_run: bool = False
    notices: list[str] = field(default_factory=list)
    #: Why the run stopped before the end on its own (a daily budget spent), with when to rerun.
    stopped: str | None = None

    def total(self, attribute: str) -> int:
        return sum(getattr(f, attribute) for f in self.folders)

    def changes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for folder in self.folders:
            total.update(folder.changes)
        return total

    @property
    def ok(self) -> bool:
        return (
            not self.interrupted
            and self.stopped is None
            and all(f.failed == 0 and f.error is None for f in self.folders)
        )


class Reporter(Protocol):
    """What the engine tells its caller while it runs; called from worker threads."""

    def planned(self, plans: Sequence[FolderPlan]) -> None: ...

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None: ...

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None: ...

    def folder_finished(self, stats: FolderStats) -> None: ...

    def notice(self, text: str) -> None: ...


class NullReporter:
    """Tells nobody: the reporter of a caller that shows no progress."""

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        pass

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        pass

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        pass

    def folder_finished(self, stats: FolderStats) -> None:
        pass

    def notice(self, text: str) -> None:
        pass
