"""The copy engine: moves messages between any two stores, knowing nothing of protocols.

Per folder: ask the journal what is done, list only the rest, compare with the target when the
journal cannot vouch for it (first run, lost journal, new UIDVALIDITY, an append left in doubt),
then stream batches through a bounded queue: a reader thread fetches from the source while the
worker appends the previous batch to the target. Each batch is journaled 'pending' before the
append and 'done' after the target's confirmation, so a kill at any moment loses nothing and
duplicates nothing. Several workers take different target folders, each with its own connections.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, cast

from migrator import heap
from migrator.checkpoint import Commit, Journal
from migrator.converge import Converger, FolderChanges
from migrator.errors import ConnectError, FolderError, MessageError, StoreError
from migrator.filters import MessageFilter
from migrator.folders import FolderMap, FolderPlan, keep_recorded
from migrator.model import Folder, FolderPath, MessageRef, crlf_size, display_name, message_key
from migrator.ratelimit import (
    ByteBudgets,
    TokenBucket,
    is_size_refusal,
    recorded_limit,
    size_reason,
)
from migrator.rules import MessageRules, loose_key
from migrator.stores.base import AppendResult, FlagChange, Source, Target


@dataclass
class CopyOptions:
    folder_map: FolderMap = field(default_factory=FolderMap)
    message_filter: MessageFilter = field(default_factory=MessageFilter)
    delete_source: bool = False
    dry_run: bool = False
    workers: int = 1
    #: Reconnect attempts after a dropped connection before the run gives up.
    retries: int = 5
    #: First pause before reconnecting; doubles at each attempt.
    retry_delay: float = 1.0
    #: Flags added to every copied message (--flags seen: a POP client had read everything).
    add_flags: frozenset[str] = frozenset()
    #: Bytes and messages per append batch (and per journal transaction).
    batch_bytes: int = 2 * 1024 * 1024
    batch_count: int = 400
    #: Smallest fetch or append chunk after connections kept dropping mid-batch (see _Pace).
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


class DryRunTarget(Target):
    """Reads through to the real target, writes nothing: the one place dry runs are decided."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.label = inner.label
        self.delimiter = inner.delimiter
        self.max_message_size = inner.max_message_size

    def connect(self) -> None:
        self.inner.connect()
        self.delimiter = self.inner.delimiter
        self.max_message_size = self.inner.max_message_size

    def close(self) -> None:
        self.inner.close()

    def list_folders(self):  # type: ignore[no-untyped-def]
        return self.inner.list_folders()

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        pass

    def index(self, path: FolderPath) -> list[str]:
        return list(self.inner.index(path))

    @property
    def can_update(self) -> bool:  # type: ignore[override]
        return self.inner.can_update

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        return self.inner.present_ids(path, ids)

    def ids_by_key(self, path: FolderPath) -> list[tuple[str, str]]:
        return self.inner.ids_by_key(path)

    def update_flags(self, path: FolderPath, changes: Sequence[FlagChange]) -> None:
        pass

    def remove(self, path: FolderPath, ids: Sequence[str]) -> None:
        pass

    def move(self, path: FolderPath, ids: Sequence[str], to: FolderPath) -> list[str | None]:
        return [None for _ in ids]

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        return [AppendResult() for _ in items]


class _Stop(Exception):
    """Raised inside a worker when the run is being stopped."""


