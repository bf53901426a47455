"""The command line: parses arguments, builds objects, prints. Nothing here speaks a protocol.

Heavy modules (imapclient, sqlite3, tqdm, the stores) are imported inside the commands, so that
`migrator --help` and `--version` start fast.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

# typer imports rich (about 0.15 s) whenever it is installed, only to colour its help and
# tracebacks; migrator prints plain text, and `migrator --help` must start fast. An entry of None
# makes `import rich` fail, so typer falls back to plain click output.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

import click  # noqa: E402
import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from migrator import __version__  # noqa: E402
from migrator.errors import ConfigError, ExitStatus, MigratorError, did_you_mean  # noqa: E402
from migrator.ui.console import err as _err  # noqa: E402

if TYPE_CHECKING:
    from migrator.account import Side
    from migrator.stores.base import Source, Target


class _Commands(TyperGroup):
    """Click's group, with a "did you mean" for a mistyped command name."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            ctx.fail(f"No such command {name!r}{did_you_mean(name, self.list_commands(ctx))}.")
        return super().resolve_command(ctx, args)


#: -h beside --help, for every command (click hands the setting down to subcommands).
_CONTEXT = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(
    name="migrator",
    cls=_Commands,
    context_settings=_CONTEXT,
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
        typer.Option(
            "--version", "-V", callback=_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Move email between IMAP, POP3, mbox and Maildir; interrupt it any time and run it again.

    Endpoints: imaps://USER@HOST[:PORT], imap://USER@HOST (STARTTLS), pop3s://USER@HOST,
    pop3://USER@HOST (STLS), mbox:PATH, maildir:PATH. Passwords come from
    MIGRATOR_SOURCE_PASSWORD / MIGRATOR_TARGET_PASSWORD, --*-password-file, --*-password-cmd,
    the system keyring, or a prompt; never from the URL.

    \b
    Example:
      migrator copy imaps://alice@old.example.org imaps://alice@new.example.org
    """


# -- building objects -----------------------------------------------------------------------


def _open_side(text: str, role: str, side: str | None = None, **how: Any) -> Side:
    """The library's open_side with this process's environment and terminal; its warnings (no
    TLS, --insecure) shown at once."""
    from migrator.account import open_side

    opened = open_side(text, role, os.environ, side=side, interactive=sys.stdin.isatty(), **how)
    for notice in opened.notices:
        _err(f"migrator: warning: {notice}")
    return opened


def _fail(exc: BaseException, debug: bool) -> NoReturn:
    if debug:
        import traceback

        _err("".join(traceback.format_exception(exc)))
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
SharedOpt = Annotated[
    bool,
    typer.Option(
        "--include-shared",
        help="Also copy other users' and shared folders (IMAP namespaces), under target folders "
        "named 'Other Users' and 'Shared Folders'.",
    ),
]
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


def _complete_auth(incomplete: str) -> list[str]:
    """Shell completion for --*-auth: the mechanisms migrator knows."""
    from migrator.credentials import AUTH_CHOICES

    return [choice for choice in AUTH_CHOICES if choice.startswith(incomplete.lower())]


def _complete_endpoint(incomplete: str) -> list[str]:
    """Shell completion for an endpoint: the schemes, and PROFILE: for every provider profile."""
    from migrator.account import profile_catalog
    from migrator.endpoints import SCHEMES

    try:
        profiles = [f"{name}:" for name in profile_catalog().names()]
    except MigratorError:  # a broken profile directory: complete what is known
        profiles = []
    return [word for word in (*SCHEMES, *profiles) if word.startswith(incomplete.lower())]


def _complete_profile(incomplete: str) -> list[str]:
    from migrator.account import profile_catalog

    return [name for name in profile_catalog().names() if name.startswith(incomplete.lower())]


_AUTH_HELP = "How to log in: password, plain, login, oauth2, xoauth2 or oauthbearer."
SrcTokCmd = Annotated[
    str | None, typer.Option(help="Its output is the source's OAuth2 access token (every login).")
]
DstTokCmd = Annotated[
    str | None, typer.Option(help="Its output is the target's OAuth2 access token (every login).")
]
SrcAuth = Annotated[
    str | None,
    typer.Option("--source-auth", help=_AUTH_HELP, autocompletion=_complete_auth),
]
DstAuth = Annotated[
    str | None,
    typer.Option("--target-auth", help=_AUTH_HELP, autocompletion=_complete_auth),
]
SrcProfile = Annotated[
    str | None,
    typer.Option(
        "--source-profile",
        help="Apply this provider profile to an imaps:// source.",
        autocompletion=_complete_profile,
    ),
]
DstProfile = Annotated[
    str | None,
    typer.Option(
        "--target-profile",
        help="Apply this provider profile to an imaps:// target.",
        autocompletion=_complete_profile,
    ),
]


def _flag_names(names: list[str]) -> frozenset[str]:
    """--flags as the engine takes them (what `copy` does through copy_options)."""
    from migrator.account import option_label, parse_flags

    return parse_flags(names, option_label("flags"))


# -- copy -----------------------------------------------------------------------------------


def _copy_command(
    source: Annotated[
        str,
        typer.Argument(
            help="Where the mail is: imaps://USER@HOST, mbox:PATH",
            autocompletion=_complete_endpoint,
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(
            help="Where it goes: imaps://USER@HOST, maildir:PATH", autocompletion=_complete_endpoint
        ),
    ],
    folder: FolderOpt = None,
    exclude: ExcludeOpt = None,
    map_: MapOpt = None,
    into: IntoOpt = None,
    to_folder: ToFolderOpt = None,
    include_shared: SharedOpt = False,
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
        int,
        typer.Option(
            "--workers",
            min=1,
            max=32,
            help="Folders copied at once, each on its own connections (three keep an IMAP "
            "target busy while it syncs each message to disk).",
        ),
    ] = 3,
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
    source_oauth2_token_cmd: SrcTokCmd = None,
    target_oauth2_token_cmd: DstTokCmd = None,
    source_auth: SrcAuth = None,
    target_auth: DstAuth = None,
    source_profile: SrcProfile = None,
    target_profile: DstProfile = None,
    max_bytes_per_second: Annotated[
        str | None,
        typer.Option(
            "--max-bytes-per-second", help="Copy no faster than this (500K, 2M), all workers."
        ),
    ] = None,
    all_mail: Annotated[
        str | None,
        typer.Option(
            "--all-mail",
            help="Gmail: copy All Mail alone, into this target folder, instead of the labels.",
        ),
    ] = None,
    debug: DebugOpt = False,
    mirror: bool = False,
    max_delete: int | None = None,
) -> None:
    """`copy`, and with ``mirror`` `sync` (registered below with their own help)."""
    with _errors(debug):
        from migrator.account import (
            CopyJob,
            RunSettings,
            apply_profiles,
            copy_options,
            default_state_path,
            option_label,
            run_copy,
        )
        from migrator.ui.progress import make_reporter
        from migrator.ui.report import copy_json, copy_table

        job = CopyJob(
            source,
            target,
            folder=tuple(folder or ()),
            exclude=tuple(exclude or ()),
            map=tuple(map_ or ()),
            into=into,
            to_folder=to_folder,
            include_shared=include_shared,
            since=since,
            before=before,
            older_than=older_than,
            max_size=max_size,
            flags=tuple(flags or ()),
            delete_source=delete_source,
        )
        settings = RunSettings(workers=workers, retries=retries, timeout=timeout)
        options = copy_options(job, settings, dry_run=dry_run, label=option_label)
        if mirror and delete_source:
            raise ConfigError(
                "sync mirrors the source, and --delete-source empties it: archive with "
                "copy --delete-source instead"
            )
        options.mirror, options.max_delete = mirror, max_delete
        src = _open_side(
            source,
            "source",
            password_file=source_password_file,
            password_cmd=source_password_cmd,
            ca_file=source_ca_file,
            insecure=insecure,
            timeout=timeout,
            oauth2_token_cmd=source_oauth2_token_cmd,
            profile_name=source_profile,
            auth=source_auth,
        )
        dst = _open_side(
            target,
            "target",
            password_file=target_password_file,
            password_cmd=target_password_cmd,
            ca_file=target_ca_file,
            insecure=insecure,
            timeout=timeout,
            oauth2_token_cmd=target_oauth2_token_cmd,
            profile_name=target_profile,
            auth=target_auth,
        )
        src.check_secret()
        dst.check_secret()
        state_path = state or default_state_path(src.endpoint, dst.endpoint)
        notices = apply_profiles(
            options,
            src,
            dst,
            state_path,
            all_mail=all_mail,
            max_bytes_per_second=max_bytes_per_second,
            label=option_label,
        )
        reporter = make_reporter(quiet, json_output, log_file, os.environ.get("TERM"))
        for text in notices:
            reporter.notice(text)
        try:
            summary = run_copy(
                src.store,
                dst.store,
                str(src.endpoint),
                str(dst.endpoint),
                state_path,
                options,
                reporter,
            )
        finally:
            reporter.close()
        if json_output:
            typer.echo(json.dumps(copy_json(summary), ensure_ascii=False))
        elif not quiet:
            typer.echo(copy_table(summary))
        if summary.interrupted:
            _err(
                "migrator: interrupted; what was copied is recorded: run the same command to finish"
            )
            raise typer.Exit(int(ExitStatus.INTERRUPTED))
        if summary.stopped:
            _err(f"migrator: stopped: {summary.stopped}")
        raise typer.Exit(int(ExitStatus.OK if summary.ok else ExitStatus.PARTIAL))


def _register_copy_command(name: str, doc: str, extra: Sequence[inspect.Parameter]) -> None:
    """`copy` and `sync` take the same options (sync adds --max-delete): one implementation,
    _copy_command, registered under each name with the parameters Typer should show."""
    shown = [
        p
        for p in inspect.signature(_copy_command, eval_str=True).parameters.values()
        if p.name not in ("mirror", "max_delete")
    ]
    shown += extra
    mirror = name == "sync"

    def command(**params: Any) -> None:
        _copy_command(**params, mirror=mirror)

    command.__signature__ = inspect.Signature(shown)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in shown}
    command.__doc__ = doc
    command.__name__ = name
    app.command(name)(command)


_register_copy_command(
    "copy",
    """Copy every selected message from SOURCE to TARGET, resumably. Flag changes made at the
    source since the last pass follow; nothing is ever removed from TARGET.

    Example: migrator copy imaps://alice@old.example.org imaps://alice@new.example.org
    """,
    [],
)
_register_copy_command(
    "sync",
    """Copy as `copy` does, then mirror: what this job copied and SOURCE no longer holds is
    removed from TARGET, and what moved at SOURCE is moved on TARGET (not uploaded again).
    Mail this job did not copy is never touched.

    Example: migrator sync imaps://alice@old.example.org imaps://alice@new.example.org --dry-run
    """,
    [
        inspect.Parameter(
            "max_delete",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None,
            annotation=Annotated[
                int | None,
                typer.Option(
                    "--max-delete",
                    min=0,
                    help="Allow removing up to N messages from a folder even when that is more "
                    "than half of what was copied there (the guard against a source that looks "
                    "empty by mistake).",
                ),
            ],
        )
    ],
)


# -- verify ---------------------------------------------------------------------------------


@app.command()
def verify(
    source: Annotated[
        str, typer.Argument(help="The endpoint copied from.", autocompletion=_complete_endpoint)
    ],
    target: Annotated[
        str, typer.Argument(help="The endpoint copied to.", autocompletion=_complete_endpoint)
    ],
    folder: FolderOpt = None,
    exclude: ExcludeOpt = None,
    map_: MapOpt = None,
    into: IntoOpt = None,
    to_folder: ToFolderOpt = None,
    include_shared: SharedOpt = False,
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
    ignore_flags: Annotated[
        bool,
        typer.Option(
            "--ignore-flags",
            help="Compare presence only: flag differences are neither listed nor an error.",
        ),
    ] = False,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state",
            help="The copy's journal: each folder is compared with the target folder it was "
            "copied to (default: the journal of these endpoints, when there is one).",
        ),
    ] = None,
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
    Exits 1 when anything is missing or flags differ (--ignore-flags: presence only).

    Example: migrator verify imaps://alice@old.example.org imaps://alice@new.example.org --list
    """
    with _errors(debug):
        from migrator.account import folder_map as make_folder_map
        from migrator.account import message_filter as make_message_filter
        from migrator.account import option_label, profile_folders
        from migrator.ui.report import verify_json, verify_table
        from migrator.verify import BY, summary
        from migrator.verify import verify as run_verify

        if by not in BY:
            raise ConfigError(f"--by {by!r}: use one of {', '.join(BY)}")
        folder_map = make_folder_map(
            folder or (), exclude or (), map_ or (), into, to_folder, option_label, include_shared
        )
        message_filter = make_message_filter(since, before, older_than, max_size, option_label)
        src = _open_side(
            source,
            "source",
            password_file=source_password_file,
            password_cmd=source_password_cmd,
            ca_file=source_ca_file,
            insecure=insecure,
            timeout=timeout,
        )
        # the target is read, as a source, with the target's options and variables
        dst = _open_side(
            target,
            "source",
            side="target",
            password_file=target_password_file,
            password_cmd=target_password_cmd,
            ca_file=target_ca_file,
            insecure=insecure,
            timeout=timeout,
        )
        folder_map = profile_folders(folder_map, src.profile, dst.profile)[0]
        src.check_secret()
        dst.check_secret()
        from migrator.account import default_state_path
        from migrator.checkpoint import Journal

        recorded = None
        state = state or default_state_path(src.endpoint, dst.endpoint)
        if state.exists():
            journal = Journal.in_memory(state)
            recorded = journal.folder_targets()
            journal.close()
        with _connected(src.store()) as a, _connected(dst.store()) as b:
            show = (lambda name: _err(f"verifying {name}")) if sys.stderr.isatty() else None
            checks = run_verify(
                a,
                b,
                folder_map,
                message_filter,
                by,
                show,
                compare_flags=not ignore_flags,
                recorded=recorded,
            )
        if json_output:
            typer.echo(json.dumps(verify_json(checks), ensure_ascii=False))
        else:
            typer.echo(verify_table(checks, list_missing))
        totals = summary(checks)
        bad = totals["missing"] or totals["errors"] or totals["flag_differences"]
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
    endpoint: Annotated[
        str,
        typer.Argument(help="imaps://USER@HOST, mbox:PATH, ...", autocompletion=_complete_endpoint),
    ],
    target: Annotated[
        str | None,
        typer.Option("--target", help="Also show the name each folder would get in this target."),
    ] = None,
    folder: FolderOpt = None,
    exclude: ExcludeOpt = None,
    map_: MapOpt = None,
    into: IntoOpt = None,
    to_folder: ToFolderOpt = None,
    include_shared: SharedOpt = False,
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
        from migrator.account import folder_map as make_folder_map
        from migrator.account import option_label
        from migrator.folders import special_use
        from migrator.model import display_name
        from migrator.ui.report import FolderRow, folders_table

        folder_map = make_folder_map(
            folder or (), exclude or (), map_ or (), into, to_folder, option_label, include_shared
        )
        src = _open_side(
            endpoint,
            "source",
            password_file=password_file,
            password_cmd=password_cmd,
            ca_file=ca_file,
            insecure=insecure,
            timeout=timeout,
        )
        src.check_secret()
        rows: list[FolderRow] = []
        with _connected(src.store()) as store:
            listed = store.list_folders()
            targets: dict[Any, str] = {}
            if target is not None:
                dst = _open_side(
                    target,
                    "target",
                    password_file=target_password_file,
                    password_cmd=target_password_cmd,
                    ca_file=target_ca_file,
                    insecure=insecure,
                    timeout=timeout,
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
                        "selected": selected
                        and f.selectable
                        and (f.namespace is None or include_shared),
                        "namespace": f.namespace or "personal",
                        "target": targets.get(f.path),
                    }
                )
        if json_output:
            typer.echo(json.dumps({"folders": rows}, ensure_ascii=False))
            return
        typer.echo(folders_table(rows, with_target=bool(target)))


# -- status ----------------------------------------------------------------------------------


@app.command()
def status(
    source: Annotated[
        str | None,
        typer.Argument(help="The copy's SOURCE (with TARGET).", autocompletion=_complete_endpoint),
    ] = None,
    target: Annotated[
        str | None, typer.Argument(help="The copy's TARGET.", autocompletion=_complete_endpoint)
    ] = None,
    state: Annotated[Path | None, typer.Option("--state", help="The journal to read.")] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show what a checkpoint journal holds: per folder copied, skipped, failed and pending,
    each failure with the server's reason, and whether the last run finished.

    Example: migrator status imaps://alice@old.example.org imaps://alice@new.example.org
    """
    with _errors(debug):
        from migrator.account import default_state_path
        from migrator.checkpoint import Journal
        from migrator.endpoints import parse_endpoint
        from migrator.ui.report import status_data, status_text

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
    endpoint: Annotated[
        str,
        typer.Argument(
            help="imaps://USER@HOST, pop3s://USER@HOST, ...", autocompletion=_complete_endpoint
        ),
    ],
    password_file: PwFile = None,
    password_cmd: PwCmd = None,
    ca_file: CaOpt = None,
    insecure: InsecureOpt = False,
    timeout: TimeoutOpt = 30.0,
    json_output: JsonOpt = False,
    oauth2_token_cmd: Annotated[
        str | None, typer.Option("--oauth2-token-cmd", help="Its output is the access token.")
    ] = None,
    auth: Annotated[str | None, typer.Option("--auth", help=_AUTH_HELP)] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Apply this provider profile.")
    ] = None,
    debug: DebugOpt = False,
) -> None:
    """Connect and log in; show the server greeting, the capabilities that matter, TLS version
    and certificate. The password comes from MIGRATOR_SOURCE_PASSWORD or the options (an OAuth2
    token from MIGRATOR_SOURCE_OAUTH2_TOKEN or --oauth2-token-cmd).

    Example: migrator check imaps://alice@mail.example.org
    """
    with _errors(debug):
        side = _open_side(
            endpoint,
            "source",
            password_file=password_file,
            password_cmd=password_cmd,
            ca_file=ca_file,
            insecure=insecure,
            timeout=timeout,
            oauth2_token_cmd=oauth2_token_cmd,
            profile_name=profile,
            auth=auth,
        )
        side.check_secret()
        with _connected(side.store()) as store:
            facts = store.describe()
        if json_output:
            typer.echo(json.dumps(dict(facts), ensure_ascii=False))
        else:
            from migrator.ui.report import facts_text

            typer.echo(facts_text(facts))


# -- profiles --------------------------------------------------------------------------------

profiles_app = typer.Typer(
    name="profiles",
    help="Provider profiles (gmail, outlook, ...): the shipped ones and your own.\n\n"
    "Example: migrator profiles show gmail",
    cls=_Commands,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(profiles_app)


@profiles_app.command("list")
def profiles_list(json_output: JsonOpt = False, debug: DebugOpt = False) -> None:
    """List the provider profiles, and whether each is shipped or your own. Yours go in the
    directory shown at the end; one named like a shipped profile overrides its settings.

    Example: migrator profiles list
    """
    with _errors(debug):
        from migrator.account import profile_catalog
        from migrator.ui.report import profiles_json, profiles_text

        catalog = profile_catalog()
        if json_output:
            typer.echo(json.dumps(profiles_json(catalog), ensure_ascii=False))
        else:
            typer.echo(profiles_text(catalog))


@profiles_app.command("show")
def profiles_show(
    name: Annotated[
        str,
        typer.Argument(help="The profile: gmail, outlook, ...", autocompletion=_complete_profile),
    ],
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show a profile's settings, each with the file it comes from and the note saying where its
    figure comes from.

    Example: migrator profiles show gmail
    """
    with _errors(debug):
        from migrator.account import profile_catalog
        from migrator.ui.report import profile_json, profile_text

        catalog = profile_catalog()
        profile = catalog.get(name)
        if json_output:
            typer.echo(json.dumps(profile_json(catalog, profile), ensure_ascii=False))
        else:
            typer.echo(profile_text(catalog, profile))


# -- auth ------------------------------------------------------------------------------------

auth_app = typer.Typer(
    name="auth",
    help="OAuth2 sign-in for providers that want it (Gmail, Microsoft 365).\n\n"
    "Example: migrator auth login gmail:alice@gmail.com",
    cls=_Commands,
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(auth_app)


@auth_app.command("login")
def auth_login(
    endpoint: Annotated[
        str,
        typer.Argument(
            help="PROFILE:USER, e.g. gmail:alice@gmail.com", autocompletion=_complete_endpoint
        ),
    ],
    client_id: Annotated[
        str | None,
        typer.Option("--client-id", help="Your app's client id (see README: OAuth2)."),
    ] = None,
    client_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--client-secret-file",
            help="Your app's client secret, if it has one (Google desktop apps do); or "
            "MIGRATOR_OAUTH2_CLIENT_SECRET.",
        ),
    ] = None,
    device: Annotated[
        bool, typer.Option("--device", help="Sign in with a code on another device.")
    ] = False,
    browser: Annotated[
        bool, typer.Option("--browser", help="Sign in through a browser on this machine.")
    ] = False,
    no_open: Annotated[
        bool, typer.Option("--no-open", help="Print the sign-in link; do not open a browser.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", min=10, help="Seconds to wait for the sign-in.")
    ] = 300.0,
    debug: DebugOpt = False,
) -> None:
    """Sign in to a provider with OAuth2 and keep the refresh token in the system keyring;
    `copy` then gets access tokens from it by itself. Microsoft uses a code typed on a web
    page (device flow); Google a browser and a redirect to this machine (PKCE).

    Example: migrator auth login gmail:alice@gmail.com --client-id 1234.apps.googleusercontent.com
    """
    with _errors(debug):
        import webbrowser

        from migrator.account import profile_catalog
        from migrator.endpoints import ProfileEndpoint, parse_endpoint
        from migrator.oauth import (
            Client,
            Endpoints,
            KeyringStore,
            authorization_code_flow,
            device_code_flow,
            save_login,
            store_key,
        )

        target = parse_endpoint(endpoint)
        if not isinstance(target, ProfileEndpoint):
            raise ConfigError(f"{endpoint}: give PROFILE:USER, e.g. gmail:alice@gmail.com")
        profile = profile_catalog().get(target.profile)
        settings = profile.oauth2
        if settings is None or not profile.oauth2_capable:
            raise ConfigError(
                f"profile {profile.name} does not use OAuth2; it takes: "
                + ", ".join(profile.auth_methods)
            )
        cid = client_id or settings.client_id
        if not cid:
            raise ConfigError(
                "--client-id: register an app with the provider and give its client id "
                "(README, 'OAuth2' explains how), or put client_id in your own profile"
            )
        secret = None
        if client_secret_file is not None:
            try:
                secret = client_secret_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"--client-secret-file {client_secret_file}: {exc}") from None
        secret = secret or os.environ.get("MIGRATOR_OAUTH2_CLIENT_SECRET") or None
        client = Client(cid, secret)
        urls = Endpoints(
            settings.token_url, settings.scopes, settings.authorize_url, settings.device_url
        )
        flow = "device" if device else "code" if browser else settings.flow
        if flow == "device":
            tokens = device_code_flow(urls, client, show=lambda text: _err(f"migrator: {text}"))
        else:

            def open_url(url: str) -> None:
                _err(f"migrator: sign in on this page (waiting for it to come back):\n{url}")
                if not no_open:
                    webbrowser.open(url)

            tokens = authorization_code_flow(urls, client, target.user, open_url, timeout)
        key = store_key(profile.name, target.user)
        save_login(KeyringStore(), key, urls, client, tokens)
        typer.echo(
            f"signed in as {target.user}; the refresh token is in the system keyring "
            f"(service migrator-oauth2, user {key})"
        )


