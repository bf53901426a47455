"""The target's answers, committed to the journal: each part of a batch is journaled 'pending'
before its append and its answers (done with the target's id, or failed with its reason) after,
written with the next part's 'pending' rows in one transaction; and --delete-source removes only
what the journal says the target has (docs/design.md, "The crash rule")."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace

from migrator.checkpoint import Commit
from migrator.engine.context import FolderRun, RunContext
from migrator.engine.flow import chunk
from migrator.engine.interface import FolderStats
from migrator.errors import FolderError, MessageError, StoreError
from migrator.folders import FolderPlan
from migrator.model import MessageRef, crlf_size, message_key
from migrator.ratelimit import is_size_refusal, size_reason
from migrator.stores.base import Target

#: Appends of at least this many bytes measure the target's rate (smaller ones measure the
#: round trip rather than the bandwidth).
RATE_SAMPLE_BYTES = 32 * 1024

#: A fetched message as the reader hands it over: its bytes, or why they could not be read.
Fetched = tuple[MessageRef, bytes | MessageError]


@dataclass
class Owed:
    """A part's answers from the target, not yet in the journal (see write_batch)."""

    answers: Commit
    stats: FolderStats
    plan: FolderPlan
    changed: dict[str, tuple[str, ...]]
    appended: int
    nbytes: int
    #: Bytes of the messages copied, for the summary.
    copied_bytes: int = 0
    written: bool = False


def write_batch(
    ctx: RunContext, run: FolderRun, target: Target, batch: list[Fetched], owed: Owed | None
) -> Owed | None:
    """Append a batch in parts of at most ``pace.append`` bytes, each journaled 'pending'
    before and committed after, so a connection lost in one part keeps the parts before.

    A part's answers are written with the next part's 'pending' rows, in one transaction:
    ``owed`` comes from the batch before, and what the last part owes is returned for the
    next batch (or for settle, when none is waiting). A crash in between leaves those
    messages 'pending', which the next run resolves against the target (see plan.reconcile),
    as it does for a crash between an append and its commit."""
    try:
        unreadable, good, changed = _prepare(ctx, batch)
        sizes = {id(ref): len(data) for ref, data in good}
        parts: list[list[tuple[MessageRef, bytes]]] = []
        start = 0
        while start < len(good):
            cut = chunk([r for r, _ in good], start, run.pace.append)
            parts.append(good[start : start + len(cut)])
            start += len(cut)
        for n, part in enumerate(parts or [[]]):
            failed = unreadable if n == 0 else []
            done: list[tuple[MessageRef, str | None]] = []
            rate: float | None = None
            nbytes = sum(sizes[id(r)] for r, _ in part)
            if part:
                after = owed.answers if owed is not None else None
                ctx.journal.begin(run.src, run.validity, run.dst, [r for r, _ in part], after=after)
                if owed is not None:
                    count(ctx, owed)
                    owed = None
                rate = _append(ctx, run, target, part, nbytes, done, failed)
            if owed is not None:  # a part with nothing to append: no 'pending' rows to join
                settle(ctx, owed)
            resume = target.resume_point(run.dst)
            answers = Commit(run.src, run.validity, run.dst, done, failed, resume, rate)
            # What came, when a server sent more than it claimed (see flow.held).
            copied = sum(max(ref.size, sizes[id(ref)]) for ref, _ in done)
            owed = Owed(answers, run.stats, run.plan, changed, len(part), nbytes, copied)
        return owed
    except BaseException:
        # Answers not yet in the journal (a part appended before the failure, or the
        # batch before's): written alone; settle skips what a 'pending' row already took.
        if owed is not None:
            with contextlib.suppress(Exception):
                settle(ctx, owed)
        raise


