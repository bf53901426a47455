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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

# typer imports rich (about 0.15 s) whenever it is installed, only to colour its help and
# tracebacks; migrator prints plain text, and `migrator --help` must start fast. An entry of None
# makes `import rich` fail, so typer falls back to plain click output.
sys.modules.setdefault("rich", None)  # type: ignore[arg-type]

import click  # noqa: E402
import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from migrator import __version__, options  # noqa: E402
from migrator.errors import ConfigError, ExitStatus, MigratorError, did_you_mean  # noqa: E402
from migrator.ui.console import err as _err  # noqa: E402

if TYPE_CHECKING:
    from migrator.account import Side, Terminal
    from migrator.batch import Manifest
    from migrator.folders import FolderMap
    from migrator.model import Folder
    from migrator.oauth import Client, Endpoints, Tokens
    from migrator.options import CopyJob, RunSettings
    from migrator.profiles import OAuth2Settings
    from migrator.stores.base import Source, Target
    from migrator.ui.report import FolderRow


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
    """Every command's frame: one clear line per error, exit codes as README's "Commands"
    gives them; SIGTERM and SIGHUP stop like Ctrl-C."""

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

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")]
#: `check` gives up sooner than a copy: it only logs in.
CHECK_TIMEOUT = 30.0


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


# -- the job's options, derived from their declaration (migrator/options.py) -------------------

_TYPES: dict[str, Any] = {
    options.TEXT: str | None,
    options.LIST: list[str] | None,
    options.BOOL: bool,
    options.PATH: Path | None,
    options.INT: int,
    options.FLOAT: float,
}
_COMPLETIONS = {"auth": _complete_auth, "profile": _complete_profile}
#: Both sides, each with its own options (--source-NAME, --target-NAME).
_BOTH = (("source", "source"), ("target", "target"))


def _option(name: str, kind: str, default: Any, **how: Any) -> inspect.Parameter:
    """One command line option, --NAME, as Typer reads it from a signature."""
    value_type = _TYPES[kind]
    if kind == options.INT and default is None:
        value_type = int | None
    if kind == options.LIST:
        how["show_default"] = False
    info = typer.Option("--" + name.replace("_", "-"), **how)
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=default,
        annotation=Annotated[value_type, info],
    )


def _job_options(
    command: str, sides: Sequence[tuple[str, str]], defaults: Mapping[str, Any]
) -> list[inspect.Parameter]:
    """The options `command` takes of a job (options.COMMAND_GROUPS), and of each side's login:
    ``sides`` pairs an option prefix ("" for a command with one endpoint) with the side."""
    groups = options.COMMAND_GROUPS[command]
    params = []
    for cls in (options.CopyJob, options.RunSettings):
        for name, opt in options.declared(cls):
            if opt.group in groups:
                bounds = {"min": opt.low, "max": opt.high}
                default = defaults.get(name, options.default_of(cls, name))
                more: dict[str, Any] = {k: v for k, v in bounds.items() if v is not None}
                params.append(_option(name, opt.kind, default, help=opt.help, **more))
    for prefix, side in sides:
        for side_opt in options.SIDE_OPTIONS:
            if side_opt.cli:
                name = f"{prefix}_{side_opt.name}" if prefix else side_opt.name
                text = side_opt.help.format(side=side) if prefix else side_opt.plain
                done = _COMPLETIONS.get(side_opt.complete or "")
                completion: dict[str, Any] = {"autocompletion": done} if done else {}
                params.append(_option(name, side_opt.kind, None, help=text, **completion))
    return params