# -- batch -----------------------------------------------------------------------------------


@app.command()
def batch(
    manifest: Annotated[
        Path, typer.Argument(help="CSV with a header, or TOML: one account per row.")
    ],
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=4096, help="Accounts copied at once.")
    ] = 4,
    max_per_host: Annotated[
        int | None,
        typer.Option(
            "--max-per-host",
            min=1,
            help="Accounts at once on one server host (default: the connection limit of "
            "the provider profile serving that host, else 4).",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Where the batch ledger and every account's journal live (shared by all "
            "workers of a cluster). Default: the user's state directory, batch/MANIFEST-NAME.",
            show_default=False,
        ),
    ] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster",
            help="A Dask scheduler to run the accounts on: tcp://HOST:8786 or tls://HOST:8786 "
            "(default: in this process).",
            show_default=False,
        ),
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also run the accounts that failed before.")
    ] = False,
    only_failed: Annotated[
        bool, typer.Option("--only-failed", help="Run only the accounts that failed before.")
    ] = False,
    refresh: Annotated[
        bool,
        typer.Option(
            "--refresh",
            help="Also run the accounts that finished before (copies only what is new).",
        ),
    ] = False,
    workers: Annotated[
        int, typer.Option("--workers", min=1, max=32, help="Folders copied at once per account.")
    ] = 2,
    retries: Annotated[
        int, typer.Option("--retries", min=0, help="Reconnects after a dropped connection.")
    ] = 5,
    timeout: TimeoutOpt = 60.0,
    json_output: JsonOpt = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the per-account table to this CSV file."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Copy many accounts listed in a manifest, concurrently, here or on a Dask cluster.

    Each row: source and target endpoints (PROFILE:USER too); where each side's password or
    token is found (source_password_env / _file / _cmd, source_oauth2_token_cmd, target_...; never
    the secret); the options of `copy`
    (folder, exclude, map, into, to_folder, since, before, older_than, max_size, ...). Rerun the
    same command after an interruption: finished accounts are skipped, the others resume.

    Example: migrator batch accounts.csv --jobs 8 --cluster tcp://10.0.0.5:8786
    """
    with _errors(debug):
        import logging
        import warnings

        from migrator.account import RunSettings
        from migrator.batch import (
            BatchSettings,
            ManifestError,
            Selection,
            default_state_dir,
            load_manifest,
            run_batch,
        )
        from migrator.ui.batch import make_observer, results_json, results_table, write_report

        if not debug:
            # Dask configures its loggers when it is imported (later, by run_batch), and warns
            # through `warnings` too: neither belongs on the terminal (migrator logs nothing).
            logging.disable(logging.CRITICAL)
            warnings.filterwarnings("ignore", module=r"(distributed|dask|tornado|asyncio)\b")
        try:
            loaded = load_manifest(manifest, env=None if cluster else os.environ)
        except ManifestError as exc:
            for problem in exc.problems:
                _err(f"migrator: error: {problem}")
            raise typer.Exit(int(ExitStatus.USAGE)) from None
        for warning in loaded.warnings:
            _err(f"migrator: warning: {warning}")
        settings = BatchSettings(
            state_dir=state_dir or default_state_dir(manifest),
            jobs=jobs,
            max_per_host=max_per_host,
            cluster=cluster,
            run=RunSettings(workers=workers, retries=retries, timeout=timeout),
            selection=Selection(retry_failed, only_failed, refresh),
        )
        observer = make_observer(quiet, json_output, os.environ.get("TERM"))
        try:
            result = run_batch(loaded, settings, observer)
        finally:
            observer.close()
        if report is not None:
            write_report(report, result)
        if json_output:
            typer.echo(json.dumps(results_json(result), ensure_ascii=False))
        elif not quiet:
            typer.echo(results_table(result))
        if result.interrupted:
            _err("migrator: interrupted; run the same command again to finish")
            raise typer.Exit(int(ExitStatus.INTERRUPTED))
        raise typer.Exit(int(ExitStatus.OK if result.ok else ExitStatus.PARTIAL))


def main() -> None:
    # One name in usage lines and completion, however it was started (`python -m migrator`).
    app(prog_name="migrator")
