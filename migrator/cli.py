"""The command line: parses arguments, builds objects, prints. Nothing here speaks a protocol.

Heavy modules (imapclient, sqlite3, tqdm, the stores) are imported inside the commands, so that
`migrator --help` and `--version` start fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from migrator import __version__
from migrator.errors import ConfigError, ExitStatus, MigratorError

if TYPE_CHECKING:
    from migrator.endpoints import AccessOptions, Endpoint
    from migrator.engine import FolderStats
    from migrator.folders import FolderMap, FolderPlan
    from migrator.stores.base import Source, Target

app = typer.Typer(
    name="migrator",
    help="Move email between IMAP, POP3, mbox and Maildir; interrupt it any time and run it again.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


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
    """Move email between IMAP, POP3, mbox and Maildir; interrupt it any time and run it again.

    Endpoints: imaps://USER@HOST[:PORT], imap://USER@HOST (STARTTLS), pop3s://USER@HOST,
    pop3://USER@HOST (STLS), mbox:PATH, maildir:PATH. Passwords come from
    MIGRATOR_SOURCE_PASSWORD / MIGRATOR_TARGET_PASSWORD, --*-password-file, --*-password-cmd,
    the system keyring, or a prompt; never from the URL.
    """


# -- output ---------------------------------------------------------------------------------


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


class LineReporter:
    """For logs and cron: one line per folder on stderr, no bars, no colour."""

    def __init__(self, log_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._log = _open_log(log_file) if log_file else None

    def _write(self, text: str, to_stderr: bool = True) -> None:
        with self._lock:
            if to_stderr:
                self._show(text)
            if self._log is not None:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                self._log.write(f"{stamp} {text}\n")
                self._log.flush()

    def _show(self, text: str) -> None:
        _err(text)

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        pass

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        pass

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        pass

    def folder_finished(self, stats: FolderStats) -> None:
        from migrator.report import human_bytes

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

    def _show(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    @staticmethod
    def _size() -> dict[str, Any]:
        """Follow the terminal's width; one that reports no size gets 80 columns."""
        try:
            columns = os.get_terminal_size(sys.stderr.fileno()).columns
        except OSError:
            columns = 0
        return {"dynamic_ncols": True} if columns else {"ncols": 80}

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        with self._lock:
            common = {**self._size(), "leave": True, "file": sys.stderr}
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
            self._messages.refresh()
            self._bytes.refresh()
            if messages:
                self._folders[id(plan)] = self._tqdm(
                    total=messages,
                    unit="msg",
                    desc=_shorten(plan.source_name, 20),
                    position=2 + len(self._folders),
                    leave=False,
                    file=sys.stderr,
                    **self._size(),
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


def _open_log(path: Path) -> Any:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError as exc:
        raise ConfigError(f"--log-file {path}: {exc.strerror}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _reporter(quiet: bool, json_output: bool, log_file: Path | None) -> LineReporter:
    if quiet or (json_output and not sys.stderr.isatty()):
        return QuietReporter(log_file)
    if sys.stderr.isatty():
        return BarReporter(log_file)
    return LineReporter(log_file)


# -- building objects -----------------------------------------------------------------------


def default_state_path(source: Endpoint, target: Endpoint) -> Path:
    """One journal per (source, target) pair under the user's state directory."""
    from platformdirs import user_state_path

    digest = hashlib.sha256(f"{source}\n{target}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9@._-]+", "_", f"{source}--{target}")[:80]
    return user_state_path("migrator") / "journals" / f"{slug}-{digest}.sqlite"


@dataclass
class Side:
    """How to reach one endpoint: what the user typed, turned into a store factory."""

    endpoint: Endpoint
    access: AccessOptions | None
    role: str

    def store(self) -> Any:
        from migrator.endpoints import open_store

        return open_store(self.endpoint, self.access, self.role)

    def check_secret(self) -> None:
        if self.access is not None:
            self.access.secret()


def _side(
    text: str,
    role: str,
    side: str,
    password_file: Path | None = None,
    password_cmd: str | None = None,
    ca_file: Path | None = None,
    insecure: bool = False,
    timeout: float = 60.0,
) -> Side:
    """Parse an endpoint and find its secret (before any connection, so a prompt comes first)."""
    from migrator.credentials import SecretSources, secret_provider
    from migrator.endpoints import AccessOptions, ServerEndpoint, open_store, parse_endpoint

    endpoint = parse_endpoint(text)
    access = None
    if isinstance(endpoint, ServerEndpoint):
        if endpoint.tls == "none":
            _err(
                f"migrator: warning: {endpoint}: no TLS; the password and mail cross the "
                "network in clear"
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
        access = AccessOptions(secret=secret, ca_file=ca_file, insecure=insecure, timeout=timeout)
    open_store(endpoint, access, role)  # an unsupported endpoint fails here, before anything
    return Side(endpoint, access, role)


def _parse(kind: str, parser: Callable[[str], Any], value: str | None) -> Any:
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


@contextmanager
def _errors(debug: bool) -> Iterator[None]:
    """Every command's frame: one clear line per error, exit codes as SPEC.md gives them;
    SIGTERM and SIGHUP stop like Ctrl-C."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupt)
    try:
        yield
    except KeyboardInterrupt:
        _err("migrator: interrupted; run the same command again to finish")
        raise typer.Exit(int(ExitStatus.INTERRUPTED)) from None
    except (typer.Exit, typer.Abort):
        raise
    except BaseException as exc:
        _fail(exc, debug)


# -- options shared by commands ---------------------------------------------------------------

FolderOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--folder", help="Only folders matching this glob (repeatable).", show_default=False
    ),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude", help="Skip folders matching this glob (repeatable).", show_default=False
    ),
]
MapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--map",
        help="Rename a folder and its sub-folders: SRC=DST (repeatable).",
        show_default=False,
    ),
]
IntoOpt = Annotated[str | None, typer.Option("--into", help="Put every folder under this one.")]
ToFolderOpt = Annotated[
    str | None,
    typer.Option("--to-folder", help="Where a one-folder source (POP3, one mbox) lands."),
]
SinceOpt = Annotated[str | None, typer.Option("--since", help="Only mail received on/after DATE.")]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="Only mail received before DATE.")]
OlderOpt = Annotated[
    str | None, typer.Option("--older-than", help="Only mail older than AGE (90d, 12w, 1y).")
]
MaxSizeOpt = Annotated[
    str | None, typer.Option("--max-size", help="Leave out messages larger than SIZE (25M).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify certificates (prints a warning).")
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=1, help="Seconds before a silent server is dropped.")
]
SrcPwFile = Annotated[Path | None, typer.Option(help="Read the source password from this file.")]
DstPwFile = Annotated[Path | None, typer.Option(help="Read the target password from this file.")]
SrcPwCmd = Annotated[str | None, typer.Option(help="Its output is the source password.")]
DstPwCmd = Annotated[str | None, typer.Option(help="Its output is the target password.")]
SrcCa = Annotated[Path | None, typer.Option(help="Trust this CA for the source.")]
DstCa = Annotated[Path | None, typer.Option(help="Trust this CA for the target.")]
PwFile = Annotated[Path | None, typer.Option("--password-file", help="Read the password here.")]
PwCmd = Annotated[str | None, typer.Option("--password-cmd", help="Its output is the password.")]
CaOpt = Annotated[Path | None, typer.Option("--ca-file", help="Trust this CA.")]


def _folder_map(
    folder: list[str] | None,
    exclude: list[str] | None,
    map_: list[str] | None,
    into: str | None,
    to_folder: str | None,
) -> FolderMap:
    from migrator.folders import FolderMap

    renames: dict[str, str] = {}
    for item in map_ or []:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ConfigError(f"--map {item!r}: write --map SOURCE=TARGET")
        renames[src.strip()] = dst.strip()
    return FolderMap(
        include=folder or (),
        exclude=exclude or (),
        renames=renames,
        into=into,
        to_folder=to_folder,
    )


def _message_filter(
    since: str | None, before: str | None, older_than: str | None, max_size: str | None
) -> Any:
    from datetime import UTC, datetime

    from migrator.filters import MessageFilter, parse_age, parse_date, parse_size

    since_d = _parse("--since", parse_date, since)
    before_d = _parse("--before", parse_date, before)
    if older_than:
        cutoff = datetime.now(UTC) - _parse("--older-than", parse_age, older_than)
        before_d = min(before_d, cutoff) if before_d else cutoff
    return MessageFilter(
        since=since_d, before=before_d, max_size=_parse("--max-size", parse_size, max_size)
    )


SYSTEM_FLAGS = {
    "seen": "\\Seen",
    "answered": "\\Answered",
    "flagged": "\\Flagged",
    "draft": "\\Draft",
}


def _flag_names(names: list[str]) -> frozenset[str]:
    flags = set()
    for name in names:
        key = name.strip().lstrip("\\").lower()
        if key in SYSTEM_FLAGS:
            flags.add(SYSTEM_FLAGS[key])
        elif re.fullmatch(r"[$A-Za-z0-9_.-]+", name.strip()):
            flags.add(name.strip())
        else:
            raise ConfigError(f"--flags {name!r}: use seen, answered, flagged, draft or a keyword")
    return frozenset(flags)


# -- copy -----------------------------------------------------------------------------------


@app.command()
def copy(
    source: Annotated[str, typer.Argument(help="Where the mail is: imaps://USER@HOST, mbox:PATH")],
    target: Annotated[str, typer.Argument(help="Where it goes: imaps://USER@HOST, maildir:PATH")],
    folder: FolderOpt = None,
    exclude: ExcludeOpt = None,
    map_: MapOpt = None,
    into: IntoOpt = None,
    to_folder: ToFolderOpt = None,
    since: SinceOpt = None,
    before: BeforeOpt = None,
    older_than: OlderOpt = None,
    max_size: MaxSizeOpt = None,
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
    flags: Annotated[
        list[str] | None,
        typer.Option(
            "--flags",
            help="Add this flag to every copied message: seen, answered, flagged, draft, or a "
            "keyword (repeatable). For POP3 sources whose client had read everything.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=32, help="Folders copied at once.")
    ] = 2,
    state: Annotated[
        Path | None, typer.Option("--state", help="The checkpoint journal (SQLite) to use.")
    ] = None,
    json_output: JsonOpt = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Append a line per folder and failure here.")
    ] = None,
    source_password_file: SrcPwFile = None,
    target_password_file: DstPwFile = None,
    source_password_cmd: SrcPwCmd = None,
    target_password_cmd: DstPwCmd = None,
    source_ca_file: SrcCa = None,
    target_ca_file: DstCa = None,
    insecure: InsecureOpt = False,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Reconnects after a dropped connection.")
    ] = 5,
    timeout: TimeoutOpt = 60.0,
    debug: DebugOpt = False,
) -> None:
    """Copy every selected message from SOURCE to TARGET, resumably.

    Example: migrator copy imaps://alice@old.example.org imaps://alice@new.example.org
    """
    with _errors(debug):
        from migrator.checkpoint import Journal
        from migrator.engine import CopyOptions, Engine
        from migrator.report import copy_json, copy_table

        options = CopyOptions(
            folder_map=_folder_map(folder, exclude, map_, into, to_folder),
            message_filter=_message_filter(since, before, older_than, max_size),
            delete_source=delete_source,
            dry_run=dry_run,
            add_flags=_flag_names(flags or []),
            workers=workers,
            retries=retries,
        )
        src = _side(
            source,
            "source",
            "source",
            source_password_file,
            source_password_cmd,
            source_ca_file,
            insecure,
            timeout,
        )
        dst = _side(
            target,
            "target",
            "target",
            target_password_file,
            target_password_cmd,
            target_ca_file,
            insecure,
            timeout,
        )
        src.check_secret()
        dst.check_secret()
        state_path = state or default_state_path(src.endpoint, dst.endpoint)
        journal = Journal.in_memory(state_path) if dry_run else Journal.open(state_path)
        reporter = _reporter(quiet, json_output, log_file)
        engine = Engine(src.store, dst.store, journal, options, reporter)
        run_id = journal.start_run(str(src.endpoint), str(dst.endpoint))
        journal.bind(str(src.endpoint), str(dst.endpoint))
        outcome = "failed"
        try:
            summary = engine.run()
            outcome = "interrupted" if summary.interrupted else "done" if summary.ok else "partial"
            totals = [summary.total(k) for k in ("copied", "skipped", "failed", "bytes")]
        finally:
            reporter.close()
            journal.finish_run(run_id, outcome, *(totals if outcome != "failed" else [0] * 4))
            journal.close()
        if json_output:
            typer.echo(json.dumps(copy_json(summary), ensure_ascii=False))
        elif not quiet:
            typer.echo(copy_table(summary))
        if summary.interrupted:
            _err(
                "migrator: interrupted; what was copied is recorded: run the same command to finish"
            )
            raise typer.Exit(int(ExitStatus.INTERRUPTED))
        raise typer.Exit(int(ExitStatus.OK if summary.ok else ExitStatus.PARTIAL))


# -- verify ---------------------------------------------------------------------------------


@app.command()
def verify(
    source: Annotated[str, typer.Argument(help="The endpoint copied from.")],
    target: Annotated[str, typer.Argument(help="The endpoint copied to.")],
    folder: FolderOpt = None,
    exclude: ExcludeOpt = None,
    map_: MapOpt = None,
    into: IntoOpt = None,
    to_folder: ToFolderOpt = None,
    since: SinceOpt = None,
    before: BeforeOpt = None,
    older_than: OlderOpt = None,
    max_size: MaxSizeOpt = None,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="Match by 'digest' of the bytes, or 'message-id' for targets "
            "that rewrite messages.",
        ),
    ] = "digest",
    list_missing: Annotated[
        bool, typer.Option("--list", help="Name every missing message.")
    ] = False,
    json_output: JsonOpt = False,
    source_password_file: SrcPwFile = None,
    target_password_file: DstPwFile = None,
    source_password_cmd: SrcPwCmd = None,
    target_password_cmd: DstPwCmd = None,
    source_ca_file: SrcCa = None,
    target_ca_file: DstCa = None,
    insecure: InsecureOpt = False,
    timeout: TimeoutOpt = 60.0,
    debug: DebugOpt = False,
) -> None:
    """Compare SOURCE and TARGET folder by folder: counts, missing, extra, flag differences.
    Exits 1 when anything is missing.

    Example: migrator verify imaps://alice@old.example.org imaps://alice@new.example.org --list
    """
    with _errors(debug):
        from migrator.report import verify_json, verify_table
        from migrator.verify import BY, summary
        from migrator.verify import verify as run_verify

        if by not in BY:
            raise ConfigError(f"--by {by!r}: use one of {', '.join(BY)}")
        folder_map = _folder_map(folder, exclude, map_, into, to_folder)
        message_filter = _message_filter(since, before, older_than, max_size)
        src = _side(
            source,
            "source",
            "source",
            source_password_file,
            source_password_cmd,
            source_ca_file,
            insecure,
            timeout,
        )
        dst = _side(
            target,
            "source",
            "target",
            target_password_file,
            target_password_cmd,
            target_ca_file,
            insecure,
            timeout,
        )
        src.check_secret()
        dst.check_secret()
        with _connected(src.store()) as a, _connected(dst.store()) as b:
            show = (lambda name: _err(f"verifying {name}")) if sys.stderr.isatty() else None
            checks = run_verify(a, b, folder_map, message_filter, by, show)
        if json_output:
            typer.echo(json.dumps(verify_json(checks), ensure_ascii=False))
        else:
            typer.echo(verify_table(checks, list_missing))
        totals = summary(checks)
        bad = totals["missing"] or totals["errors"]
        raise typer.Exit(int(ExitStatus.PARTIAL if bad else ExitStatus.OK))


@contextmanager
def _connected(store: Source | Target) -> Iterator[Any]:
    try:
        store.connect()
        yield store
    finally:
        store.close()


# -- folders ---------------------------------------------------------------------------------


@app.command()
def folders(
    endpoint: Annotated[str, typer.Argument(help="imaps://USER@HOST, mbox:PATH, ...")],
    target: Annotated[
        str | None,
        typer.Option("--target", help="Also show the name each folder would get in this target."),
    ] = None,
    folder: FolderOpt = None,
    exclude: ExcludeOpt = None,
    map_: MapOpt = None,
    into: IntoOpt = None,
    to_folder: ToFolderOpt = None,
    json_output: JsonOpt = False,
    password_file: PwFile = None,
    password_cmd: PwCmd = None,
    ca_file: CaOpt = None,
    target_password_file: DstPwFile = None,
    target_password_cmd: DstPwCmd = None,
    target_ca_file: DstCa = None,
    insecure: InsecureOpt = False,
    timeout: TimeoutOpt = 60.0,
    debug: DebugOpt = False,
) -> None:
    """List folders with message count, size and special use (and, with --target, where `copy`
    would put each one). The password comes from MIGRATOR_SOURCE_PASSWORD or the options.

    Example: migrator folders imaps://alice@mail.example.org --target maildir:/srv/alice
    """
    with _errors(debug):
        from migrator.folders import special_use
        from migrator.model import display_name
        from migrator.report import human_bytes, table

        folder_map = _folder_map(folder, exclude, map_, into, to_folder)
        src = _side(
            endpoint, "source", "source", password_file, password_cmd, ca_file, insecure, timeout
        )
        src.check_secret()
        rows: list[dict[str, Any]] = []
        with _connected(src.store()) as store:
            listed = store.list_folders()
            targets: dict[Any, str] = {}
            if target is not None:
                dst = _side(
                    target,
                    "target",
                    "target",
                    target_password_file,
                    target_password_cmd,
                    target_ca_file,
                    insecure,
                    timeout,
                )
                dst.check_secret()
                with _connected(dst.store()) as tstore:
                    plans = folder_map.plan(listed, tstore.list_folders(), tstore.delimiter)
                targets = {p.source.path: p.target_name for p in plans}
            for f in listed:
                selected = folder_map.selected(f)
                count = size = 0
                if f.selectable:
                    count = store.open_folder(f.path).count
                    size = sum(r.size for r in store.list_messages(f.path))
                rows.append(
                    {
                        "folder": display_name(f.path),
                        "messages": count,
                        "bytes": size,
                        "special_use": special_use(f),
                        "selectable": f.selectable,
                        "selected": selected and f.selectable,
                        "target": targets.get(f.path),
                    }
                )
        if json_output:
            typer.echo(json.dumps({"folders": rows}, ensure_ascii=False))
            return
        head = ["folder", "messages", "size", "use"] + (["target"] if target else [])
        body = []
        for r in rows:
            line = [
                r["folder"],
                str(r["messages"]),
                human_bytes(r["bytes"]),
                (r["special_use"] or "").lstrip("\\")
                or ("(no mail)" if not r["selectable"] else ""),
            ]
            if target:
                line.append(r["target"] or "(not copied)")
            body.append(line)
        typer.echo(table(head, body))
        total = sum(r["messages"] for r in rows)
        typer.echo(
            f"{len(rows)} folders, {total} messages, {human_bytes(sum(r['bytes'] for r in rows))}"
        )


# -- status ----------------------------------------------------------------------------------


@app.command()
def status(
    source: Annotated[str | None, typer.Argument(help="The copy's SOURCE (with TARGET).")] = None,
    target: Annotated[str | None, typer.Argument(help="The copy's TARGET.")] = None,
    state: Annotated[Path | None, typer.Option("--state", help="The journal to read.")] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show what a checkpoint journal holds: per folder copied, skipped, failed and pending,
    each failure with the server's reason, and whether the last run finished.

    Example: migrator status imaps://alice@old.example.org imaps://alice@new.example.org
    """
    with _errors(debug):
        from migrator.checkpoint import Journal
        from migrator.endpoints import parse_endpoint
        from migrator.report import status_data, status_text

        if state is None:
            if source is None or target is None:
                raise ConfigError("status: give SOURCE and TARGET as for copy, or --state PATH")
            state = default_state_path(parse_endpoint(source), parse_endpoint(target))
        if not state.exists():
            raise ConfigError(f"no journal at {state}: nothing was copied with these endpoints")
        journal = Journal.in_memory(state)
        data = status_data(journal)
        data["journal"] = str(state)
        journal.close()
        if json_output:
            typer.echo(json.dumps(data, ensure_ascii=False))
        else:
            typer.echo(status_text(data))


# -- check -----------------------------------------------------------------------------------


@app.command()
def check(
    endpoint: Annotated[str, typer.Argument(help="imaps://USER@HOST, pop3s://USER@HOST, ...")],
    password_file: PwFile = None,
    password_cmd: PwCmd = None,
    ca_file: CaOpt = None,
    insecure: InsecureOpt = False,
    timeout: TimeoutOpt = 30.0,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Connect and log in; show the server greeting, the capabilities that matter, TLS version
    and certificate. The password comes from MIGRATOR_SOURCE_PASSWORD or the options.

    Example: migrator check imaps://alice@mail.example.org
    """
    with _errors(debug):
        side = _side(
            endpoint, "source", "source", password_file, password_cmd, ca_file, insecure, timeout
        )
        side.check_secret()
        with _connected(side.store()) as store:
            facts = store.describe()
        if json_output:
            typer.echo(json.dumps(dict(facts), ensure_ascii=False))
        else:
            width = max(len(k) for k, _ in facts)
            for key, value in facts:
                typer.echo(f"{key.ljust(width)}  {value}")


def main() -> None:
    app()
