"""What the user sees while a copy runs: the reporters the engine calls (a line per folder,
nothing, or tqdm bars), and when bars can be drawn. tqdm is imported only when they are."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from migrator.engine import FolderStats, NullReporter
from migrator.errors import ConfigError
from migrator.folders import FolderPlan
from migrator.scrub import scrub
from migrator.ui.console import err
from migrator.ui.text import WIDTH, human_bytes, shorten

#: Characters of a folder's name on its bar: room is left for the counts, rate and ETA on an
#: 80-column terminal.
FOLDER_LABEL = 20


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