class _Pace:
    """How much one worker fetches or appends per round trip. A connection that drops in the
    middle of a chunk makes the next chunks an eighth of the size, each success lets them grow back
    (double): a link that breaks every few hundred kB still moves mail, where a fixed 8 MB batch
    would fail the same way at every reconnect."""

    def __init__(self, ceiling: int, floor: int, append_ceiling: int | None = None) -> None:
        self.ceilings = {"fetch": ceiling, "append": append_ceiling or ceiling}
        self.floor = min(floor, ceiling)
        self.fetch = ceiling
        # Appends start small and double: the first batch measures the target's rate (see
        # Engine._reconcile) and leaves little in doubt should the run die in it.
        self.append = min(ceiling, max(self.floor, FIRST_APPEND_BYTES))
        #: When a connection was last lost (or the worker started): an append cut off then may
        #: still land on the server for a moment, see Engine._reconcile.
        self.dropped = time.monotonic()

    def shrink(self, which: str, tried: int) -> None:
        current = min(getattr(self, which), max(tried, 1))
        setattr(self, which, max(self.floor, current // 8))

    def grow(self, which: str) -> None:
        setattr(self, which, min(self.ceilings[which], getattr(self, which) * 2))


def _chunk(refs: Sequence[MessageRef], start: int, limit: int) -> list[MessageRef]:
    """refs[start:] up to ``limit`` bytes (at least one message)."""
    end, total = start, 0
    while end < len(refs) and (end == start or total + refs[end].size <= limit):
        total += refs[end].size
        end += 1
    return list(refs[start:end])


@dataclass
class _Listing:
    """What a folder's listing returned so far, kept across reconnects (same validity), so that
    a connection that drops during a long listing does not start it again from the top."""

    validity: str | None = None
    refs: dict[str, MessageRef] = field(default_factory=dict)


class _InFlight:
    """Bounds the message bytes held between fetching and appending, across all workers, so that
    memory follows the bytes in flight and not the number or size of messages: a reader waits
    before fetching while others' bytes would take the total over ``limit``. A message larger
    than the limit is fetched alone, once nothing else is held, so it is held once at most."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def share(self) -> _Share:
        return _Share(self)


class _Share:
    """One folder stream's part of the bytes in flight; what it still holds when it ends (a
    stop, a lost connection) goes back to the pool."""

    def __init__(self, pool: _InFlight) -> None:
        self.pool = pool
        self.held = 0

    def acquire(self, nbytes: int, *cancel: threading.Event, besides: int = 0) -> bool:
        """Wait for room for ``nbytes`` (or until no more than ``besides`` bytes are held)."""
        pool = self.pool
        with pool.cond:
            while pool.used > besides and pool.used + nbytes > pool.limit:
                if any(event.is_set() for event in cancel):
                    return False
                pool.cond.wait(0.2)
            pool.used += nbytes
            self.held += nbytes
        if nbytes > pool.limit:
            heap.trim()  # nothing else is held: what the small ones left goes back first
        return True

    def release(self, nbytes: int) -> None:
        pool = self.pool
        with pool.cond:
            nbytes = min(nbytes, self.held)
            self.held -= nbytes
            pool.used -= nbytes
            pool.cond.notify_all()

    def close(self) -> None:
        self.release(self.held)


_END = object()


def _held(ref: MessageRef, data: bytes | MessageError) -> int:
    """The bytes in flight a fetched message counts for: its claimed size, or what came when
    that is more (see the reader in Engine._stream)."""
    return max(ref.size, len(data)) if isinstance(data, bytes) else ref.size


@dataclass
class _Owed:
    """A part's answers from the target, not yet in the journal (see Engine._write_batch)."""

    answers: Commit
    stats: FolderStats
    plan: FolderPlan
    changed: dict[str, tuple[str, ...]]
    appended: int
    nbytes: int
    #: Bytes of the messages copied, for the summary.
    copied_bytes: int = 0
    written: bool = False


@dataclass
class _Helpable:
    """A folder stream that other workers may append batches for (see Engine._help)."""

    write: Callable[[Target], None]
    #: Helpers appending for it now (under Engine._helping).
    writers: int = 0


#: Seconds an interrupted run waits for its workers to finish what they are doing.
STOP_GRACE = 3.0
#: The first append of a worker (it grows from there, see _Pace).
FIRST_APPEND_BYTES = 256 * 1024
#: Bytes a second assumed for a target whose rate was never measured (Engine._reconcile).
SLOW_APPEND_RATE = 64 * 1024
#: Appends of at least this many bytes measure the target's rate.
RATE_SAMPLE_BYTES = 32 * 1024
#: The longest wait for appends left in doubt to land.
MAX_SETTLE = 120.0


class Engine:
    def __init__(
        self,
        open_source: Callable[[], Source],
        open_target: Callable[[], Target],
        journal: Journal,
        options: CopyOptions,
        reporter: Reporter | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.open_source = open_source
        self.open_target = (lambda: DryRunTarget(open_target())) if options.dry_run else open_target
        self.journal = journal
        self.options = options
        self.reporter: Reporter = reporter or NullReporter()
        self.stop = stop or threading.Event()
        self._fatal: BaseException | None = None
        self._notices: list[str] = []
        #: Set when a daily budget is spent: the message saying when to rerun.
        self._stopped: str | None = None
        #: Fetched batches one append may take together: the target's commit_group (see run).
        self._group = 1
        #: Message bytes fetched and not yet appended, all workers together (see _InFlight).
        self._in_flight = _InFlight(options.batch_bytes * 2 * max(1, options.workers))
        self._budgeted: set[tuple[FolderPath, str]] = set()
        self._stats_lock = threading.Lock()
        #: Folder streams whose batches a worker with no folder left may append (see _help),
        #: and how many workers are still inside a folder; both under _helping.
        self._helpable: list[_Helpable] = []
        self._busy = 0
        self._helping = threading.Condition()
        self._converger = Converger(journal, options.dry_run, options.max_delete, self._notice)

    def _notice(self, text: str) -> None:
        self._notices.append(text)
        self.reporter.notice(text)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunSummary:
        started = time.monotonic()
        heap.configure()
        source, target = self.open_source(), self.open_target()
        try:
            source.connect()
            target.connect()
            source_folders = source.list_folders()
            plans = self.options.folder_map.plan(
                source_folders, target.list_folders(), target.delimiter
            )
            plans = self._keep_targets(plans)
            mirrored: dict[FolderPath, FolderChanges] = {}
            if self.options.mirror:
                listed = {f.path for f in source_folders}
                vanished = [
                    (src, dst)
                    for src, dst in self.journal.folder_targets().items()
                    if src not in listed and self.options.folder_map.selected(Folder(src))
                ]
                mirrored = self._converger.mirror(source, target, plans, vanished)
        except BaseException:
            source.close()
            target.close()
            raise
        # Room for a group of batches waiting for the writer and one being fetched, per worker.
        self._group = max(1, target.commit_group)
        workers = max(1, self.options.workers)
        self._in_flight = _InFlight(self.options.batch_bytes * (self._group + 1) * workers)
        if not source.stable_ids:
            self._notice(
                f"{source.label}: the server gives no stable message ids (no UIDL), so messages "
                "are recognised by a digest of their headers: identity is weaker there"
            )
        left_out = self.options.folder_map.left_out(source_folders)
        if left_out:
            shown = ", ".join(display_name(f.path) for f in left_out[:5])
            more = f" and {len(left_out) - 5} more" if len(left_out) > 5 else ""
            self._notice(
                f"{source.label}: left out {len(left_out)} folder(s) of other users' or shared "
                f"namespaces ({shown}{more}); --include-shared copies them"
            )
        for plan in plans:
            if plan.note and plan.note.startswith("renamed"):
                self._notice(f"{plan.source_name} -> {plan.target_name}: {plan.note}")
        if self.options.rules.active:
            self._notice(
                f"{target.label}: message rules on ({self.options.rules.describe()}); each "
                "change is counted in the summary"
            )
        self.reporter.planned(plans)
        units: dict[FolderPath, list[FolderPlan]] = defaultdict(list)
        for plan in plans:
            units[plan.target].append(plan)
        work: queue.Queue[list[FolderPlan]] = queue.Queue()
        for unit in units.values():
            work.put(unit)
        stats = {id(plan): FolderStats(plan) for plan in plans}
        for plan in plans:
            if plan.source.path in mirrored:
                done = mirrored[plan.source.path]
                stats[id(plan)].moved, stats[id(plan)].removed = done.moved, done.removed
        count = max(1, self.options.workers)
        threads = [
            threading.Thread(
                target=self._worker,
                args=(work, stats, (source, target) if n == 0 else None),
                name=f"migrator-worker-{n}",
                daemon=True,
            )
            for n in range(count)
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()
            # A worker blocked on a server that stalls is not waited for past STOP_GRACE: it is
            # a daemon, and what it had not committed is not in the journal.
            deadline = time.monotonic() + STOP_GRACE
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
        if self._fatal is not None:
            raise self._fatal
        return RunSummary(
            folders=[stats[id(p)] for p in plans],
            seconds=time.monotonic() - started,
            interrupted=self.stop.is_set() and self._stopped is None,
            dry_run=self.options.dry_run,
            notices=self._notices,
            stopped=self._stopped,
        )

    def _keep_targets(self, plans: list[FolderPlan]) -> list[FolderPlan]:
        """Each source folder goes where the journal recorded it on the first pass (see
        folders.keep_recorded); first choices are recorded now."""
        kept, chosen = keep_recorded(plans, self.journal.folder_targets())
        if chosen:
            self.journal.record_targets(chosen)
        return kept

    def _worker(
        self,
        work: queue.Queue[list[FolderPlan]],
        stats: dict[int, FolderStats],
        stores: tuple[Source, Target] | None,
    ) -> None:
        source, target = stores or (self.open_source(), self.open_target())
        pace = _Pace(
            self.options.batch_bytes,
            self.options.min_batch_bytes,
            append_ceiling=self.options.batch_bytes * self._group,
        )
        try:
            while not self.stop.is_set():
                with self._helping:
                    try:
                        unit = work.get_nowait()
                    except queue.Empty:
                        unit = None
                    else:
                        self._busy += 1
                if unit is None:
                    self._help(target)
                    return
                try:
                    for plan in unit:
                        if self.stop.is_set():
                            return
                        self._folder_with_retries(source, target, plan, stats[id(plan)], pace)
                finally:
                    with self._helping:
                        self._busy -= 1
                        self._helping.notify_all()
        except _Stop:
            return
        except BaseException as exc:  # one worker's fatal error stops them all
            if self._fatal is None:
                self._fatal = exc
            self.stop.set()
        finally:
            source.close()
            target.close()

    def _folder_with_retries(
        self, source: Source, target: Target, plan: FolderPlan, stats: FolderStats, pace: _Pace
    ) -> None:
        """Copy one folder, reconnecting after a lost connection. ``--retries`` counts the
        reconnects in a row that moved nothing: an attempt that copied something new into the
        target, or listed more of the folder, starts the count (and the backoff) afresh, so a
        link that drops often but works in between finishes the job, and one that is down gives
        up after that many tries. A message that failed is not progress: a server that fails
        one message and drops the connection at every attempt is given up on like a dead link
        (and the stores' login gate, ratelimit.LOGINS, caps the logins a minute in any case)."""
        delay = self.options.retry_delay
        failures = throttled = 0
        listing = _Listing()
        while True:
            before = (stats.copied, len(listing.refs))
            try:
                source.connect()
                target.connect()
                target.ensure_folder(plan.target, plan.special_use)
                self._copy_folder(source, target, plan, stats, pace, listing)
                self.reporter.folder_finished(stats)
                return
            except FolderError as exc:
                stats.error = str(exc)
                self._notice(f"{plan.source_name}: {exc}")
                self.reporter.folder_finished(stats)
                return
            except (StoreError, ConnectError) as exc:
                if isinstance(exc, StoreError) and not exc.transient:
                    raise
                pace.dropped = time.monotonic()
                if isinstance(exc, StoreError) and exc.retry_after is not None:
                    # The server asked us to wait: do so, reconnect and go on. Not a failure
                    # of the link, so it does not count against --retries.
                    throttled += 1
                    if throttled > self.options.max_throttles:
                        raise StoreError(
                            f"{exc} (still asked to wait after {throttled - 1} waits; rerun "
                            "the same command later to resume)"
                        ) from None
                    self._notice(
                        f"{plan.source_name}: {exc}; waiting {exc.retry_after:g}s as asked, "
                        "then reconnecting"
                    )
                    source.close()
                    target.close()
                    if self.stop.wait(exc.retry_after):
                        raise _Stop() from None
                    continue
                progressed = (stats.copied, len(listing.refs)) != before
                if progressed:
                    failures, delay = 0, self.options.retry_delay
                failures += 1
                if failures > self.options.retries:
                    # Still a ConnectError (exit 3) when the server could not be reached at all.
                    give_up = ConnectError if isinstance(exc, ConnectError) else StoreError
                    raise give_up(
                        f"{exc} (gave up after {self.options.retries} reconnects in a row "
                        "without progress; rerun the same command to resume)"
                    ) from None
                # After an attempt that moved mail the link works: reconnect at once. Only
                # attempts in a row that moved nothing back off (retry_delay, doubling).
                pause = 0.0 if progressed else delay
                self._notice(
                    f"{plan.source_name}: {exc}; reconnecting "
                    + (f"in {pause:g}s " if pause else "")
                    + f"({failures} of {self.options.retries})"
                )
                # The store that lost its connection has closed it (see StoreError); the other
                # side keeps its own, so a drop on one side does not cost the other a new login.
                if self.stop.wait(pause):
                    raise _Stop() from None
                if not progressed:
                    delay = min(delay * 2, 60.0)

    # -- one folder ------------------------------------------------------------------------

    def _copy_folder(
        self,
        source: Source,
        target: Target,
        plan: FolderPlan,
        stats: FolderStats,
        pace: _Pace,
        listing: _Listing,
    ) -> None:
        journal, options = self.journal, self.options
        src, dst = plan.source.path, plan.target
        state = source.open_folder(src)
        validity = state.validity
        reconciled = journal.open_folder(src, validity, dst)
        done = journal.done_ids(src, validity, dst)
        # Flags first, for what earlier passes copied: a source that marks what we fetch \Seen
        # (iCloud, without its profile) shows that at the next pass, not in this one.
        stats.flagged += self._converger.follow_flags(source, target, plan, validity, bool(done))
        wanted = options.message_filter.include
        selected_ids: set[str] | None = None
        if listing.validity != validity:
            listing.validity, listing.refs = validity, {}
        # Identity keys are needed before fetching only when the target must be compared; on a
        # first copy into an empty folder they are derived from the fetched bytes instead.
        present = None if reconciled else self._present(target, plan)
        keys = present is not None and (
            any(n > 0 for n in present.values()) or bool(journal.pending(src, validity, dst))
        )
        # Deleting needs the selection among copied messages too, so it lists everything.
        known = set(listing.refs) if options.delete_source else set(listing.refs) | done
        for ref in source.list_messages(src, skip=known, keys=keys):
            listing.refs[ref.id] = ref
        if options.delete_source:
            listed = list(listing.refs.values())
            selected_ids = {r.id for r in listed if wanted(r)}
            refs = [r for r in listed if r.id in selected_ids and r.id not in done]
            already = len(selected_ids) - len(refs)
        else:
            listed = [r for r in listing.refs.values() if r.id not in done]
            refs = [r for r in listed if wanted(r)]
            already = max(0, state.count - len(listed))
        # Messages this run copied before a reconnect are in `done` now: not "already there".
        stats.skipped = max(0, already - stats.copied)
        journal.set_selected(src, dst, already + len(refs))
        if refs and keys:
            refs = self._reconcile(target, plan, validity, refs, stats, pace, present)
        elif not reconciled:
            journal.reconcile(src, validity, dst, [])
        limit, origin = self._size_limit(target)
        if limit is not None and refs:
            refs = self._leave_out_too_big(plan, validity, refs, limit, origin, stats)
        budget_cut = False
        if options.budgets and refs:
            within = self._within_budget(src, refs)
            budget_cut, refs = len(within) < len(refs), within
        self.reporter.folder_started(plan, len(refs), sum(r.size for r in refs))
        if refs:
            target.recover(dst, journal.resume_point(dst))
            self._stream(source, target, plan, validity, refs, stats, pace)
        if budget_cut:
            self.stop.set()  # cleanly: what was streamed is recorded; the summary says why
        if options.delete_source and not options.dry_run and not self.stop.is_set():
            self._delete_confirmed(source, plan, validity, selected_ids or set(), stats)

    def _size_limit(self, target: Target) -> tuple[int | None, str]:
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

    def _leave_out_too_big(
        self,
        plan: FolderPlan,
        validity: str,
        refs: list[MessageRef],
        limit: int,
        origin: str,
        stats: FolderStats,
    ) -> list[MessageRef]:
        """Fail messages over the limit up front, and leave alone those that failed for size
        under this same limit before (a rerun retries them only once the limit changes)."""
        src, dst = plan.source.path, plan.target
        earlier = self.journal.failed_reasons(src, validity, dst)
        kept: list[MessageRef] = []
        too_big: list[MessageRef] = []
        held: list[tuple[MessageRef, str]] = []
        for ref in refs:
            if recorded_limit(earlier.get(ref.id)) == limit:
                held.append((ref, earlier[ref.id]))
            elif ref.size > limit:
                too_big.append(ref)
            else:
                kept.append(ref)
        if too_big:
            reason = size_reason(limit, origin)
            self.journal.record(Commit(src, validity, dst, [], [(r, reason) for r in too_big]))
            stats.failures.extend((r.id, reason) for r in too_big)
        if held:
            self._notice(
                f"{plan.source_name}: {len(held)} message(s) that failed for size are not retried: "
                f"the target's limit is still {limit} bytes"
            )
            stats.failures.extend((r.id, f"{reason} (not retried)") for r, reason in held)
        stats.failed += len(too_big) + len(held)
        return kept

    def _within_budget(self, src: FolderPath, refs: list[MessageRef]) -> list[MessageRef]:
        """The first messages that the daily budgets still allow (bytes reserved before they are
        fetched); when one is spent, the run will stop after them, saying when to rerun."""
        budgets = self.options.budgets
        assert budgets is not None
        for n, ref in enumerate(refs):
            if (src, ref.id) in self._budgeted:
                continue
            spent = budgets.reserve(ref.size)
            if spent is not None:
                if self._stopped is None:
                    self._stopped = spent.spent_message()
                return refs[:n]
            self._budgeted.add((src, ref.id))
        return refs

    def _reconcile(
        self,
        target: Target,
        plan: FolderPlan,
        validity: str,
        refs: list[MessageRef],
        stats: FolderStats,
        pace: _Pace,
        present: Counter[str] | None = None,
    ) -> list[MessageRef]:
        """Leave out what the target already holds, beyond the copies the journal accounts for.

        Appends left in doubt (journaled 'pending', never confirmed) that the target does not
        show may still be on their way: the bytes of an APPEND that a killed run or a dropped
        connection had already handed to the kernel reach the server, and are stored, after the
        process is gone. So when such messages are missing and the target says appends can land
        late, the index is taken again once that window has passed since the loss (counted from
        the start of this run for a rerun after a crash: the crash came before it), rather than
        copying them a second time."""
        src = plan.source.path
        if present is None:
            present = self._present(target, plan)
        window = target.late_append_window
        if window > 0:
            doubt = self.journal.pending(src, validity, plan.target)
            missing = Counter(key for key, _ in doubt) - present
            if missing:
                # In flight are at most the bytes of the appends in doubt; they reach the server
                # about as fast as the target took appends before (measured and journaled).
                late_bytes = sum(size for key, size in doubt if key in missing)
                rate = self.journal.append_rate() or SLOW_APPEND_RATE
                settle = min(window + 1.5 * late_bytes / rate, MAX_SETTLE)
                wait = settle - (time.monotonic() - pace.dropped)
                if wait > 0:
                    if wait > 3:
                        self._notice(
                            f"{plan.target_name}: waiting {wait:.0f}s for {len(missing)} "
                            "message(s) an interrupted append may still deliver, so as not "
                            "to copy them twice"
                        )
                    if self.stop.wait(wait):
                        raise _Stop()
                    present = self._present(target, plan)
        key: Callable[[MessageRef], str] = lambda ref: ref.key  # noqa: E731
        if self.options.rules.active:
            # A message a rule changed has another size in the target: match without sizes.
            loose: Counter[str] = Counter()
            for k, n in present.items():
                loose[loose_key(k)] += n
            present, key = loose, lambda ref: loose_key(ref.key)
        found: list[MessageRef] = []
        todo: list[MessageRef] = []
        for ref in refs:
            if present[key(ref)] > 0:
                present[key(ref)] -= 1
                found.append(ref)
            else:
                todo.append(ref)
        self.journal.reconcile(plan.source.path, validity, plan.target, found)
        stats.skipped += len(found)
        return todo

    def _present(self, target: Target, plan: FolderPlan) -> Counter[str]:
        present = Counter(target.index(plan.target))
        present.subtract(self.journal.done_keys(plan.target))
        return present

    def _stream(
        self,
        source: Source,
        target: Target,
        plan: FolderPlan,
        validity: str,
        refs: list[MessageRef],
        stats: FolderStats,
        pace: _Pace,
    ) -> None:
        batches: queue.Queue[object] = queue.Queue(maxsize=self._group + 1)
        share = self._in_flight.share()
        abandon = threading.Event()
        options = self.options

        def put(item: object) -> None:
            while not abandon.is_set():
                try:
                    batches.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue

        def read() -> None:
            batch: list[tuple[MessageRef, bytes | MessageError]] = []
            size = start = 0
            chunk: list[MessageRef] = []
            try:
                while start < len(refs):
                    chunk = _chunk(refs, start, self._fetch_size(pace))
                    held = sum(r.size for r in chunk)
                    if not share.acquire(held, abandon, self.stop):
                        return
                    self._throttle(chunk)
                    claimed_left = held
                    for ref, data in source.fetch(plan.source.path, chunk):
                        if abandon.is_set() or self.stop.is_set():
                            return
                        claimed_left -= ref.size
                        if isinstance(data, bytes) and len(data) > ref.size:
                            # More than the size claimed (a server may lie): the bytes in
                            # flight count what came, so memory follows the bytes received.
                            if batch:
                                put(batch)
                                batch, size = [], 0
                            more = len(data) - ref.size
                            if not share.acquire(more, abandon, self.stop, besides=claimed_left):
                                return
                        batch.append((ref, data))
                        size += len(data) if isinstance(data, bytes) else 0
                        if size >= options.batch_bytes or len(batch) >= options.batch_count:
                            put(batch)
                            batch, size = [], 0
                    # Hold no reference to what was handed over: once the writer releases its
                    # bytes, the pool counts them as gone (a 40 MB body must not outlive that).
                    data = b""
                    start += len(chunk)
                    pace.grow("fetch")
                    if batch:
                        # Hand each chunk to the writer whole: what was fetched is appended
                        # before a next drop, and the bytes it holds in flight are released
                        # (the next chunk may wait for them: see _InFlight).
                        put(batch)
                        batch, size = [], 0
                if batch:
                    put(batch)
            except BaseException as exc:
                if isinstance(exc, StoreError) and exc.transient:
                    pace.shrink("fetch", sum(r.size for r in chunk))
                # The messages read before the connection broke are whole: append them first.
                if batch:
                    put(batch)
                put(exc)
            finally:
                put(_END)

        errors: list[BaseException] = []
        #: The reader's last word (its error, or _END) once gather() took it out of the queue:
        #: put back, it would land behind the _END that follows an error, and the error (and
        #: the messages it left unfetched) would be lost.
        last: list[object] = []

        def gather(most: int) -> list[tuple[MessageRef, bytes | MessageError]]:
            """Up to ``most`` more batches that are already waiting, in order: one commit for
            all of them when the writer has fallen behind (see Target.commit_group)."""
            more: list[tuple[MessageRef, bytes | MessageError]] = []
            for _ in range(most):
                try:
                    item = batches.get_nowait()
                except queue.Empty:
                    break
                if item is _END or isinstance(item, BaseException):
                    last.append(item)  # the reader's last word stays last
                    break
                more.extend(cast(list[tuple[MessageRef, bytes | MessageError]], item))
            return more

        def write(into: Target) -> None:
            """Append batches until the reader's end (or an error anywhere); several writers
            share the queue, each on its own connection, and pass the end on to the others."""
            owed: _Owed | None = None  # the last part's answers, for the next 'pending' rows
            try:
                while not abandon.is_set():
                    try:
                        if last:
                            item = last[0]
                        elif owed is None:
                            item = batches.get(timeout=0.2)
                        else:
                            item = batches.get_nowait()
                    except queue.Empty:
                        if owed is not None:  # nothing waiting to share a transaction with
                            self._settle(owed)
                            owed = None
                        continue
                    if item is _END or isinstance(item, BaseException):
                        if not last:  # for the other writers; a slot was just freed
                            batches.put_nowait(item)
                        if isinstance(item, BaseException) and not errors:
                            errors.append(item)
                        return
                    item = item + gather(self._group - 1)  # type: ignore[operator]
                    held = sum(_held(ref, data) for ref, data in item)  # type: ignore[attr-defined]
                    try:
                        owed = self._write_batch(into, plan, validity, item, stats, pace, owed)  # type: ignore[arg-type]
                    finally:
                        item = None  # the batch's bytes are gone before the pool counts them gone
                        share.release(held)
                    if self.stop.is_set():
                        return
            except BaseException as exc:
                errors.append(exc)
                abandon.set()
            finally:
                if owed is not None:
                    try:
                        self._settle(owed)
                    except BaseException as exc:
                        errors.append(exc)
                        abandon.set()

        reader = threading.Thread(target=read, name="migrator-reader", daemon=True)
        reader.start()
        helpable = _Helpable(write)
        if target.concurrent_appends and len(refs) > options.batch_count:
            with self._helping:
                self._helpable.append(helpable)
                self._helping.notify_all()
        try:
            write(target)
        finally:
            with self._helping:
                if helpable in self._helpable:
                    self._helpable.remove(helpable)
                while helpable.writers:  # the helpers' last batches are committed first
                    self._helping.wait(0.2)
            abandon.set()
            reader.join()
            share.close()
        if errors:
            raise errors[0]

    def _help(self, target: Target) -> None:
        """A worker with no folder left appends, on its own connection, the batches of folders
        others are still streaming: a big folder (a POP3 inbox, one huge INBOX) is not left to
        one connection while the others sit idle. Returns when no folder is left at all."""
        if not target.concurrent_appends:
            return
        while not self.stop.is_set():
            with self._helping:
                if not self._helpable:
                    if self._busy == 0:
                        return
                    self._helping.wait(0.2)
                    continue
                stream = min(self._helpable, key=lambda h: h.writers)
                stream.writers += 1
            try:
                target.connect()
                stream.write(target)
            except (StoreError, ConnectError) as exc:
                # Cannot connect (or lost it before writing): leave the work to the owner.
                self._notice(f"{target.label}: a spare connection could not help ({exc})")
                if self.stop.wait(1.0):
                    return
            finally:
                with self._helping:
                    stream.writers -= 1
                    self._helping.notify_all()

    def _fetch_size(self, pace: _Pace) -> int:
        """Bytes per fetch: with a byte rate, about one second of it, so the stream is smooth."""
        rate = self.options.byte_rate
        return pace.fetch if rate is None else min(pace.fetch, max(int(rate.rate), 64 * 1024))

    def _throttle(self, chunk: Sequence[MessageRef]) -> None:
        """The token buckets (--max-bytes-per-second, the profiles' rates), before a fetch."""
        if self.options.byte_rate is not None:
            self.options.byte_rate.take(sum(r.size for r in chunk), self.stop.wait)
        if self.options.message_rate is not None:
            self.options.message_rate.take(len(chunk), self.stop.wait)

    def _apply_rules(
        self, ref: MessageRef, data: bytes
    ) -> tuple[MessageRef, bytes, tuple[str, ...]]:
        """The message as the target's rules want it; a changed one gets its new size and key, so
        that the journal and a later comparison with the target recognise it."""
        new, changes = self.options.rules.apply(data)
        if not changes:
            return ref, data, ()
        size = crlf_size(new)
        return replace(ref, size=size, key=message_key(new, size)), new, changes

    def _write_batch(
        self,
        target: Target,
        plan: FolderPlan,
        validity: str,
        batch: list[tuple[MessageRef, bytes | MessageError]],
        stats: FolderStats,
        pace: _Pace,
        owed: _Owed | None = None,
    ) -> _Owed | None:
        """Append a batch in parts of at most ``pace.append`` bytes, each journaled 'pending'
        before and committed after, so a connection lost in one part keeps the parts before.

        A part's answers are written with the next part's 'pending' rows, in one transaction:
        ``owed`` comes from the batch before, and what the last part owes is returned for the
        next batch (or for _settle, when none is waiting). A crash in between leaves those
        messages 'pending', which the next run resolves against the target (see _reconcile),
        as it does for a crash between an append and its commit."""
        try:
            src, dst = plan.source.path, plan.target
            unreadable = [(ref, str(data)) for ref, data in batch if isinstance(data, MessageError)]
            good = [
                (ref if ref.key else replace(ref, key=message_key(data, ref.size)), data)
                for ref, data in batch
                if isinstance(data, bytes)
            ]
            changed: dict[str, tuple[str, ...]] = {}
            if self.options.rules.active:
                ruled = [self._apply_rules(ref, data) for ref, data in good]
                good = [(ref, data) for ref, data, _ in ruled]
                changed = {ref.id: changes for ref, _, changes in ruled if changes}
            limit, origin = self._size_limit(target)
            sizes = {id(ref): len(data) for ref, data in good}
            parts: list[list[tuple[MessageRef, bytes]]] = []
            start = 0
            while start < len(good):
                chunk = _chunk([r for r, _ in good], start, pace.append)
                parts.append(good[start : start + len(chunk)])
                start += len(chunk)
            extra = self.options.add_flags
            for n, part in enumerate(parts or [[]]):
                failed = unreadable if n == 0 else []
                done: list[tuple[MessageRef, str | None]] = []
                rate: float | None = None
                nbytes = sum(sizes[id(r)] for r, _ in part)
                if part:
                    after = owed.answers if owed is not None else None
                    self.journal.begin(src, validity, dst, [ref for ref, _ in part], after=after)
                    if owed is not None:
                        self._count(owed)
                        owed = None
                    outgoing = (
                        [(replace(r, flags=r.flags | extra), d) for r, d in part] if extra else part
                    )
                    began = time.monotonic()
                    try:
                        results = target.append(dst, outgoing)
                    except StoreError as exc:
                        if exc.transient:
                            pace.shrink("append", nbytes)
                        raise
                    took = time.monotonic() - began
                    if nbytes >= RATE_SAMPLE_BYTES and took > 0:
                        rate = nbytes / took
                    pace.grow("append")
                    for (ref, _), result in zip(part, results, strict=True):
                        if result.ok:
                            done.append((ref, result.target_id))
                        else:
                            reason = result.error or "refused"
                            if limit is not None and is_size_refusal(reason):
                                reason = f"{size_reason(limit, origin)}: {reason}"
                            failed.append((ref, reason))
                if owed is not None:  # a part with nothing to append: no 'pending' rows to join
                    self._settle(owed)
                answers = Commit(src, validity, dst, done, failed, target.resume_point(dst), rate)
                # What came, when a server sent more than it claimed (see _held).
                copied = sum(max(ref.size, sizes[id(ref)]) for ref, _ in done)
                owed = _Owed(answers, stats, plan, changed, len(part), nbytes, copied)
            return owed
        except BaseException:
            # Answers not yet in the journal (a part appended before the failure, or the
            # batch before's): written alone; _settle skips what a 'pending' row already took.
            if owed is not None:
                with contextlib.suppress(Exception):
                    self._settle(owed)
            raise

    def _settle(self, owed: _Owed) -> None:
        """Write what a part owes the journal, alone, and count it (once: a writer that fails
        may still hold answers that the next 'pending' transaction already wrote)."""
        if not owed.written:
            self.journal.record(owed.answers)
            self._count(owed)

    def _count(self, owed: _Owed) -> None:
        owed.written = True
        done, failed = owed.answers.done, owed.answers.failed
        stats = owed.stats
        with self._stats_lock:  # several writers may share a folder's stats
            stats.copied += len(done)
            stats.bytes += owed.copied_bytes
            for ref, _ in done:
                if ref.id in owed.changed:
                    stats.changed += 1
                    stats.changes.update(owed.changed[ref.id])
            stats.failed += len(failed)
            stats.failures.extend((ref.id, reason) for ref, reason in failed)
        self.reporter.advanced(owed.plan, owed.appended + len(failed), owed.nbytes)

    def _delete_confirmed(
        self,
        source: Source,
        plan: FolderPlan,
        validity: str,
        selected: set[str],
        stats: FolderStats,
    ) -> None:
        """Remove from the source exactly the selected messages the journal says the target has."""
        if not source.can_delete:
            raise FolderError(f"{source.label}: this source cannot delete messages")
        ids = [i for i in self.journal.undeleted(plan.source.path, validity) if i in selected]
        if ids:
            source.delete(plan.source.path, ids)
            self.journal.mark_deleted(plan.source.path, validity, ids)
            stats.deleted += len(ids)