def _prepare(
    ctx: RunContext, batch: list[Fetched]
) -> tuple[
    list[tuple[MessageRef, str]], list[tuple[MessageRef, bytes]], dict[str, tuple[str, ...]]
]:
    """The batch split into the messages that could not be read (with why) and those to append,
    each with its identity key and as the target's rules want it (with what a rule changed)."""
    unreadable = [(ref, str(data)) for ref, data in batch if isinstance(data, MessageError)]
    good = [
        (ref if ref.key else replace(ref, key=message_key(data, ref.size)), data)
        for ref, data in batch
        if isinstance(data, bytes)
    ]
    changed: dict[str, tuple[str, ...]] = {}
    if ctx.options.rules.active:
        ruled = [_apply_rules(ctx, ref, data) for ref, data in good]
        good = [(ref, data) for ref, data, _ in ruled]
        changed = {ref.id: changes for ref, _, changes in ruled if changes}
    return unreadable, good, changed


def _apply_rules(
    ctx: RunContext, ref: MessageRef, data: bytes
) -> tuple[MessageRef, bytes, tuple[str, ...]]:
    """The message as the target's rules want it; a changed one gets its new size and key, so
    that the journal and a later comparison with the target recognise it."""
    new, changes = ctx.options.rules.apply(data)
    if not changes:
        return ref, data, ()
    size = crlf_size(new)
    return replace(ref, size=size, key=message_key(new, size)), new, changes


def _append(
    ctx: RunContext,
    run: FolderRun,
    target: Target,
    part: list[tuple[MessageRef, bytes]],
    nbytes: int,
    done: list[tuple[MessageRef, str | None]],
    failed: list[tuple[MessageRef, str]],
) -> float | None:
    """One part appended; the target's answers go into ``done`` and ``failed``. Returns the
    target's rate in bytes a second when the part was big enough to measure it."""
    extra = ctx.options.add_flags
    outgoing = [(replace(r, flags=r.flags | extra), d) for r, d in part] if extra else part
    began = time.monotonic()
    try:
        results = target.append(run.dst, outgoing)
    except StoreError as exc:
        if exc.transient:
            run.pace.shrink("append", nbytes)
        raise
    took = time.monotonic() - began
    run.pace.grow("append")
    limit, origin = ctx.size_limit(target)
    for (ref, _), result in zip(part, results, strict=True):
        if result.ok:
            done.append((ref, result.target_id))
        else:
            reason = result.error or "refused"
            if limit is not None and is_size_refusal(reason):
                reason = f"{size_reason(limit, origin)}: {reason}"
            failed.append((ref, reason))
    return nbytes / took if nbytes >= RATE_SAMPLE_BYTES and took > 0 else None


def settle(ctx: RunContext, owed: Owed) -> None:
    """Write what a part owes the journal, alone, and count it (once: a writer that fails
    may still hold answers that the next 'pending' transaction already wrote)."""
    if not owed.written:
        ctx.journal.record(owed.answers)
        count(ctx, owed)


def count(ctx: RunContext, owed: Owed) -> None:
    owed.written = True
    done, failed = owed.answers.done, owed.answers.failed
    stats = owed.stats
    with ctx.stats_lock:  # several writers may share a folder's stats
        stats.copied += len(done)
        stats.bytes += owed.copied_bytes
        for ref, _ in done:
            if ref.id in owed.changed:
                stats.changed += 1
                stats.changes.update(owed.changed[ref.id])
        stats.failed += len(failed)
        stats.failures.extend((ref.id, reason) for ref, reason in failed)
    ctx.reporter.advanced(owed.plan, owed.appended + len(failed), owed.nbytes)


def delete_confirmed(ctx: RunContext, run: FolderRun, selected: set[str]) -> None:
    """Remove from the source exactly the selected messages the journal says the target has."""
    source = run.source
    if not source.can_delete:
        raise FolderError(f"{source.label}: this source cannot delete messages")
    ids = [i for i in ctx.journal.undeleted(run.src, run.validity) if i in selected]
    if ids:
        source.delete(run.src, ids)
        ctx.journal.mark_deleted(run.src, run.validity, ids)
        run.stats.deleted += len(ids)
