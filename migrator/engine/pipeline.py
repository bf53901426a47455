"""The pipeline of one folder: a reader thread fetches chunks from the source into a bounded
queue of typed items (a batch of messages, the end, or the reader's failure), while writers
append them to the target and commit the answers (see commit.write_batch). The bytes held in
between are bounded by flow.InFlight, for all workers together."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from migrator.engine.commit import Fetched, Owed, settle, write_batch
from migrator.engine.context import FolderRun, Helpable, RunContext
from migrator.engine.flow import POLL_SECONDS, chunk, held
from migrator.errors import StoreError
from migrator.model import MessageRef
from migrator.stores.base import Target

#: The smallest fetch under a byte rate: about one second of the rate is fetched at a time (a
#: smooth stream), but below this the round trips would cost more than the bytes.
MIN_FETCH_BYTES = 64 * 1024


@dataclass(slots=True)
class Batch:
    """Messages fetched, for one append (or fewer: see Target.commit_group)."""

    messages: list[Fetched]


@dataclass(frozen=True, slots=True)
class End:
    """The reader is done: nothing follows."""


@dataclass(frozen=True, slots=True)
class Failure:
    """The reader stopped on this error; an End follows it."""

    error: BaseException


#: What travels from the reader to the writers.
Item = Batch | End | Failure


class Stream:
    """One folder's reader and writers, over one queue."""

    def __init__(self, ctx: RunContext, run: FolderRun, refs: list[MessageRef]) -> None:
        self.ctx = ctx
        self.run = run
        self.refs = refs
        self.queue: queue.Queue[Item] = queue.Queue(maxsize=ctx.group + 1)
        self.share = ctx.in_flight.share()
        #: Set when a writer failed (or the stream is over): everyone stops.
        self.abandon = threading.Event()
        self.errors: list[BaseException] = []
        #: The reader's last word (its failure, or End) once gather() took it out of the queue:
        #: put back, it would land behind the End that follows a failure, and the failure (and
        #: the messages it left unfetched) would be lost.
        self.last: list[End | Failure] = []

    def put(self, item: Item) -> None:
        while not self.abandon.is_set():
            try:
                self.queue.put(item, timeout=POLL_SECONDS)
                return
            except queue.Full:
                continue

    def read(self) -> None:
        """Fetch the messages in chunks of about ``pace.fetch`` bytes (each waiting for room in
        flight) and hand them over in batches; then End, after the Failure if one came."""
        ctx, run, refs, share, abandon = self.ctx, self.run, self.refs, self.share, self.abandon
        options, stop, put = ctx.options, ctx.stop, self.put
        batch: list[Fetched] = []
        size = start = 0
        part: list[MessageRef] = []
        try:
            while start < len(refs):
                part = chunk(refs, start, self._fetch_size())
                claimed = sum(r.size for r in part)
                if not share.acquire(claimed, abandon, stop):
                    return
                self._throttle(part)
                claimed_left = claimed
                for ref, data in run.source.fetch(run.src, part):
                    if abandon.is_set() or stop.is_set():
                        return
                    claimed_left -= ref.size
                    if isinstance(data, bytes) and len(data) > ref.size:
                        # More than the size claimed (a server may lie): the bytes in
                        # flight count what came, so memory follows the bytes received.
                        if batch:
                            put(Batch(batch))
                            batch, size = [], 0
                        more = len(data) - ref.size
                        if not share.acquire(more, abandon, stop, besides=claimed_left):
                            return
                    batch.append((ref, data))
                    size += len(data) if isinstance(data, bytes) else 0
                    if size >= options.batch_bytes or len(batch) >= options.batch_count:
                        put(Batch(batch))
                        batch, size = [], 0
                # Hold no reference to what was handed over: once the writer releases its
                # bytes, the pool counts them as gone (a 40 MB body must not outlive that).
                data = b""
                start += len(part)
                run.pace.grow("fetch")
                if batch:
                    # Hand each chunk to the writer whole: what was fetched is appended
                    # before a next drop, and the bytes it holds in flight are released
                    # (the next chunk may wait for them: see flow.InFlight).
                    put(Batch(batch))
                    batch, size = [], 0
            if batch:
                put(Batch(batch))
        except BaseException as exc:
            if isinstance(exc, StoreError) and exc.transient:
                run.pace.shrink("fetch", sum(r.size for r in part))
            # The messages read before the connection broke are whole: append them first.
            if batch:
                put(Batch(batch))
            put(Failure(exc))
        finally:
            put(End())

    def _fetch_size(self) -> int:
        """Bytes per fetch: with a byte rate, about one second of it, so the stream is smooth."""
        rate, pace = self.ctx.options.byte_rate, self.run.pace
        return pace.fetch if rate is None else min(pace.fetch, max(int(rate.rate), MIN_FETCH_BYTES))

    def _throttle(self, part: Sequence[MessageRef]) -> None:
        """The token buckets (--max-bytes-per-second, the profiles' rates), before a fetch."""
        options, wait = self.ctx.options, self.ctx.stop.wait
        if options.byte_rate is not None:
            options.byte_rate.take(sum(r.size for r in part), wait)
        if options.message_rate is not None:
            options.message_rate.take(len(part), wait)

    def gather(self, most: int) -> list[Fetched]:
        """Up to ``most`` more batches that are already waiting, in order: one commit for
        all of them when the writer has fallen behind (see Target.commit_group)."""
        more: list[Fetched] = []
        for _ in range(most):
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, Batch):
                self.last.append(item)  # the reader's last word stays last
                break
            more.extend(item.messages)
        return more

    def write(self, into: Target) -> None:
        """Append batches until the reader's end (or an error anywhere); several writers
        share the queue, each on its own connection, and pass the end on to the others."""
        ctx, run, share = self.ctx, self.run, self.share
        owed: Owed | None = None  # the last part's answers, for the next 'pending' rows
        item: Item
        try:
            while not self.abandon.is_set():
                try:
                    if self.last:
                        item = self.last[0]
                    elif owed is None:
                        item = self.queue.get(timeout=POLL_SECONDS)
                    else:
                        item = self.queue.get_nowait()
                except queue.Empty:
                    if owed is not None:  # nothing waiting to share a transaction with
                        settle(ctx, owed)
                        owed = None
                    continue
                if not isinstance(item, Batch):
                    if not self.last:  # for the other writers; a slot was just freed
                        self.queue.put_nowait(item)
                    if isinstance(item, Failure) and not self.errors:
                        self.errors.append(item.error)
                    return
                messages = item.messages + self.gather(ctx.group - 1)
                nbytes = sum(held(ref, data) for ref, data in messages)
                try:
                    owed = write_batch(ctx, run, into, messages, owed)
                finally:
                    # The batch's bytes are gone before the pool counts them gone.
                    del item, messages
                    share.release(nbytes)
                if ctx.stop.is_set():
                    return
        except BaseException as exc:
            self.errors.append(exc)
            self.abandon.set()
        finally:
            if owed is not None:
                try:
                    settle(ctx, owed)
                except BaseException as exc:
                    self.errors.append(exc)
                    self.abandon.set()


def stream(ctx: RunContext, run: FolderRun, refs: list[MessageRef]) -> None:
    """Copy ``refs``: this worker writes while a reader fetches; for a big folder, workers with
    no folder left may write too (see scheduler.Engine._help). Raises the first error."""
    pipe = Stream(ctx, run, refs)
    reader = threading.Thread(target=pipe.read, name="migrator-reader", daemon=True)
    reader.start()
    helpable = Helpable(pipe.write)
    spare = ctx.spare
    if run.target.concurrent_appends and len(refs) > ctx.options.batch_count:
        with spare.cond:
            spare.streams.append(helpable)
            spare.cond.notify_all()
    try:
        pipe.write(run.target)
    finally:
        with spare.cond:
            if helpable in spare.streams:
                spare.streams.remove(helpable)
            while helpable.writers:  # the helpers' last batches are committed first
                spare.cond.wait(POLL_SECONDS)
        pipe.abandon.set()
        reader.join()
        pipe.share.close()
    if pipe.errors:
        raise pipe.errors[0]
