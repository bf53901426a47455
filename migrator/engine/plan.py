"""The plan of one folder: what the journal says is done, the listing of the rest, the message
filter, the size limit and daily budgets, and the reconciliation with what the target holds;
then the pipeline streams what is left."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from migrator.checkpoint import Commit
from migrator.engine.commit import delete_confirmed
from migrator.engine.context import FolderRun, RunContext, Stop
from migrator.engine.pipeline import stream
from migrator.model import MessageRef
from migrator.ratelimit import recorded_limit, size_reason
from migrator.rules import loose_key

#: Bytes a second assumed for a target whose rate was never measured (see reconcile).
SLOW_APPEND_RATE = 64 * 1024
#: The longest wait for appends left in doubt to land.
MAX_SETTLE = 120.0
#: Appends left in doubt are given this many times as long as the target's measured rate says
#: their bytes need: they may trail behind a connection that was already slowing down.
LATE_APPEND_MARGIN = 1.5
#: A wait for late appends longer than this (seconds) is announced, so a pause is not a hang.
ANNOUNCED_WAIT = 3.0


def copy_folder(ctx: RunContext, run: FolderRun) -> None:
    journal, options = ctx.journal, ctx.options
    source, target, listing, stats = run.source, run.target, run.listing, run.stats
    src, dst = run.src, run.dst
    state = source.open_folder(src)
    run.validity = validity = state.validity
    reconciled = journal.open_folder(src, validity, dst)
    done = journal.done_ids(src, validity, dst)
    # Flags first, for what earlier passes copied: a source that marks what we fetch \Seen
    # (iCloud, without its profile) shows that at the next pass, not in this one.
    stats.flagged += ctx.converger.follow_flags(source, target, run.plan, validity, bool(done))
    wanted = options.message_filter.include
    selected_ids: set[str] | None = None
    if listing.validity != validity:
        listing.validity, listing.refs = validity, {}
    # Identity keys are needed before fetching only when the target must be compared; on a
    # first copy into an empty folder they are derived from the fetched bytes instead.
    present = None if reconciled else _present(ctx, run)
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
        refs = reconcile(ctx, run, refs, present)
    elif not reconciled:
        journal.reconcile(src, validity, dst, [])
    limit, origin = ctx.size_limit(target)
    if limit is not None and refs:
        refs = _leave_out_too_big(ctx, run, refs, limit, origin)
    budget_cut = False
    if options.budgets and refs:
        within = _within_budget(ctx, run, refs)
        budget_cut, refs = len(within) < len(refs), within
    ctx.reporter.folder_started(run.plan, len(refs), sum(r.size for r in refs))
    if refs:
        target.recover(dst, journal.resume_point(dst))
        stream(ctx, run, refs)
    if budget_cut:
        ctx.stop.set()  # cleanly: what was streamed is recorded; the summary says why
    if options.delete_source and not options.dry_run and not ctx.stop.is_set():
        delete_confirmed(ctx, run, selected_ids or set())


def _leave_out_too_big(
    ctx: RunContext, run: FolderRun, refs: list[MessageRef], limit: int, origin: str
) -> list[MessageRef]:
    """Fail messages over the limit up front, and leave alone those that failed for size
    under this same limit before (a rerun retries them only once the limit changes)."""
    src, dst, validity, stats = run.src, run.dst, run.validity, run.stats
    earlier = ctx.journal.failed_reasons(src, validity, dst)
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
        ctx.journal.record(Commit(src, validity, dst, [], [(r, reason) for r in too_big]))
        stats.failures.extend((r.id, reason) for r in too_big)
    if held:
        ctx.notice(
            f"{run.plan.source_name}: {len(held)} message(s) that failed for size are not "
            f"retried: the target's limit is still {limit} bytes"
        )
        stats.failures.extend((r.id, f"{reason} (not retried)") for r, reason in held)
    stats.failed += len(too_big) + len(held)
    return kept


def _within_budget(ctx: RunContext, run: FolderRun, refs: list[MessageRef]) -> list[MessageRef]:
    """The first messages that the daily budgets still allow (bytes reserved before they are
    fetched); when one is spent, the run will stop after them, saying when to rerun."""
    budgets = ctx.options.budgets
    assert budgets is not None
    for n, ref in enumerate(refs):
        if (run.src, ref.id) in ctx.budgeted:
            continue
        spent = budgets.reserve(ref.size)
        if spent is not None:
            if ctx.stopped is None:
                ctx.stopped = spent.spent_message()
            return refs[:n]
        ctx.budgeted.add((run.src, ref.id))
    return refs


def reconcile(
    ctx: RunContext,
    run: FolderRun,
    refs: list[MessageRef],
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
    if present is None:
        present = _present(ctx, run)
    if run.target.late_append_window > 0:
        present = _after_late_appends(ctx, run, present)
    key: Callable[[MessageRef], str] = lambda ref: ref.key  # noqa: E731
    if ctx.options.rules.active:
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
    ctx.journal.reconcile(run.src, run.validity, run.dst, found)
    run.stats.skipped += len(found)
    return todo


def _after_late_appends(ctx: RunContext, run: FolderRun, present: Counter[str]) -> Counter[str]:
    """``present`` again, once appends in doubt that the target does not show yet had the time
    to land (see reconcile); unchanged when none is missing or the time has passed."""
    doubt = ctx.journal.pending(run.src, run.validity, run.dst)
    missing = Counter(key for key, _ in doubt) - present
    if not missing:
        return present
    # In flight are at most the bytes of the appends in doubt; they reach the server
    # about as fast as the target took appends before (measured and journaled).
    late_bytes = sum(size for key, size in doubt if key in missing)
    rate = ctx.journal.append_rate() or SLOW_APPEND_RATE
    window = run.target.late_append_window
    settle = min(window + LATE_APPEND_MARGIN * late_bytes / rate, MAX_SETTLE)
    wait = settle - (time.monotonic() - run.worker.dropped)
    if wait <= 0:
        return present
    if wait > ANNOUNCED_WAIT:
        ctx.notice(
            f"{run.plan.target_name}: waiting {wait:.0f}s for {len(missing)} "
            "message(s) an interrupted append may still deliver, so as not "
            "to copy them twice"
        )
    if ctx.stop.wait(wait):
        raise Stop()
    return _present(ctx, run)


def _present(ctx: RunContext, run: FolderRun) -> Counter[str]:
    present = Counter(run.target.index(run.dst))
    present.subtract(ctx.journal.done_keys(run.dst))
    return present
