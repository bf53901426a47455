"""What `migrator batch` shows: while it runs, the observers run_batch calls (a line per
finished account, or an overall bar and a bar per running account); when it ends, the results
table, the JSON object and the --report CSV."""

from __future__ import annotations

import csv
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypedDict

from migrator import batch
from migrator.batch import AccountResult, BatchResult, NullObserver, Plan
from migrator.errors import ConfigError
from migrator.ui.console import err
from migrator.ui.progress import draws_bars, terminal_size
from migrator.ui.text import duration, human_bytes, plural, shorten, table

#: Characters of an account's name on its bar: room is left for the counts on an 80-column
#: terminal.
ACCOUNT_LABEL = 24

# -- while it runs -------------------------------------------------------------------------


class BatchLines(NullObserver):
    """For logs and cron: a line per finished account on stderr."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.total = self.finished = 0

    def _say(self, text: str) -> None:
        if not self.quiet:
            err(text)

    def planned(self, plan: Plan, total: int) -> None:
        self.total = total
        if plan.kept:
            self._say(
                f"migrator: {plural(total, 'account')} to run; {len(plan.kept)} left as "
                f"{'it was' if len(plan.kept) == 1 else 'they were'} "
                "(finished or failed before: --refresh, --retry-failed)"
            )

    def account_finished(self, result: AccountResult) -> None:
        self.finished += 1
        line = (
            f"[{self.finished}/{self.total}] {result.name}: {result.status}, "
            f"{result.copied} copied, {result.skipped} skipped, {result.failed} failed, "
            f"{human_bytes(result.bytes)}, {result.seconds:.1f}s"
        )
        if result.error:
            line += f" ({result.error})"
        self._say(line)

    def notice(self, text: str) -> None:
        self._say(f"migrator: {text}")

    def close(self) -> None:
        pass


class BatchBars(BatchLines):
    """On a terminal: one overall bar (accounts done of total, bytes, ETA) and a bar per
    running account."""

    def __init__(self) -> None:
        super().__init__()
        from tqdm import tqdm

        self._tqdm = tqdm
        self._overall: Any = None
        self._bars: dict[str, Any] = {}
        self._positions: dict[str, int] = {}
        self._free: list[int] = []
        self._bytes: dict[str, int] = {}
        self._done_bytes = 0
        self._started = time.monotonic()

    def _show(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def _say(self, text: str) -> None:
        self._show(text)

    def planned(self, plan: Plan, total: int) -> None:
        super().planned(plan, total)
        self._overall = self._tqdm(
            total=total,
            unit="acct",
            desc="accounts",
            position=0,
            file=sys.stderr,
            **terminal_size(),
        )

    def _postfix(self) -> None:
        nbytes = self._done_bytes + sum(self._bytes.values())
        rate = nbytes / max(time.monotonic() - self._started, 1e-6)
        self._overall.set_postfix_str(f"{human_bytes(nbytes)}, {human_bytes(rate)}/s")

    def account_started(self, name: str, worker: str | None) -> None:
        if name in self._bars:
            return
        position = self._free.pop(0) if self._free else 1 + len(self._bars)
        self._positions[name] = position
        self._bars[name] = self._tqdm(
            total=0,
            unit="msg",
            desc=shorten(name, ACCOUNT_LABEL),
            position=position,
            leave=False,
            file=sys.stderr,
            **terminal_size(),
        )

    def account_progress(
        self, name: str, messages: int, messages_total: int, nbytes: int, bytes_total: int
    ) -> None:
        if name not in self._bars:
            self.account_started(name, None)
        bar = self._bars[name]
        bar.total = messages_total
        bar.n = messages
        bar.refresh()
        self._bytes[name] = nbytes
        self._postfix()

    def account_finished(self, result: AccountResult) -> None:
        bar = self._bars.pop(result.name, None)
        if bar is not None:
            self._free.append(self._positions.pop(result.name))
            self._free.sort()
            bar.close()
        self._bytes.pop(result.name, None)
        self._done_bytes += result.bytes
        self._overall.update(1)
        self._postfix()
        if result.error:
            self._show(f"{result.name}: {result.status}: {result.error}")

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        if self._overall is not None:
            self._overall.close()


def make_observer(quiet: bool, json_output: bool, term: str | None) -> BatchLines:
    """Bars on a terminal that draws them (even with --json: they go to stderr), else lines;
    silent lines with --quiet, or with --json and no bars."""
    if not quiet and draws_bars(term):
        return BatchBars()
    return BatchLines(quiet=quiet or json_output)


# -- when it ends ---------------------------------------------------------------------------


class BatchJson(TypedDict):
    #: Each account's AccountResult, field by field.
    accounts: list[dict[str, object]]
    accounts_total: int
    accounts_ran: int
    accounts_done: int
    accounts_partial: int
    accounts_failed: int
    accounts_interrupted: int
    accounts_not_run: int
    messages_copied: int
    messages_skipped: int
    messages_failed: int
    bytes: int
    interrupted: bool
    seconds: float


def results_table(result: BatchResult) -> str:
    """Per account: status, copied, skipped, failed, bytes, time; then each first error."""
    rows = [
        [
            a.name,
            a.shown_status,
            str(a.copied),
            str(a.skipped),
            str(a.failed),
            human_bytes(a.bytes),
            duration(a.seconds) if a.ran else "-",
        ]
        for a in result.accounts
    ]
    rows.append(
        [
            "total",
            f"{result.count(batch.DONE)}/{len(result.accounts)} done",
            str(result.total("copied")),
            str(result.total("skipped")),
            str(result.total("failed")),
            human_bytes(result.total("bytes")),
            duration(result.seconds),
        ]
    )
    head = ["account", "status", "copied", "skipped", "failed", "bytes", "time"]
    text = table(head, rows, text_columns=2)
    bad = [a for a in result.accounts if a.error and a.status in batch.BAD]
    errors = [f"  {a.name}: {a.error}" for a in bad]
    if errors:
        text += "\nfirst error per account:\n" + "\n".join(errors)
    return text


def results_json(result: BatchResult) -> BatchJson:
    """Per account as copy --json counts (copied, skipped, failed: messages); at the top, every
    count says what it counts: accounts_* (accounts by status) or messages_*."""
    return {
        "accounts": [{**asdict(a), "seconds": round(a.seconds, 3)} for a in result.accounts],
        "accounts_total": len(result.accounts),
        "accounts_ran": result.ran,
        "accounts_done": result.count(batch.DONE),
        "accounts_partial": result.count(batch.PARTIAL),
        "accounts_failed": result.count(batch.FAILED),
        "accounts_interrupted": result.count(batch.INTERRUPTED),
        "accounts_not_run": result.count(batch.NOT_RUN),
        "messages_copied": result.total("copied"),
        "messages_skipped": result.total("skipped"),
        "messages_failed": result.total("failed"),
        "bytes": result.total("bytes"),
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
    }


REPORT_COLUMNS = (
    "name",
    "source",
    "target",
    "status",
    "ran",
    "copied",
    "skipped",
    "failed",
    "bytes",
    "seconds",
    "error",
    "worker",
    "journal",
)


def report_rows(result: BatchResult) -> Iterator[list[str]]:
    yield list(REPORT_COLUMNS)
    for a in result.accounts:
        data = {**asdict(a), "seconds": f"{a.seconds:.3f}", "ran": "yes" if a.ran else "no"}
        yield ["" if data[c] is None else str(data[c]) for c in REPORT_COLUMNS]


def write_report(path: Path, result: BatchResult) -> None:
    """The per-account table as CSV, for spreadsheets."""
    try:
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(report_rows(result))
    except OSError as exc:
        raise ConfigError(f"--report {path}: {exc.strerror}") from None
