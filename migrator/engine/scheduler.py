"""The scheduler: plans the folders of a job, hands them out to workers (each with its own
connections, one target folder at a time), lets a worker with no folder left help append the
batches of a big one, and stops them all on Ctrl-C or on one worker's fatal error."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable

from migrator import heap
from migrator.checkpoint import Journal
from migrator.converge import FolderChanges
from migrator.engine.context import RunContext, Stop, Worker
from migrator.engine.flow import POLL_SECONDS, InFlight, Pace
from migrator.engine.interface import CopyOptions, FolderStats, NullReporter, Reporter, RunSummary
from migrator.engine.retry import folder_with_retries
from migrator.errors import ConnectError, StoreError
from migrator.folders import FolderPlan, keep_recorded
from migrator.model import Folder, FolderPath, display_name
from migrator.stores.base import Source, Target
from migrator.stores.dryrun import DryRunTarget

#: Seconds an interrupted run waits for its workers to finish what they are doing.
STOP_GRACE = 3.0
#: A spare connection that could not help waits this long (seconds) before it tries again, so
#: that a target refusing more connections is not asked again at once.
HELPER_PAUSE = 1.0
#: Folders named in the notice about other users' and shared namespaces; the rest are counted.
SHOWN_LEFT_OUT = 5


class Engine:
    """Copies a job's folders from ``open_source()`` to ``open_target()`` with ``options``;
    ``run`` returns the summary. Each worker opens its own pair of stores."""

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
        self._ctx = RunContext(journal, options, self.reporter, self.stop)
        self._fatal: BaseException | None = None

    @property
    def _in_flight(self) -> InFlight:
        """Message bytes fetched and not yet appended, all workers together."""
        return self._ctx.in_flight

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
            mirrored = self._mirror(source, target, source_folders, plans)
        except BaseException:
            source.close()
            target.close()
            raise
        # Room for a group of batches waiting for the writer and one being fetched, per worker.
        ctx = self._ctx
        ctx.group = max(1, target.commit_group)
        workers = max(1, self.options.workers)
        ctx.in_flight.limit = self.options.batch_bytes * (ctx.group + 1) * workers
        self._announce(source, target, source_folders, plans)
        self.reporter.planned(plans)
        stats = {id(plan): FolderStats(plan) for plan in plans}
        for plan in plans:
            if plan.source.path in mirrored:
                done = mirrored[plan.source.path]
                stats[id(plan)].moved, stats[id(plan)].removed = done.moved, done.removed
        self._run_workers(plans, stats, source, target)
        if self._fatal is not None:
            raise self._fatal
        return RunSummary(
            folders=[stats[id(p)] for p in plans],
            seconds=time.monotonic() - started,
            interrupted=self.stop.is_set() and ctx.stopped is None,
            dry_run=self.options.dry_run,
            notices=ctx.notices,
            stopped=ctx.stopped,
        )

    def _keep_targets(self, plans: list[FolderPlan]) -> list[FolderPlan]:
        """Each source folder goes where the journal recorded it on the first pass (see
        folders.keep_recorded); first choices are recorded now."""
        kept, chosen = keep_recorded(plans, self.journal.folder_targets())
        if chosen:
            self.journal.record_targets(chosen)
        return kept

    def _mirror(
        self, source: Source, target: Target, source_folders: list[Folder], plans: list[FolderPlan]
    ) -> dict[FolderPath, FolderChanges]:
        """`sync`: moves and removals first, for the selected folders and for those of earlier
        passes that the source no longer lists (see converge.Mirror)."""
        if not self.options.mirror:
            return {}
        listed = {f.path for f in source_folders}
        vanished = [
            (src, dst)
            for src, dst in self.journal.folder_targets().items()
            if src not in listed and self.options.folder_map.selected(Folder(src))
        ]
        return self._ctx.converger.mirror(source, target, plans, vanished)

    def _announce(
        self, source: Source, target: Target, source_folders: list[Folder], plans: list[FolderPlan]
    ) -> None:
        """The notices a run gives before it copies anything."""
        notice = self._ctx.notice
        if not source.stable_ids:
            notice(
                f"{source.label}: the server gives no stable message ids (no UIDL), so messages "
                "are recognised by a digest of their headers: identity is weaker there"
            )
        left_out = self.options.folder_map.left_out(source_folders)
        if left_out:
            shown = ", ".join(display_name(f.path) for f in left_out[:SHOWN_LEFT_OUT])
            rest = len(left_out) - SHOWN_LEFT_OUT
            more = f" and {rest} more" if rest > 0 else ""
            notice(
                f"{source.label}: left out {len(left_out)} folder(s) of other users' or shared "
                f"namespaces ({shown}{more}); --include-shared copies them"
            )
        for plan in plans:
            if plan.note and plan.note.startswith("renamed"):
                notice(f"{plan.source_name} -> {plan.target_name}: {plan.note}")
        if self.options.rules.active:
            notice(
                f"{target.label}: message rules on ({self.options.rules.describe()}); each "
                "change is counted in the summary"
            )

    def _run_workers(
        self,
        plans: list[FolderPlan],
        stats: dict[int, FolderStats],
        source: Source,
        target: Target,
    ) -> None:
        """The folders, grouped by target folder, over the workers; the first worker uses the
        stores the run opened, the others open their own."""
        units: dict[FolderPath, list[FolderPlan]] = defaultdict(list)
        for plan in plans:
            units[plan.target].append(plan)
        work: queue.Queue[list[FolderPlan]] = queue.Queue()
        for unit in units.values():
            work.put(unit)
        threads = [
            threading.Thread(
                target=self._worker,
                args=(work, stats, (source, target) if n == 0 else None),
                name=f"migrator-worker-{n}",
                daemon=True,
            )
            for n in range(max(1, self.options.workers))
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(POLL_SECONDS)
        except KeyboardInterrupt:
            self.stop.set()
            # A worker blocked on a server that stalls is not waited for past STOP_GRACE: it is
            # a daemon, and what it had not committed is not in the journal.
            deadline = time.monotonic() + STOP_GRACE
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _worker(
        self,
        work: queue.Queue[list[FolderPlan]],
        stats: dict[int, FolderStats],
        stores: tuple[Source, Target] | None,
    ) -> None:
        source, target = stores or (self.open_source(), self.open_target())
        pace = Pace(
            self.options.batch_bytes,
            self.options.min_batch_bytes,
            append_ceiling=self.options.batch_bytes * self._ctx.group,
        )
        worker = Worker(source, target, pace)
        spare = self._ctx.spare
        try:
            while not self.stop.is_set():
                with spare.cond:
                    try:
                        unit = work.get_nowait()
                    except queue.Empty:
                        unit = None
                    else:
                        spare.busy += 1
                if unit is None:
                    self._help(target)
                    return
                try:
                    for plan in unit:
                        if self.stop.is_set():
                            return
                        folder_with_retries(self._ctx, worker, plan, stats[id(plan)])
                finally:
                    with spare.cond:
                        spare.busy -= 1
                        spare.cond.notify_all()
        except Stop:
            return
        except BaseException as exc:  # one worker's fatal error stops them all
            if self._fatal is None:
                self._fatal = exc
            self.stop.set()
        finally:
            source.close()
            target.close()

    def _help(self, target: Target) -> None:
        """A worker with no folder left appends, on its own connection, the batches of folders
        others are still streaming: a big folder (a POP3 inbox, one huge INBOX) is not left to
        one connection while the others sit idle. Returns when no folder is left at all."""
        if not target.concurrent_appends:
            return
        spare = self._ctx.spare
        while not self.stop.is_set():
            with spare.cond:
                if not spare.streams:
                    if spare.busy == 0:
                        return
                    spare.cond.wait(POLL_SECONDS)
                    continue
                stream = min(spare.streams, key=lambda h: h.writers)
                stream.writers += 1
            try:
                target.connect()
                stream.write(target)
            except (StoreError, ConnectError) as exc:
                # Cannot connect (or lost it before writing): leave the work to the owner.
                self._ctx.notice(f"{target.label}: a spare connection could not help ({exc})")
                if self.stop.wait(HELPER_PAUSE):
                    return
            finally:
                with spare.cond:
                    stream.writers -= 1
                    spare.cond.notify_all()