def _takes_job(
    command: str,
    sides: Sequence[tuple[str, str]] = _BOTH,
    **defaults: Any,
) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A command function's signature, as Typer reads it: its own parameters, with the job's
    options of ``command`` (their ``defaults`` changed) in place of its ``**given``, after its
    arguments. The function gets them, by name, in ``given``."""

    def derive(fn: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(fn, eval_str=True).parameters.values()
        own_params = [p for p in own if p.kind != inspect.Parameter.VAR_KEYWORD]
        arguments = [p for p in own_params if _is_argument(p)]
        rest = [p for p in own_params if not _is_argument(p)]
        shown = [*arguments, *_job_options(command, sides, defaults), *rest]
        setattr(fn, "__signature__", inspect.Signature(shown, return_annotation=None))  # noqa: B010
        fn.__annotations__ = {p.name: p.annotation for p in shown}
        return fn

    return derive


def _is_argument(param: inspect.Parameter) -> bool:
    return any(
        isinstance(m, typer.models.ArgumentInfo)
        for m in getattr(param.annotation, "__metadata__", ())
    )


def _job(
    source: str, target: str, given: Mapping[str, Any], one_endpoint: bool = False, **fixed: Any
) -> tuple[CopyJob, RunSettings]:
    """The job and its run settings from a command's derived options; a command with one
    endpoint (``one_endpoint``: `folders`, `check`) names its side's options without prefix."""
    values = dict(given)
    if one_endpoint:
        unprefixed = {opt.name for opt in options.SIDE_OPTIONS}
        values = {(f"source_{k}" if k in unprefixed else k): v for k, v in values.items()}
    job, settings = options.job_from_values(source, target, values)
    return replace(job, **fixed), settings


def _terminal() -> Terminal:
    """How a job typed here runs: this process's environment, a prompt when stdin is a
    terminal, and each side's warnings (no TLS, --insecure) shown at once."""
    from migrator.account import Terminal

    return Terminal(
        os.environ, sys.stdin.isatty(), lambda notice: _err(f"migrator: warning: {notice}")
    )


# -- copy -----------------------------------------------------------------------------------

#: Exit codes by how a run ended (account.outcome).
_EXIT = {
    "done": ExitStatus.OK,
    "partial": ExitStatus.PARTIAL,
    "interrupted": ExitStatus.INTERRUPTED,
}


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
    state: Annotated[
        Path | None, typer.Option("--state", help="The checkpoint journal (SQLite) to use.")
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    log_file: Annotated[
        Path | None, typer.Option("--log-file", help="Append a line per folder and failure here.")
    ] = None,
    debug: DebugOpt = False,
    mirror: bool = False,
    **given: Any,
) -> None:
    """`copy`, and with ``mirror`` `sync` (registered below with their own help)."""
    with _errors(debug):
        from migrator.account import open_job, outcome
        from migrator.ui.progress import make_reporter
        from migrator.ui.report import copy_json, copy_table

        job, settings = _job(source, target, given, mirror=mirror)
        opened = open_job(job, settings, state, _terminal())
        reporter = make_reporter(quiet, json_output, log_file, os.environ.get("TERM"))
        try:
            summary = opened.run(reporter)
        finally:
            reporter.close()
        if json_output:
            typer.echo(json.dumps(copy_json(summary), ensure_ascii=False))
        elif not quiet:
            typer.echo(copy_table(summary))
        ended = outcome(summary)
        if ended == "interrupted":
            _err(
                "migrator: interrupted; what was copied is recorded: run the same command to finish"
            )
        elif summary.stopped:
            _err(f"migrator: stopped: {summary.stopped}")
        raise typer.Exit(int(_EXIT[ended]))


def _register_copy_command(name: str, doc: str) -> None:
    """`copy` and `sync` take the same options (sync adds --max-delete): one implementation,
    _copy_command, registered under each name with the parameters Typer should show."""
    mirror = name == "sync"

    def command(**params: Any) -> None:
        _copy_command(**params, mirror=mirror)

    own = inspect.signature(_copy_command, eval_str=True).parameters.values()
    shown = inspect.Signature([p for p in own if p.name != "mirror"])
    setattr(command, "__signature__", shown)  # noqa: B010
    command.__doc__ = doc
    command.__name__ = name
    app.command(name)(_takes_job(name)(command))


