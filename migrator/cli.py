"""The command line: parses arguments, builds objects, prints. Nothing here speaks a protocol."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from migrator import __version__
from migrator.errors import ConfigError, ExitStatus, MigratorError

if TYPE_CHECKING:
    from migrator.endpoints import AccessOptions, Endpoint
    from migrator.engine import FolderStats, RunSummary
    from migrator.folders import FolderPlan

app = typer.Typer(
    name="migrator",
    help="Move email between IMAP, POP3, mbox and Maildir; interrupt it any time and run it again.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

log = logging.getLogger("migrator")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"migrator {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Move email between IMAP, POP3, mbox and Maildir; interrupt it any time and run it again."""


# -- output ---------------------------------------------------------------------------------


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


class LineReporter:
    """For logs and cron: one line per folder on stderr, no bars, no colour."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        pass

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        pass

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        pass

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
        with self._lock:
            _err(line)

    def notice(self, text: str) -> None:
        with self._lock:
            _err(f"migrator: {text}")


class QuietReporter(LineReporter):
    def folder_finished(self, stats: FolderStats) -> None:
        pass

    def notice(self, text: str) -> None:
        pass


class BarReporter(LineReporter):
    """tqdm bars on a terminal: overall messages and bytes, and the folder being copied."""

    def __init__(self) -> None:
        super().__init__()
        from tqdm import tqdm

        self._tqdm = tqdm
        self._messages: Any = None
        self._bytes: Any = None
        self._folders: dict[int, Any] = {}

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        with self._lock:
            self._messages = self._tqdm(
                total=0, unit="msg", desc="messages", position=0, dynamic_ncols=True, leave=True
            )
            self._bytes = self._tqdm(
                total=0,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="bytes   ",
                position=1,
                dynamic_ncols=True,
                leave=True,
            )

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        with self._lock:
            self._messages.total += messages
            self._bytes.total += nbytes
            self._messages.refresh()
            self._bytes.refresh()
            if messages:
                self._folders[id(plan)] = self._tqdm(
                    total=messages,
                    unit="msg",
                    desc=_shorten(plan.source_name, 24),
                    position=2 + len(self._folders),
                    dynamic_ncols=True,
                    leave=False,
                )

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        with self._lock:
            self._messages.update(messages)
            self._bytes.update(nbytes)
            bar = self._folders.get(id(plan))
            if bar is not None:
                bar.update(messages)

    def folder_finished(self, stats: FolderStats) -> None:
        with self._lock:
            bar = self._folders.pop(id(stats.plan), None)
            if bar is not None:
                bar.close()

    def notice(self, text: str) -> None:
        with self._lock:
            self._tqdm.write(f"migrator: {text}", file=sys.stderr)

    def close(self) -> None:
        with self._lock:
            for bar in [*self._folders.values(), self._messages, self._bytes]:
                if bar is not None:
                    bar.close()


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def summary_table(summary: RunSummary) -> str:
    verb = "would copy" if summary.dry_run else "copied"
    rows = [
        (
            f.plan.source_name,
            f.plan.target_name,
            str(f.copied),
            str(f.skipped),
            str(f.failed) + ("!" if f.error else ""),
            human_bytes(f.bytes),
        )
        for f in summary.folders
    ]
    rows.append(
        (
            "total",
            "",
            str(summary.total("copied")),
            str(summary.total("skipped")),
            str(summary.total("failed")),
            human_bytes(summary.total("bytes")),
        )
    )
    head = ("source folder", "target folder", verb, "skipped", "failed", "size")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    # Keep the table within 80 columns: the folder columns give way first.
    spare = 80 - (sum(widths) + 2 * 5)
    if spare < 0:
        cut = -spare // 2 + 1
        widths[0] = max(12, widths[0] - cut)
        widths[1] = max(12, widths[1] - cut)

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            cell = _shorten(cell, widths[i])
            out.append(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    lines = [line(head), line(["-" * w for w in widths])]
    lines += [line(r) for r in rows[:-1]]
    lines += [line(["-" * w for w in widths]), line(rows[-1])]
    footer = f"{summary.seconds:.1f}s"
    deleted = summary.total("deleted")
    if deleted:
        footer += f"; {deleted} deleted from the source"
    if summary.interrupted:
        footer += "; interrupted: run the same command again to finish"
    lines.append(footer)
    for folder in summary.folders:
        for msg_id, reason in folder.failures[:20]:
            lines.append(f"failed: {folder.plan.source_name} #{msg_id}: {reason}")
        if len(folder.failures) > 20:
            lines.append(f"failed: {folder.plan.source_name}: {len(folder.failures) - 20} more")
        if folder.error:
            lines.append(f"folder not copied: {folder.plan.source_name}: {folder.error}")
    return "\n".join(lines)


def summary_json(summary: RunSummary) -> dict[str, Any]:
    return {
        "copied": summary.total("copied"),
        "skipped": summary.total("skipped"),
        "failed": summary.total("failed"),
        "bytes": summary.total("bytes"),
        "seconds": round(summary.seconds, 3),
        "dry_run": summary.dry_run,
        "interrupted": summary.interrupted,
        "deleted": summary.total("deleted"),
        "folders": [
            {
                "source": f.plan.source_name,
                "target": f.plan.target_name,
                "copied": f.copied,
                "skipped": f.skipped,
                "failed": f.failed,
                "bytes": f.bytes,
                "deleted": f.deleted,
                "error": f.error,
                "failures": [{"id": i, "reason": r} for i, r in f.failures],
            }
            for f in summary.folders
        ],
    }


# -- building objects -----------------------------------------------------------------------


def default_state_path(source: Endpoint, target: Endpoint) -> Path:
    """One journal per (source, target) pair under the user's state directory."""
    from platformdirs import user_state_path

    text = f"{source}\n{target}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9@._-]+", "_", f"{source}--{target}")[:80]
    return user_state_path("migrator") / "journals" / f"{slug}-{digest}.sqlite"


