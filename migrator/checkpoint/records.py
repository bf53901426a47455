"""What the journal hands out and takes in: plain values, no connection behind them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from migrator.model import FolderPath, MessageRef

#: The status of a run that completed (runs.status; see Journal.finish_run).
RUN_DONE = "done"


@dataclass(frozen=True)
class Copied:
    """A message the journal says the target holds: copied by this job ('done') or found there
    ('skipped'), with the flags last applied to the target (None: not known)."""

    src_id: str
    dst_id: str | None
    key: str
    size: int
    flags: frozenset[str] | None
    state: str
    #: Removed from the source by --delete-source (gone on purpose: not to mirror).
    deleted: bool = False


@dataclass(frozen=True)
class FolderCounts:
    src_folder: FolderPath
    dst_folder: FolderPath
    done: int
    skipped: int
    failed: int
    pending: int
    #: What the last pass changed in copies made before (see migrator.converge).
    flagged: int = 0
    moved: int = 0
    removed: int = 0


@dataclass(frozen=True)
class Failure:
    src_folder: FolderPath
    src_id: str
    error: str
    attempts: int


@dataclass(frozen=True)
class Commit:
    """The target's answers for one batch: what it took (with its ids), what it refused (with
    the reason), the folder's committed end, and the rate (bytes a second) it took the batch at,
    when measured (see append_rate())."""

    src: FolderPath
    validity: str
    dst: FolderPath
    done: Sequence[tuple[MessageRef, str | None]]
    failed: Sequence[tuple[MessageRef, str]]
    resume_point: str | None = None
    append_rate: float | None = None


@dataclass(frozen=True)
class JournalSummary:
    """What a batch's client reads from an account's journal, without taking its lock (the
    account may be running on a worker): see Journal.summary."""

    #: The status of the last run recorded (None: no run, or the runs could not be read).
    last_run: str | None
    #: (messages, bytes) that reached the target during the batch run asked about, all its
    #: attempts together (see Journal.copied_in); None: not asked, or that run never began here.
    copied: tuple[int, int] | None = None

    @property
    def finished(self) -> bool:
        """The last run recorded completed."""
        return self.last_run == RUN_DONE