_register_copy_command(
    "copy",
    """Copy every selected message from SOURCE to TARGET, resumably. Flag changes made at the
    source since the last pass follow; nothing is ever removed from TARGET.

    Example: migrator copy imaps://alice@old.example.org imaps://alice@new.example.org
    """,
)
_register_copy_command(
    "sync",
    """Copy as `copy` does, then mirror: what this job copied and SOURCE no longer holds is
    removed from TARGET, and what moved at SOURCE is moved on TARGET (not uploaded again).
    Mail this job did not copy is never touched.

    Example: migrator sync imaps://alice@old.example.org imaps://alice@new.example.org --dry-run
    """,
)


# -- verify ---------------------------------------------------------------------------------


@app.command()
@_takes_job("verify")
def verify(
    source: Annotated[
        str, typer.Argument(help="The endpoint copied from.", autocompletion=_complete_endpoint)
    ],
    target: Annotated[
        str, typer.Argument(help="The endpoint copied to.", autocompletion=_complete_endpoint)
    ],
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
    debug: DebugOpt = False,
    **given: Any,
) -> None:
    """Compare SOURCE and TARGET folder by folder: counts, missing, extra, flag differences.
    Exits 1 when anything is missing or flags differ (--ignore-flags: presence only).

    Example: migrator verify imaps://alice@old.example.org imaps://alice@new.example.org --list
    """
    with _errors(debug):
        from migrator.account import folder_map as make_folder_map
        from migrator.account import message_filter as make_message_filter
        from migrator.account import open_sides, option_label, profile_folders
        from migrator.ui.report import verify_json, verify_table
        from migrator.verify import BY, summary
        from migrator.verify import verify as run_verify

        if by not in BY:
            raise ConfigError(f"--by {by!r}: use one of {', '.join(BY)}")
        job, settings = _job(source, target, given)
        folder_map = make_folder_map(job, option_label)
        message_filter = make_message_filter(job, option_label)
        # the target is read, as a source, with the target's options and variables
        src, dst = open_sides(job, settings.timeout, _terminal(), target_role="source")
        folder_map = profile_folders(folder_map, src.profile, dst.profile)[0]
        recorded = _recorded_targets(state, src, dst)
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


def _recorded_targets(state: Path | None, src: Side, dst: Side) -> dict[Any, Any] | None:
    """The target folder the copy's journal recorded for each source folder, if there is one."""
    from migrator.account import default_state_path
    from migrator.checkpoint import Journal

    state = state or default_state_path(src.endpoint, dst.endpoint)
    if not state.exists():
        return None
    journal = Journal.in_memory(state)
    try:
        return journal.folder_targets()
    finally:
        journal.close()


@contextmanager
def _connected(store: Source | Target) -> Iterator[Any]:
    try:
        store.connect()
        yield store
    finally:
        store.close()


# -- folders ---------------------------------------------------------------------------------


@app.command()
@_takes_job("folders", (("", "source"), ("target", "target")))
def folders(
    endpoint: Annotated[
        str,
        typer.Argument(help="imaps://USER@HOST, mbox:PATH, ...", autocompletion=_complete_endpoint),
    ],
    target: Annotated[
        str | None,
        typer.Option("--target", help="Also show the name each folder would get in this target."),
    ] = None,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
    **given: Any,
) -> None:
    """List folders with message count, size and special use (and, with --target, where `copy`
    would put each one). The password comes from MIGRATOR_SOURCE_PASSWORD or the options.

    Example: migrator folders imaps://alice@mail.example.org --target maildir:/srv/alice
    """
    with _errors(debug):
        from migrator.account import folder_map as make_folder_map
        from migrator.account import job_side_of, option_label
        from migrator.ui.report import folders_table

        job, settings = _job(endpoint, target or "", given, one_endpoint=True)
        folder_map = make_folder_map(job, option_label)
        src = job_side_of(job, "source", settings.timeout, _terminal())
        src.check_secret()
        with _connected(src.store()) as store:
            listed = store.list_folders()
            targets: dict[Any, str] = {}
            if target is not None:
                dst = job_side_of(job, "target", settings.timeout, _terminal())
                dst.check_secret()
                with _connected(dst.store()) as tstore:
                    plans = folder_map.plan(listed, tstore.list_folders(), tstore.delimiter)
                targets = {p.source.path: p.target_name for p in plans}
            rows = _folder_rows(store, listed, folder_map, targets)
        if json_output:
            typer.echo(json.dumps({"folders": rows}, ensure_ascii=False))
            return
        typer.echo(folders_table(rows, with_target=bool(target)))


