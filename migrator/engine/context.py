"""The state the parts of the engine share: the run's (``RunContext``), one worker's
(``Worker``) and one folder's (``FolderRun``), each carried as one object."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from migrator.checkpoint import Journal
from migrator.converge import Converger
from migrator.engine.flow import InFlight, Pace
from migrator.engine.interface import CopyOptions, FolderStats, Reporter
from migrator.folders import FolderPlan
from migrator.model import FolderPath, MessageRef
from migrator.stores.base import Source, Target


class Stop(Exception):
    """Raised inside a worker when the run is being stopped."""


@dataclass
class Helpable:
    """A folder stream that other workers may append batches for (see scheduler.Engine._help)."""

    write: Callable[[Target], None]
    #: Helpers appending for it now (under Spare.cond).
    writers: int = 0


class Spare:
    """Folder streams whose batches a worker with no folder left may append, and how many
    workers are still inside a folder; both under ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.streams: list[Helpable] = []
        self.busy = 0


class RunContext:
    """What every worker of one run shares: the journal, the options, the reporter, the stop
    event, the bytes in flight and what the run will say at its end."""

    def __init__(
        self, journal: Journal, options: CopyOptions, reporter: Reporter, stop: threading.Event
    ) -> None:
        self.journal = journal
        self.options = options
        self.reporter = reporter
        self.stop = stop
        self.notices: list[str] = []
        #: Set when a daily budget is spent: the message saying when to rerun.
        self.stopped: str | None = None
        #: Fetched batches one append may take together: the target's commit_group (see
        #: scheduler.Engine.run, which also sizes ``in_flight`` from it).
        self.group = 1
        #: Message bytes fetched and not yet appended, all workers together.
        self.in_flight = InFlight(0)
        #: Messages whose bytes a daily budget already reserved (see plan.within_budget).
        self.budgeted: set[tuple[FolderPath, str]] = set()
        #: Several writers may share a folder's stats.
        self.stats_lock = threading.Lock()
        self.spare = Spare()
        self.converger = Converger(journal, options.dry_run, options.max_delete, self.notice)

    def notice(self, text: str) -> None:
        self.notices.append(text)
        self.reporter.notice(text)

    def size_limit(self, target: Target) -> tuple[int | None, str]:
        """The largest message the target takes (its APPENDLIMIT, or its profile's figure when
        smaller), and where that comes from."""
        known = [
            (limit, origin)
            for limit, origin in (
                (target.max_message_size, "the target's APPENDLIMIT"),
                (self.options.size_limit, self.options.size_limit_origin),
            )
            if limit is not None
        ]
        return min(known) if known else (None, "")


@dataclass
class Worker:
    """What one worker keeps from folder to folder: its connections and its pace."""

    source: Source
    target: Target
    pace: Pace
    #: When a connection was last lost (or the worker started): the retry policy notes it, and
    #: an append cut off then may still land on the server for a while (see plan.reconcile).
    dropped: float = field(default_factory=time.monotonic)


@dataclass
class Listing:
    """What a folder's listing returned so far, kept across reconnects (same validity), so that
    a connection that drops during a long listing does not start it again from the top."""

    validity: str | None = None
    refs: dict[str, MessageRef] = field(default_factory=dict)


@dataclass
class FolderRun:
    """One folder's copy, across its reconnects: where from and to, with which connections, what
    was listed, and the counts so far. ``validity`` is the source folder's, once opened."""

    worker: Worker
    plan: FolderPlan
    stats: FolderStats
    listing: Listing = field(default_factory=Listing)
    validity: str = ""
    #: The source folder and the target folder (the plan's, named short).
    src: FolderPath = field(init=False)
    dst: FolderPath = field(init=False)

    def __post_init__(self) -> None:
        self.src, self.dst = self.plan.source.path, self.plan.target

    @property
    def source(self) -> Source:
        return self.worker.source

    @property
    def target(self) -> Target:
        return self.worker.target

    @property
    def pace(self) -> Pace:
        return self.worker.pace
