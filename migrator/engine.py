"""The copy engine: moves messages between any two stores, knowing nothing of protocols.

Per folder: ask the journal what is done, list only the rest, compare with the target when the
journal cannot vouch for it (first run, lost journal, new UIDVALIDITY, an append left in doubt),
then stream batches through a bounded queue: a reader thread fetches from the source while the
worker appends the previous batch to the target. Each batch is journaled 'pending' before the
append and 'done' after the target's confirmation, so a kill at any moment loses nothing and
duplicates nothing. Several workers take different target folders, each with its own connections.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from migrator.checkpoint import Journal
from migrator.errors import ConnectError, FolderError, MessageError, StoreError
from migrator.filters import MessageFilter
from migrator.folders import FolderMap, FolderPlan
from migrator.model import FolderPath, MessageRef
from migrator.stores.base import AppendResult, Source, Target


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
    batch_bytes: int = 8 * 1024 * 1024
    batch_count: int = 400


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


@dataclass
class RunSummary:
    folders: list[FolderStats]
    seconds: float
    interrupted: bool = False
    dry_run: bool = False
    notices: list[str] = field(default_factory=list)

    def total(self, attribute: str) -> int:
        return sum(getattr(f, attribute) for f in self.folders)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(f.failed == 0 and f.error is None for f in self.folders)


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

    def ensure_folder(self, path: FolderPath) -> None:
        pass

    def index(self, path: FolderPath) -> list[str]:
        return list(self.inner.index(path))

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        return [AppendResult() for _ in items]


class _Stop(Exception):
    """Raised inside a worker when the run is being stopped."""


_END = object()


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

    def _notice(self, text: str) -> None:
        self._notices.append(text)
        self.reporter.notice(text)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> RunSummary:
        started = time.monotonic()
        source, target = self.open_source(), self.open_target()
        try:
            source.connect()
            target.connect()
            plans = self.options.folder_map.plan(
                source.list_folders(), target.list_folders(), target.delimiter
            )
        except BaseException:
            source.close()
            target.close()
            raise
        if not source.stable_ids:
            self._notice(
                f"{source.label}: the server gives no stable message ids (no UIDL), so messages "
                "are recognised by a digest of their headers: identity is weaker there"
            )
        for plan in plans:
            if plan.note and plan.note.startswith("renamed"):
                self._notice(f"{plan.source_name} -> {plan.target_name}: {plan.note}")
        self.reporter.planned(plans)
        units: dict[FolderPath, list[FolderPlan]] = defaultdict(list)
        for plan in plans:
            units[plan.target].append(plan)
        work: queue.Queue[list[FolderPlan]] = queue.Queue()
        for unit in units.values():
            work.put(unit)
        stats = {id(plan): FolderStats(plan) for plan in plans}
        count = max(1, min(self.options.workers, len(units)))
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
            for thread in threads:
                thread.join()
        if self._fatal is not None:
            raise self._fatal
        return RunSummary(
            folders=[stats[id(p)] for p in plans],
            seconds=time.monotonic() - started,
            interrupted=self.stop.is_set(),
            dry_run=self.options.dry_run,
            notices=self._notices,
        )

    def _worker(
        self,
        work: queue.Queue[list[FolderPlan]],
        stats: dict[int, FolderStats],
        stores: tuple[Source, Target] | None,
    ) -> None:
        source, target = stores or (self.open_source(), self.open_target())
        try:
            while not self.stop.is_set():
                try:
                    unit = work.get_nowait()
                except queue.Empty:
                    return
                for plan in unit:
                    if self.stop.is_set():
                        return
                    self._folder_with_retries(source, target, plan, stats[id(plan)])
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
        self, source: Source, target: Target, plan: FolderPlan, stats: FolderStats
    ) -> None:
        delay = self.options.retry_delay
        for attempt in range(self.options.retries + 1):
            try:
                source.connect()
                target.connect()
                target.ensure_folder(plan.target)
                self._copy_folder(source, target, plan, stats)
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
                if attempt == self.options.retries:
                    raise StoreError(
                        f"{exc} (gave up after {self.options.retries} reconnects; "
                        "rerun the same command to resume)"
                    ) from None
                self._notice(
                    f"{plan.source_name}: {exc}; reconnecting in {delay:g}s "
                    f"({attempt + 1} of {self.options.retries})"
                )
                source.close()
                target.close()
                if self.stop.wait(delay):
                    raise _Stop() from None
                delay = min(delay * 2, 60.0)

    # -- one folder ------------------------------------------------------------------------

    def _copy_folder(
        self, source: Source, target: Target, plan: FolderPlan, stats: FolderStats
    ) -> None:
        journal, options = self.journal, self.options
        src, dst = plan.source.path, plan.target
        state = source.open_folder(src)
        validity = state.validity
        reconciled = journal.open_folder(src, validity, dst)
        done = journal.done_ids(src, validity, dst)
        wanted = options.message_filter.include
        selected_ids: set[str] | None = None
        if options.delete_source:
            # Deleting needs the selection among copied messages too, so list everything.
            listed = list(source.list_messages(src))
            selected_ids = {r.id for r in listed if wanted(r)}
            refs = [r for r in listed if r.id in selected_ids and r.id not in done]
            already = len(selected_ids) - len(refs)
        else:
            listed = list(source.list_messages(src, skip=done))
            refs = [r for r in listed if wanted(r)]
            already = state.count - len(listed)
        # Messages this run copied before a reconnect are in `done` now: not "already there".
        stats.skipped = max(0, already - stats.copied)
        journal.set_selected(src, dst, already + len(refs))
        if refs and not reconciled:
            refs = self._reconcile(target, plan, validity, refs, stats)
        elif not reconciled:
            journal.reconcile(src, validity, dst, [])
        limit = target.max_message_size
        if limit is not None:
            too_big = [r for r in refs if r.size > limit]
            if too_big:
                reason = f"larger than the target accepts ({limit} bytes)"
                journal.commit(src, validity, dst, [], [(r, reason) for r in too_big])
                stats.failed += len(too_big)
                stats.failures.extend((r.id, reason) for r in too_big)
                refs = [r for r in refs if r.size <= limit]
        self.reporter.folder_started(plan, len(refs), sum(r.size for r in refs))
        if refs:
            target.recover(dst, journal.resume_point(dst))
            self._stream(source, target, plan, validity, refs, stats)
        if options.delete_source and not options.dry_run and not self.stop.is_set():
            self._delete_confirmed(source, plan, validity, selected_ids or set(), stats)

    def _reconcile(
        self,
        target: Target,
        plan: FolderPlan,
        validity: str,
        refs: list[MessageRef],
        stats: FolderStats,
    ) -> list[MessageRef]:
        """Leave out what the target already holds, beyond the copies the journal accounts for."""
        present = Counter(target.index(plan.target))
        present.subtract(self.journal.done_keys(plan.target))
        found: list[MessageRef] = []
        todo: list[MessageRef] = []
        for ref in refs:
            if present[ref.key] > 0:
                present[ref.key] -= 1
                found.append(ref)
            else:
                todo.append(ref)
        self.journal.reconcile(plan.source.path, validity, plan.target, found)
        stats.skipped += len(found)
        return todo

    def _stream(
        self,
        source: Source,
        target: Target,
        plan: FolderPlan,
        validity: str,
        refs: list[MessageRef],
        stats: FolderStats,
    ) -> None:
        batches: queue.Queue[object] = queue.Queue(maxsize=2)
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
            size = 0
            try:
                for ref, data in source.fetch(plan.source.path, refs):
                    if abandon.is_set() or self.stop.is_set():
                        return
                    batch.append((ref, data))
                    size += len(data) if isinstance(data, bytes) else 0
                    if size >= options.batch_bytes or len(batch) >= options.batch_count:
                        put(batch)
                        batch, size = [], 0
                if batch:
                    put(batch)
            except BaseException as exc:
                put(exc)
            finally:
                put(_END)

        reader = threading.Thread(target=read, name="migrator-reader", daemon=True)
        reader.start()
        try:
            while True:
                item = batches.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._write_batch(target, plan, validity, item, stats)  # type: ignore[arg-type]
                if self.stop.is_set():
                    break
        finally:
            abandon.set()
            reader.join()

    def _write_batch(
        self,
        target: Target,
        plan: FolderPlan,
        validity: str,
        batch: list[tuple[MessageRef, bytes | MessageError]],
        stats: FolderStats,
    ) -> None:
        src, dst = plan.source.path, plan.target
        failed = [(ref, str(data)) for ref, data in batch if isinstance(data, MessageError)]
        good = [(ref, data) for ref, data in batch if isinstance(data, bytes)]
        done: list[tuple[MessageRef, str | None]] = []
        if good:
            self.journal.begin(src, validity, dst, [ref for ref, _ in good])
            extra = self.options.add_flags
            outgoing = [(replace(r, flags=r.flags | extra), d) for r, d in good] if extra else good
            results = target.append(dst, outgoing)
            for (ref, _), result in zip(good, results, strict=True):
                if result.ok:
                    done.append((ref, result.target_id))
                else:
                    failed.append((ref, result.error or "refused"))
        self.journal.commit(src, validity, dst, done, failed, target.resume_point(dst))
        nbytes = sum(len(data) for _, data in good)
        copied_bytes = sum(ref.size for ref, _ in done)
        stats.copied += len(done)
        stats.bytes += copied_bytes
        stats.failed += len(failed)
        stats.failures.extend((ref.id, reason) for ref, reason in failed)
        self.reporter.advanced(plan, len(batch), nbytes)

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