def _folder_rows(
    store: Source, listed: Sequence[Folder], folder_map: FolderMap, targets: Mapping[Any, str]
) -> list[FolderRow]:
    """What `folders` shows of each folder: its count and size (read from ``store``), special
    use, whether the job selects it, and where it would go (``targets``)."""
    from migrator.folders import special_use
    from migrator.model import display_name

    rows: list[FolderRow] = []
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
                and (f.namespace is None or folder_map.include_shared),
                "namespace": f.namespace or "personal",
                "target": targets.get(f.path),
            }
        )
    return rows


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
@_takes_job("check", (("", "source"),), timeout=CHECK_TIMEOUT)
def check(
    endpoint: Annotated[
        str,
        typer.Argument(
            help="imaps://USER@HOST, pop3s://USER@HOST, ...", autocompletion=_complete_endpoint
        ),
    ],
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
    **given: Any,
) -> None:
    """Connect and log in; show the server greeting, the capabilities that matter, TLS version
    and certificate. The password comes from MIGRATOR_SOURCE_PASSWORD or the options (an OAuth2
    token from MIGRATOR_SOURCE_OAUTH2_TOKEN or --oauth2-token-cmd).

    Example: migrator check imaps://alice@mail.example.org
    """
    with _errors(debug):
        from migrator.account import job_side_of

        job, settings = _job(endpoint, "", given, one_endpoint=True)
        side = job_side_of(job, "source", settings.timeout, _terminal())
        side.check_secret()
        with _connected(side.store()) as store:
            facts = store.describe()
        if json_output:
            typer.echo(json.dumps(dict(facts), ensure_ascii=False))
        else:
            from migrator.ui.report import facts_text

            typer.echo(facts_text(facts))


# -- profiles --------------------------------------------------------------------------------


def _group(name: str, help: str) -> typer.Typer:
    """A group of commands (`migrator NAME ...`), with the top level's "did you mean"."""
    group = typer.Typer(
        name=name, help=help, cls=_Commands, no_args_is_help=True, rich_markup_mode=None
    )
    app.add_typer(group)
    return group


profiles_app = _group(
    "profiles",
    "Provider profiles (gmail, outlook, ...): the shipped ones and your own.\n\n"
    "Example: migrator profiles show gmail",
)


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

auth_app = _group(
    "auth",
    "OAuth2 sign-in for providers that want it (Gmail, Microsoft 365).\n\n"
    "Example: migrator auth login gmail:alice@gmail.com",
)


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
        from migrator.account import profile_catalog
        from migrator.endpoints import ProfileEndpoint, parse_endpoint
        from migrator.oauth import KeyringStore, save_login, store_key

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
        client = _oauth_client(client_id or settings.client_id, client_secret_file)
        flow = "device" if device else "code" if browser else settings.flow
        urls, tokens = _sign_in(settings, client, flow, target.user, not no_open, timeout)
        key = store_key(profile.name, target.user)
        save_login(KeyringStore(), key, urls, client, tokens)
        typer.echo(
            f"signed in as {target.user}; the refresh token is in the system keyring "
            f"(service migrator-oauth2, user {key})"
        )


def _oauth_client(client_id: str | None, client_secret_file: Path | None) -> Client:
    """The app signing in: its client id (--client-id, or the profile's) and its secret, if it
    has one (--client-secret-file, or MIGRATOR_OAUTH2_CLIENT_SECRET)."""
    from migrator.oauth import Client

    if not client_id:
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
    return Client(client_id, secret)


