"""What the user sees while a command runs: the copy reporters (a line per folder, nothing, or
tqdm bars) that the engine calls, and the batch observers (a line per account, or bars) that
run_batch calls. tqdm is imported only when bars are drawn."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from migrator.batch import AccountResult, NullObserver, Plan
from migrator.engine import FolderStats, NullReporter
from migrator.errors import ConfigError
from migrator.folders import FolderPlan
from migrator.scrub import scrub
from migrator.ui.console import err
from migrator.ui.text import WIDTH, human_bytes, plural, shorten

#: Characters of a folder's name on its bar, and of an account's name on its bar: room is left
#: for the counts, rate and ETA on an 80-column terminal.
FOLDER_LABEL = 20
ACCOUNT_LABEL = 24


def draws_bars(term: str | None) -> bool:
    """Bars move the cursor: only on a terminal that can (TERM=dumb cannot; Emacs shells,
    some CI consoles). ``term`` is $TERM, which the CLI reads."""
    return sys.stderr.isatty() and term != "dumb"


def terminal_size() -> dict[str, bool | int]:
    """tqdm's width settings: follow the terminal's width; one that reports no size gets WIDTH
    columns."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except OSError:
        columns = 0
    return {"dynamic_ncols": True} if columns else {"ncols": WIDTH}


def open_log(path: Path) -> IO[str]:
    """--log-file, appended to, readable by its owner only."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise ConfigError(f"--log-file {path}: {exc.strerror}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


# -- copy -----------------------------------------------------------------------------------


class LineReporter(NullReporter):
    """For logs and cron: one line per folder on stderr, no bars, no colour."""

    def __init__(self, log_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._log = open_log(log_file) if log_file else None

    def _write(self, text: str, to_stderr: bool = True) -> None:
        text = scrub(text)
        with self._lock:
            if to_stderr:
                self._show(text)
            if self._log is not None:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                self._log.write(f"{stamp} {text}\n")
                self._log.flush()

    def _show(self, text: str) -> None:
        err(text)

    def folder_finished(self, stats: FolderStats) -> None:
        p = stats.plan
        line = (
            f"{p.source_name} -> {p.target_name}: {stats.copied} copied, "
            f"{stats.skipped} skipped, {stats.failed} failed, {human_bytes(stats.bytes)}"
        )
        if stats.deleted:
            line += f", {stats.deleted} deleted from source"
        if stats.error:
            line += f" (folder error: {stats.error})"
        self._write(line)
        for msg_id, reason in stats.failures:
            self._write(f"failed: {p.source_name} #{msg_id}: {reason}", to_stderr=False)

    def notice(self, text: str) -> None:
        self._write(f"migrator: {text}")

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


class QuietReporter(LineReporter):
    def _show(self, text: str) -> None:
        pass


class BarReporter(LineReporter):
    """tqdm bars on a terminal: overall messages and bytes, and each folder being copied."""

    def __init__(self, log_file: Path | None = None) -> None:
        super().__init__(log_file)
        from tqdm import tqdm

        self._tqdm = tqdm
        self._messages: Any = None
        self._bytes: Any = None
        self._folders: dict[int, Any] = {}
        #: Per folder being copied: [bytes its listing announced, bytes actually written].
        self._folder_bytes: dict[int, list[int]] = {}

    def _show(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        with self._lock:
            common = {**terminal_size(), "leave": True, "file": sys.stderr}
            self._messages = self._tqdm(total=0, unit="msg", desc="messages", position=0, **common)
            self._bytes = self._tqdm(
                total=0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="bytes   ",
                position=1,
                **common,
            )

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        with self._lock:
            self._messages.total += messages
            self._bytes.total += nbytes
            self._folder_bytes[id(plan)] = [nbytes, 0]
            self._messages.refresh()
            self._bytes.refresh()
            if messages:
                self._folders[id(plan)] = self._tqdm(
                    total=messages,
                    unit="msg",
                    desc=shorten(plan.source_name, FOLDER_LABEL),
                    position=2 + len(self._folders),
                    leave=False,
                    file=sys.stderr,
                    **terminal_size(),
                )

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        with self._lock:
            self._messages.update(messages)
            if plan_bytes := self._folder_bytes.get(id(plan)):
                plan_bytes[1] += nbytes
            if self._bytes.n + nbytes > self._bytes.total:  # bodies larger than listed
                self._bytes.total = self._bytes.n + nbytes
            self._bytes.update(nbytes)
            bar = self._folders.get(id(plan))
            if bar is not None:
                bar.update(messages)

    def folder_finished(self, stats: FolderStats) -> None:
        with self._lock:
            bar = self._folders.pop(id(stats.plan), None)
            if bar is not None:
                bar.close()
            # The listing's sizes were an estimate (failed messages, line-end conversion,
            # servers that count differently): a finished folder counts what was written, so
            # the bytes bar ends at 100 % with the messages bar.
            announced, written = self._folder_bytes.pop(id(stats.plan), (0, 0))
            if self._bytes is not None and announced != written:
                self._bytes.total = max(self._bytes.n, self._bytes.total - announced + written)
                self._bytes.refresh()
        # The folder's line goes to the log file only; the bars already showed it.
        if self._log is not None:
            super().folder_finished(stats)

    def _write(self, text: str, to_stderr: bool = True) -> None:
        if text.startswith("migrator: "):
            super()._write(text, to_stderr)
        else:
            super()._write(text, to_stderr=False)

    def close(self) -> None:
        with self._lock:
            for bar in [*self._folders.values(), self._messages, self._bytes]:
                if bar is not None:
                    bar.close()
        super().close()


def make_reporter(
    quiet: bool, json_output: bool, log_file: Path | None, term: str | None
) -> LineReporter:
    """Nothing on stderr when asked (or when JSON goes to a pipe), bars on a terminal that draws
    them, else lines."""
    if quiet or (json_output and not sys.stderr.isatty()):
        return QuietReporter(log_file)
    if draws_bars(term):
        return BarReporter(log_file)
    return LineReporter(log_file)


# -- batch ----------------------------------------------------------------------------------


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