def _access(
    endpoint: Endpoint,
    side: str,
    password_file: Path | None,
    password_cmd: str | None,
    ca_file: Path | None,
    insecure: bool,
    timeout: float,
) -> AccessOptions | None:
    from migrator.credentials import SecretSources, secret_provider
    from migrator.endpoints import AccessOptions, ServerEndpoint

    if not isinstance(endpoint, ServerEndpoint):
        return None
    if endpoint.tls == "none":
        _err(
            f"migrator: warning: {endpoint}: no TLS; the password and mail cross the network "
            "in clear"
        )
    elif insecure:
        _err(f"migrator: warning: {endpoint}: certificate checks are off (--insecure)")
    secret = secret_provider(
        SecretSources(side, password_file, password_cmd),
        label=str(endpoint),
        keyring_user=f"{endpoint.user}@{endpoint.host}",
        env=os.environ,
        interactive=sys.stdin.isatty(),
    )
    return AccessOptions(secret=secret, ca_file=ca_file, insecure=insecure, timeout=timeout)


def _parse(kind: str, parser: Any, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parser(value)
    except ValueError as exc:
        raise ConfigError(f"{kind}: {exc}") from None


def _fail(exc: BaseException, debug: bool) -> NoReturn:
    if debug:
        import traceback

        traceback.print_exception(exc)
    if isinstance(exc, MigratorError):
        _err(f"migrator: error: {exc}")
        raise typer.Exit(int(exc.exit_status))
    _err(
        f"migrator: internal error: {type(exc).__name__}: {exc} "
        "(nothing was lost: rerun the same command; --debug shows details)"
    )
    raise typer.Exit(int(ExitStatus.PARTIAL))


def _install_signal_handlers() -> None:
    """SIGTERM and SIGHUP stop the run like Ctrl-C: finish the batch, commit, exit 130."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)


# -- commands -------------------------------------------------------------------------------

Repeated = Annotated[list[str] | None, typer.Option()]


@app.command()
def copy(
    source: Annotated[
        str, typer.Argument(help="Where the mail is: imaps://USER@HOST, mbox:PATH, ...")
    ],
    target: Annotated[
        str, typer.Argument(help="Where it goes: imaps://USER@HOST, maildir:PATH, ...")
    ],
    folder: Annotated[
        list[str] | None,
        typer.Option("--folder", help="Copy only folders matching this glob (repeatable)."),
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Skip folders matching this glob (repeatable)."),
    ] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="Rename a folder and its sub-folders: SRC=DST (repeatable)."),
    ] = None,
    into: Annotated[
        str | None, typer.Option("--into", help="Put every folder under this target folder.")
    ] = None,
    to_folder: Annotated[
        str | None,
        typer.Option("--to-folder", help="Where a one-folder source (POP3, one mbox) lands."),
    ] = None,
    since: Annotated[
        str | None, typer.Option("--since", help="Only mail received on or after DATE.")
    ] = None,
    before: Annotated[
        str | None, typer.Option("--before", help="Only mail received before DATE.")
    ] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Only mail older than AGE (90d, 12w, 1y).")
    ] = None,
    max_size: Annotated[
        str | None, typer.Option("--max-size", help="Skip messages larger than SIZE (25M).")
    ] = None,
    delete_source: Annotated[
        bool,
        typer.Option(
            "--delete-source",
            help="Remove copied messages from the source once the target holds them durably.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be copied; change nothing.")
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=32, help="Folders copied at once.")
    ] = 2,
    state: Annotated[
        Path | None, typer.Option("--state", help="The checkpoint journal (SQLite) to use.")
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    source_password_file: Annotated[
        Path | None, typer.Option(help="Read the source password from this file.")
    ] = None,
    target_password_file: Annotated[
        Path | None, typer.Option(help="Read the target password from this file.")
    ] = None,
    source_password_cmd: Annotated[
        str | None, typer.Option(help="Run this command; its output is the source password.")
    ] = None,
    target_password_cmd: Annotated[
        str | None, typer.Option(help="Run this command; its output is the target password.")
    ] = None,
    source_ca_file: Annotated[
        Path | None, typer.Option(help="Trust this CA for the source.")
    ] = None,
    target_ca_file: Annotated[
        Path | None, typer.Option(help="Trust this CA for the target.")
    ] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Do not verify certificates (prints a warning).")
    ] = False,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Reconnects after a dropped connection.")
    ] = 5,
    timeout: Annotated[
        float, typer.Option("--timeout", min=1, help="Seconds before a silent server is dropped.")
    ] = 60.0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Copy every selected message from SOURCE to TARGET, resumably.

    Example: migrator copy imaps://alice@old.example.org imaps://alice@new.example.org
    """
    _install_signal_handlers()
    try:
        status = _copy(**locals())
    except KeyboardInterrupt:
        _err("migrator: interrupted; run the same command again to finish")
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None
    except typer.Exit:
        raise
    except BaseException as exc:
        _fail(exc, debug)
    raise typer.Exit(int(status))


def _copy(**a: Any) -> ExitStatus:
    from datetime import UTC, datetime

    from migrator.checkpoint import Journal
    from migrator.endpoints import open_store, parse_endpoint
    from migrator.engine import CopyOptions, Engine
    from migrator.filters import MessageFilter, parse_age, parse_date, parse_size
    from migrator.folders import FolderMap

    source_ep = parse_endpoint(a["source"])
    target_ep = parse_endpoint(a["target"])
    renames: dict[str, str] = {}
    for item in a["map_"] or []:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ConfigError(f"--map {item!r}: write --map SOURCE=TARGET")
        renames[src.strip()] = dst.strip()
    since = _parse("--since", parse_date, a["since"])
    before = _parse("--before", parse_date, a["before"])
    if a["older_than"]:
        cutoff = datetime.now(UTC) - _parse("--older-than", parse_age, a["older_than"])
        before = min(before, cutoff) if before else cutoff
    options = CopyOptions(
        folder_map=FolderMap(
            include=a["folder"] or (),
            exclude=a["exclude"] or (),
            renames=renames,
            into=a["into"],
            to_folder=a["to_folder"],
        ),
        message_filter=MessageFilter(
            since=since, before=before, max_size=_parse("--max-size", parse_size, a["max_size"])
        ),
        delete_source=a["delete_source"],
        dry_run=a["dry_run"],
        workers=a["workers"],
        retries=a["retries"],
    )
    source_access = _access(
        source_ep,
        "source",
        a["source_password_file"],
        a["source_password_cmd"],
        a["source_ca_file"],
        a["insecure"],
        a["timeout"],
    )
    target_access = _access(
        target_ep,
        "target",
        a["target_password_file"],
        a["target_password_cmd"],
        a["target_ca_file"],
        a["insecure"],
        a["timeout"],
    )
    # Build once now, so an unsupported endpoint or a missing password fails before anything
    # starts (and a prompt comes before the first connection, not in the middle of the run).
    open_store(source_ep, source_access, "source")
    open_store(target_ep, target_access, "target")
    for access in (source_access, target_access):
        if access is not None:
            access.secret()
    state_path: Path = a["state"] or default_state_path(source_ep, target_ep)
    journal = Journal.in_memory(state_path) if a["dry_run"] else Journal.open(state_path)
    reporter: Any
    if a["quiet"] or (a["json_output"] and not sys.stderr.isatty()):
        reporter = QuietReporter()
    elif sys.stderr.isatty():
        reporter = BarReporter()
    else:
        reporter = LineReporter()
    engine = Engine(
        lambda: open_store(source_ep, source_access, "source"),  # type: ignore[arg-type,return-value]
        lambda: open_store(target_ep, target_access, "target"),  # type: ignore[arg-type,return-value]
        journal,
        options,
        reporter,
    )
    run_id = journal.start_run(str(source_ep), str(target_ep))
    journal.bind(str(source_ep), str(target_ep))
    status = "failed"
    try:
        summary = engine.run()
        status = "interrupted" if summary.interrupted else ("done" if summary.ok else "partial")
    finally:
        if isinstance(reporter, BarReporter):
            reporter.close()
        totals = (0, 0, 0, 0)
        if status != "failed":
            totals = tuple(summary.total(k) for k in ("copied", "skipped", "failed", "bytes"))  # type: ignore[assignment]
        journal.finish_run(run_id, status, *totals)
        journal.close()
    if a["json_output"]:
        typer.echo(json.dumps(summary_json(summary), ensure_ascii=False))
    elif not a["quiet"]:
        typer.echo(summary_table(summary))
    if summary.interrupted:
        _err("migrator: interrupted; what was copied is recorded: run the same command to finish")
        return ExitStatus.INTERRUPTED
    return ExitStatus.OK if summary.ok else ExitStatus.PARTIAL


def main() -> None:
    app()