def _sign_in(
    settings: OAuth2Settings,
    client: Client,
    flow: str,
    user: str,
    open_browser: bool,
    timeout: float,
) -> tuple[Endpoints, Tokens]:
    """The provider's sign-in: a code typed on its web page ("device"), or a browser and a
    redirect to this machine ("code")."""
    import webbrowser

    from migrator.oauth import Endpoints, authorization_code_flow, device_code_flow

    urls = Endpoints(
        settings.token_url, settings.scopes, settings.authorize_url, settings.device_url
    )
    if flow == "device":
        return urls, device_code_flow(urls, client, show=lambda text: _err(f"migrator: {text}"))

    def open_url(url: str) -> None:
        _err(f"migrator: sign in on this page (waiting for it to come back):\n{url}")
        if open_browser:
            webbrowser.open(url)

    return urls, authorization_code_flow(urls, client, user, open_url, timeout)


# -- batch -----------------------------------------------------------------------------------


#: `batch`'s own options (those of its accounts' jobs are derived from options.py).
_PerHostOpt = Annotated[
    int | None,
    typer.Option(
        "--max-per-host",
        min=1,
        help="Accounts at once on one server host (default: the connection limit of "
        "the provider profile serving that host, else 4).",
        show_default=False,
    ),
]
_StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the batch ledger and every account's journal live (shared by all "
        "workers of a cluster). Default: the user's state directory, batch/MANIFEST-NAME.",
        show_default=False,
    ),
]
_ClusterOpt = Annotated[
    str | None,
    typer.Option(
        "--cluster",
        help="A Dask scheduler to run the accounts on: tcp://HOST:8786 or tls://HOST:8786 "
        "(default: in this process).",
        show_default=False,
    ),
]
_RefreshOpt = Annotated[
    bool,
    typer.Option(
        "--refresh",
        help="Also run the accounts that finished before (copies only what is new).",
    ),
]


@app.command()
@_takes_job("batch", ())
def batch(
    manifest: Annotated[
        Path, typer.Argument(help="CSV with a header, or TOML: one account per row.")
    ],
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=4096, help="Accounts copied at once.")
    ] = 4,
    max_per_host: _PerHostOpt = None,
    state_dir: _StateDirOpt = None,
    cluster: _ClusterOpt = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also run the accounts that failed before.")
    ] = False,
    only_failed: Annotated[
        bool, typer.Option("--only-failed", help="Run only the accounts that failed before.")
    ] = False,
    refresh: _RefreshOpt = False,
    json_output: JsonOpt = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Also write the per-account table to this CSV file."),
    ] = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    **given: Any,
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
        from migrator.batch import (
            BatchSettings,
            Selection,
            default_state_dir,
            run_batch,
        )
        from migrator.ui.batch import make_observer, results_json, results_table, write_report

        if not debug:
            _quiet_dask()
        loaded = _load_manifest(manifest, cluster)
        settings = BatchSettings(
            state_dir=state_dir or default_state_dir(manifest),
            jobs=jobs,
            max_per_host=max_per_host,
            cluster=cluster,
            run=options.settings_from_values(given),
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


def _quiet_dask() -> None:
    """Dask configures its loggers when it is imported (later, by run_batch), and warns through
    `warnings` too: neither belongs on the terminal (migrator logs nothing)."""
    import logging
    import warnings

    logging.disable(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"(distributed|dask|tornado|asyncio)\b")


def _load_manifest(manifest: Path, cluster: str | None) -> Manifest:
    """The manifest, checked (here, the secrets and files its rows name too, unless the accounts
    run on a cluster); every problem a line and exit 2; its warnings shown."""
    from migrator.batch import ManifestError, load_manifest

    try:
        loaded = load_manifest(manifest, env=None if cluster else os.environ)
    except ManifestError as exc:
        for problem in exc.problems:
            _err(f"migrator: error: {problem}")
        raise typer.Exit(int(ExitStatus.USAGE)) from None
    for warning in loaded.warnings:
        _err(f"migrator: warning: {warning}")
    return loaded


def main() -> None:
    # One name in usage lines and completion, however it was started (`python -m migrator`).
    app(prog_name="migrator")
