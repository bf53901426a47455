"""The retry policy: one folder copied again after a lost connection, with backoff, until it
moves no more mail; a server's request to wait is honoured apart."""

from __future__ import annotations

import time

from migrator.engine.context import FolderRun, RunContext, Stop, Worker
from migrator.engine.interface import FolderStats
from migrator.engine.plan import copy_folder
from migrator.errors import ConnectError, FolderError, StoreError
from migrator.folders import FolderPlan

#: The longest pause between two reconnects that moved nothing (the pause doubles from
#: --retry-delay): a link that stays down is still tried about once a minute, not once an hour.
MAX_RETRY_DELAY = 60.0


def folder_with_retries(
    ctx: RunContext, worker: Worker, plan: FolderPlan, stats: FolderStats
) -> None:
    """Copy one folder, reconnecting after a lost connection. ``--retries`` counts the
    reconnects in a row that moved nothing: an attempt that copied something new into the
    target, or listed more of the folder, starts the count (and the backoff) afresh, so a
    link that drops often but works in between finishes the job, and one that is down gives
    up after that many tries. A message that failed is not progress: a server that fails
    one message and drops the connection at every attempt is given up on like a dead link
    (and the stores' login gate, ratelimit.LOGINS, caps the logins a minute in any case)."""
    options = ctx.options
    delay = options.retry_delay
    failures = throttled = 0
    run = FolderRun(worker, plan, stats)
    source, target = worker.source, worker.target
    while True:
        before = (stats.copied, len(run.listing.refs))
        try:
            source.connect()
            target.connect()
            target.ensure_folder(plan.target, plan.special_use)
            copy_folder(ctx, run)
            ctx.reporter.folder_finished(stats)
            return
        except FolderError as exc:
            stats.error = str(exc)
            ctx.notice(f"{plan.source_name}: {exc}")
            ctx.reporter.folder_finished(stats)
            return
        except (StoreError, ConnectError) as exc:
            if isinstance(exc, StoreError) and not exc.transient:
                raise
            worker.dropped = time.monotonic()
            if isinstance(exc, StoreError) and exc.retry_after is not None:
                throttled += 1
                _wait_as_asked(ctx, run, exc, exc.retry_after, throttled)
                continue
            progressed = (stats.copied, len(run.listing.refs)) != before
            if progressed:
                failures, delay = 0, options.retry_delay
            failures += 1
            if failures > options.retries:
                # Still a ConnectError (exit 3) when the server could not be reached at all.
                give_up = ConnectError if isinstance(exc, ConnectError) else StoreError
                raise give_up(
                    f"{exc} (gave up after {options.retries} reconnects in a row "
                    "without progress; rerun the same command to resume)"
                ) from None
            # After an attempt that moved mail the link works: reconnect at once. Only
            # attempts in a row that moved nothing back off (retry_delay, doubling).
            pause = 0.0 if progressed else delay
            ctx.notice(
                f"{plan.source_name}: {exc}; reconnecting "
                + (f"in {pause:g}s " if pause else "")
                + f"({failures} of {options.retries})"
            )
            # The store that lost its connection has closed it (see StoreError); the other
            # side keeps its own, so a drop on one side does not cost the other a new login.
            if ctx.stop.wait(pause):
                raise Stop() from None
            if not progressed:
                delay = min(delay * 2, MAX_RETRY_DELAY)


def _wait_as_asked(
    ctx: RunContext, run: FolderRun, exc: StoreError, seconds: float, throttled: int
) -> None:
    """The server asked us to wait: do so, then the caller reconnects and goes on. Not a failure
    of the link, so it does not count against --retries, but only --max-throttles times."""
    if throttled > ctx.options.max_throttles:
        raise StoreError(
            f"{exc} (still asked to wait after {throttled - 1} waits; rerun "
            "the same command later to resume)"
        ) from None
    ctx.notice(f"{run.plan.source_name}: {exc}; waiting {seconds:g}s as asked, then reconnecting")
    run.source.close()
    run.target.close()
    if ctx.stop.wait(seconds):
        raise Stop() from None
