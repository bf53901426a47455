"""One account, from what the user typed to a finished run: how `copy`, `verify`, `folders` and
`check` reach an endpoint (its provider profile, its login, its TLS), what a profile changes in a
copy, and the copy itself, for `migrator copy` and for every account of `migrator batch`.

A :class:`CopyJob` (declared in migrator.options) holds only strings, numbers and tuples, and a
:class:`SecretRecipe` says where a password or an OAuth2 token is found, never the secret: both
can be pickled and sent to a Dask worker, which turns the recipe into a secret only there.
`copy`, `sync` and every batch account run a job the same way: :func:`open_job` (options, sides,
secrets, profiles; with a :class:`Terminal` for a command typed by a user), then
:meth:`OpenedJob.run` (:func:`run_copy`: the journal's lifecycle around one engine run);
:func:`run_job` is the two.

Library code: nothing here prints, exits or reads the environment. The caller passes the
environment in (the CLI its own ``os.environ``), and warnings come back as notices to show. The one
exception is :func:`recipe_env`, which reads the variable a manifest row names, on the worker.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator.checkpoint import Journal
from migrator.credentials import SecretSources, choose_login, env_name
from migrator.endpoints import (
    AccessOptions,
    Endpoint,
    ProfileEndpoint,
    ServerEndpoint,
    open_store,
    parse_endpoint,
    resolve_profile,
    scheme_hint,
    unknown_scheme,
)
from migrator.engine import CopyOptions, Engine, Reporter, RunSummary
from migrator.errors import ConfigError, closest
from migrator.filters import MessageFilter, parse_age, parse_date, parse_size
from migrator.folders import FolderMap
from migrator.options import DEFAULT_TIMEOUT

# Declared in migrator.options; named here too, for the batch and the tests.
from migrator.options import CopyJob as CopyJob
from migrator.options import RunSettings as RunSettings
from migrator.options import SecretRecipe as SecretRecipe
from migrator.options import parse_flags as parse_flags
from migrator.options import parse_renames as parse_renames
from migrator.profiles import Profile, ProfileCatalog, folder_adjustments, load_catalog
from migrator.ratelimit import ByteBudgets, DailyBudget, TokenBucket
from migrator.rules import MessageRules
from migrator.stores.base import Source, Target

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# -- values users type ------------------------------------------------------------------------

#: How an error names the value it is about: a manifest's column (``max_size``), or a command
#: line option (``--max-size``, with :func:`option_label`).
Label = Callable[[str], str]


def column_label(key: str) -> str:
    return key


def option_label(key: str) -> str:
    return "--" + key.replace("_", "-")


def parse_value(what: str, parser: Callable[[str], Any], value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parser(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def folder_map(job: CopyJob, label: Label = column_label) -> FolderMap:
    """The job's folder selection and renaming (--folder, --exclude, --map, --into,
    --to-folder, --include-shared)."""
    return FolderMap(
        include=job.folder,
        exclude=job.exclude,
        renames=parse_renames(job.map, label("map")),
        into=job.into,
        to_folder=job.to_folder,
        include_shared=job.include_shared,
    )


def message_filter(job: CopyJob, label: Label = column_label) -> MessageFilter:
    """Which messages go, by date and size (--since, --before, --older-than, --max-size)."""
    since_d = parse_value(label("since"), parse_date, job.since)
    before_d = parse_value(label("before"), parse_date, job.before)
    if job.older_than:
        cutoff = datetime.now(UTC) - parse_value(label("older_than"), parse_age, job.older_than)
        before_d = min(before_d, cutoff) if before_d else cutoff
    size = parse_value(label("max_size"), parse_size, job.max_size)
    return MessageFilter(since=since_d, before=before_d, max_size=size)


def copy_options(job: CopyJob, settings: RunSettings, label: Label = column_label) -> CopyOptions:
    """The engine's options for a job, before its provider profiles (:func:`apply_profiles`)."""
    options = CopyOptions(
        folder_map=folder_map(job, label),
        message_filter=message_filter(job, label),
        delete_source=job.delete_source,
        dry_run=job.dry_run,
        add_flags=parse_flags(job.flags, label("flags")),
        workers=settings.workers,
        retries=settings.retries,
    )
    if job.mirror and job.delete_source:
        raise ConfigError(
            "sync mirrors the source, and --delete-source empties it: archive with "
            "copy --delete-source instead"
        )
    options.mirror, options.max_delete = job.mirror, job.max_delete
    return options


def env_var_name_ok(name: str) -> bool:
    return bool(_ENV_NAME.fullmatch(name))


def default_state_path(source: Endpoint, target: Endpoint) -> Path:
    """One journal per (source, target) pair under the user's state directory."""
    from platformdirs import user_state_path

    digest = hashlib.sha256(f"{source}\n{target}".encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9@._-]+", "_", f"{source}--{target}")[:80]
    return user_state_path("migrator") / "journals" / f"{slug}-{digest}.sqlite"


# -- provider profiles ------------------------------------------------------------------------


def profile_catalog() -> ProfileCatalog:
    """The shipped provider profiles and the user's own (~/.config/migrator/profiles/), read
    afresh: a caller that looks up many (a manifest's rows) keeps the one it got."""
    from platformdirs import user_config_path

    return load_catalog(user_config_path("migrator") / "profiles")


def connection_limits(catalog: ProfileCatalog | None = None) -> dict[str, int]:
    """Server host -> the connection limit of the provider profile serving it (IMAP and POP3
    hosts of every profile that names one). A user's broken profile file leaves it out."""
    limits: dict[str, int] = {}
    catalog = catalog or profile_catalog()
    for name in catalog.names():
        try:
            profile = catalog.get(name)
        except ConfigError:
            continue
        limit = profile.limits.connections
        for server in (profile.imap, profile.pop3):
            if limit and server is not None and server.host:
                host = server.host.lower()
                limits[host] = min(limits.get(host, limit), limit)
    return limits


def resolve_endpoint(
    text: str,
    side: str,
    profile_name: str | None = None,
    catalog: ProfileCatalog | None = None,
) -> tuple[Endpoint, Endpoint, Profile | None]:
    """An endpoint as typed, what it reaches (a PROFILE:USER endpoint: the profile's IMAP server)
    and its provider profile (PROFILE:USER, or ``profile_name``: --source-profile). Nothing is
    opened or connected."""
    endpoint = parse_endpoint(text)
    profile = None
    if isinstance(endpoint, ProfileEndpoint):
        catalog = catalog or profile_catalog()
        name = endpoint.profile
        # `mboxx:PATH` is a mistyped scheme far more often than a profile nobody wrote.
        if name not in catalog.names() and scheme_hint(name) and not closest(name, catalog.names()):
            raise unknown_scheme(text.strip(), name)
        profile = catalog.get(name)
        return endpoint, resolve_profile(endpoint, profile, side), profile
    if profile_name:
        if not isinstance(endpoint, ServerEndpoint):
            raise ConfigError(f"--{side}-profile: {endpoint} is not a server")
        profile = (catalog or profile_catalog()).get(profile_name)
    return endpoint, endpoint, profile


def tls_notices(endpoint: Endpoint, server: Endpoint, insecure: bool = False) -> list[str]:
    """Warnings about a server reached without TLS, or without checking its certificate."""
    if not isinstance(server, ServerEndpoint):
        return []
    if server.tls == "none":
        return [f"{endpoint}: no TLS; the password and mail cross the network in clear"]
    if insecure:
        return [f"{endpoint}: certificate checks are off (--insecure)"]
    return []


def profile_folders(
    fm: FolderMap, source: Profile | None, target: Profile | None, all_mail: str | None = None
) -> tuple[FolderMap, list[str]]:
    """The folder map with the profiles' folders to skip (Gmail's All Mail, Important, Starred,
    or All Mail alone with --all-mail) and the target's reserved names renamed; and the notices
    saying so. A folder the user selected (``fm.include``) or renamed is left alone."""
    adjust = folder_adjustments(source, target, list(fm.include), dict(fm.renames), all_mail)
    if adjust.include or adjust.exclude or adjust.renames:
        fm = FolderMap(
            include=(*fm.include, *adjust.include),
            exclude=(*fm.exclude, *adjust.exclude),
            renames={**adjust.renames, **fm.renames},
            into=fm.into,
            to_folder=fm.to_folder,
            include_shared=fm.include_shared,
        )
    return fm, list(adjust.notices)


def apply_profiles(
    options: CopyOptions,
    src: Side,
    dst: Side,
    state_path: Path,
    *,
    all_mail: str | None = None,
    max_bytes_per_second: str | None = None,
    label: Label = column_label,
) -> list[str]:
    """What the two sides' provider profiles change in a copy: label folders skipped (or All Mail
    alone), reserved names renamed, the target's size limit and message rules, rates, connections
    and daily byte budgets (counting what earlier runs in the journal at ``state_path`` moved).
    Changes ``options``; returns the notices to show."""
    sp, tp = src.profile, dst.profile
    options.folder_map, notices = profile_folders(options.folder_map, sp, tp, all_mail)
    profiles = [p for p in (sp, tp) if p is not None]
    if tp is not None:
        if tp.limits.max_message_size:
            options.size_limit = tp.limits.max_message_size
            options.size_limit_origin = f"profile {tp.name}"
        fold = tp.limits.max_line_length if tp.rules.fold_long_lines else None
        options.rules = MessageRules(tp.rules.bare_lf, tp.rules.final_crlf, fold, tp.rules.nul)
    rates = [p.limits.bytes_per_second for p in profiles if p.limits.bytes_per_second]
    if max_bytes_per_second:
        rates.append(parse_value(label("max_bytes_per_second"), parse_size, max_bytes_per_second))
    if rates:
        options.byte_rate = TokenBucket(min(rates))
    per_second = [p.limits.messages_per_second for p in profiles if p.limits.messages_per_second]
    if per_second:
        options.message_rate = TokenBucket(min(per_second), burst=max(1.0, min(per_second)))
    caps = [(p.limits.connections, p.name) for p in profiles if p.limits.connections]
    if caps and options.workers > min(caps)[0]:
        options.workers = min(caps)[0]
        notices.append(f"--workers lowered to {options.workers}: profile {min(caps)[1]}'s limit")
    wanted = [
        (sp.limits.download_bytes_per_day if sp else None, f"download from {src.endpoint}"),
        (tp.limits.upload_bytes_per_day if tp else None, f"upload to {dst.endpoint}"),
    ]
    if any(limit for limit, _ in wanted):
        history: list[tuple[float, int]] = []
        if state_path.exists():
            earlier = Journal.in_memory(state_path)
            history = [(row[1], row[7]) for row in earlier.runs()]
            earlier.close()
        now = time.time()
        options.budgets = ByteBudgets(
            DailyBudget(limit, what, history, now) for limit, what in wanted if limit
        )
    return notices


# -- reaching an endpoint ---------------------------------------------------------------------


@dataclass
class Side:
    """How to reach one endpoint: what the user typed, turned into a store factory."""

    endpoint: Endpoint
    access: AccessOptions | None
    role: str
    #: The provider profile (PROFILE:USER, or --source-profile / --target-profile).
    profile: Profile | None = None
    #: What is actually reached: the profile's server for PROFILE:USER, else ``endpoint``.
    server: Endpoint | None = None
    #: Warnings for the user (no TLS, --insecure), to show before anything else happens.
    notices: tuple[str, ...] = ()

    def store(self) -> Any:
        return open_store(self.endpoint, self.access, self.role)

    def check_secret(self) -> None:
        if self.access is not None:
            self.access.secret()


def open_side(
    text: str,
    role: str,
    env: Mapping[str, str],
    *,
    side: str | None = None,
    password_file: Path | None = None,
    password_cmd: str | None = None,
    oauth2_token_cmd: str | None = None,
    auth: str | None = None,
    profile_name: str | None = None,
    ca_file: Path | None = None,
    insecure: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
    interactive: bool = False,
) -> Side:
    """Parse an endpoint, bring its provider profile, choose how it logs in (OAuth2 or a
    password) and check that it can serve as ``role``, all before any connection; the secret
    itself is asked for by :meth:`Side.check_secret`, so a prompt comes first.

    ``side`` ("source" or "target"; ``role`` by default) says whose options and variables apply:
    `verify` reads its target as a source. ``env`` is where MIGRATOR_SOURCE_PASSWORD and
    MIGRATOR_SOURCE_OAUTH2_TOKEN (or TARGET) are looked up: the CLI passes ``os.environ``."""
    side = side or role
    # The profile catalog is made only when an endpoint names a profile (resolve_endpoint).
    endpoint, server, profile = resolve_endpoint(text, side, profile_name)
    access = None
    if isinstance(server, ServerEndpoint):
        stored = None
        sign_in = ""
        if profile is not None and profile.oauth2_capable:
            from migrator.oauth import KeyringStore, RefreshingToken, has_login, store_key

            key = store_key(profile.name, server.user)
            sign_in = f"migrator auth login {key} --client-id ID"
            if has_login(KeyringStore(), key):
                stored = RefreshingToken(KeyringStore(), key, str(endpoint))
        login = choose_login(
            SecretSources(side, password_file, password_cmd),
            label=str(endpoint),
            keyring_user=f"{server.user}@{server.host}",
            env=env,
            interactive=interactive,
            token_cmd=oauth2_token_cmd,
            auth=auth,
            stored_token=stored,
            oauth_mechanism=profile.oauth2_mechanism if profile else "xoauth2",
            password_mechanism=(
                profile.mechanism
                if profile and profile.mechanism in ("plain", "login")
                else "password"
            ),
            oauth_only=bool(profile and profile.auth_methods == ("oauth2",)),
            sign_in=sign_in,
        )
        access = AccessOptions(
            secret=login.secret,
            ca_file=ca_file,
            insecure=insecure,
            timeout=timeout,
            auth=login.auth,
            profile=profile,
        )
    open_store(endpoint, access, role)  # an unsupported endpoint fails here, before anything
    notices = tuple(tls_notices(endpoint, server, insecure))
    return Side(endpoint, access, role, profile, server, notices)


# -- secrets, resolved where the job runs -----------------------------------------------------


def recipe_env(recipe: SecretRecipe, side: str, label: str) -> dict[str, str]:
    """The environment a job's side logs in with: only the variable its recipe names, read here
    (a Dask worker: a secret never crosses the scheduler), as MIGRATOR_SOURCE_PASSWORD would be
    for `copy`. The process's own MIGRATOR_*_PASSWORD and MIGRATOR_*_OAUTH2_TOKEN belong to a
    single `copy`, never to every account of a batch."""
    if not recipe.env:
        return {}
    # The one place a library module reads the environment (tests/unit/test_layering.py).
    value = os.getenv(recipe.env)
    if not value:
        raise ConfigError(
            f"{label}: the environment variable {recipe.env} named for the {side} "
            "password is not set where this account runs"
        )
    return {env_name(side): value}


@dataclass(frozen=True)
class Terminal:
    """How a job typed at the command line runs, unlike a batch account: its secrets may also
    come from this process's environment (MIGRATOR_SOURCE_PASSWORD, ...) and a prompt, warnings
    are shown at once, and errors name the command line's options."""

    env: Mapping[str, str]
    interactive: bool
    warn: Callable[[str], None]


def job_side(
    text: str,
    role: str,
    recipe: SecretRecipe,
    ca_file: str | None,
    timeout: float,
    *,
    side: str | None = None,
    profile: str | None = None,
    insecure: bool = False,
    terminal: Terminal | None = None,
) -> Side:
    """One side of a job, reached as ``role`` with ``side``'s options (`verify` reads its target
    as a source), its login chosen before any connection. Without a terminal, its secret comes
    from the recipe alone (on a batch's worker), never from a prompt. The secret itself is read
    by :meth:`Side.check_secret`."""
    side = side or role
    if terminal is not None:
        env: Mapping[str, str] = terminal.env
    elif isinstance(endpoint := parse_endpoint(text), ServerEndpoint | ProfileEndpoint):
        env = recipe_env(recipe, side, str(endpoint))
    else:
        env = {}
    opened = open_side(
        text,
        role,
        env,
        side=side,
        password_file=Path(recipe.file).expanduser() if recipe.file else None,
        password_cmd=recipe.cmd,
        oauth2_token_cmd=recipe.oauth2_token_cmd,
        auth=recipe.auth,
        profile_name=profile,
        ca_file=Path(ca_file).expanduser() if ca_file else None,
        insecure=insecure,
        timeout=timeout,
        interactive=terminal is not None and terminal.interactive,
    )
    if terminal is not None:
        for notice in opened.notices:
            terminal.warn(notice)
    return opened


def job_side_of(
    job: CopyJob,
    side: str,
    timeout: float,
    terminal: Terminal | None = None,
    *,
    role: str | None = None,
) -> Side:
    """The job's ``side`` ("source" or "target"), with that side's options (:func:`job_side`)."""
    return job_side(
        job.source if side == "source" else job.target,
        role or side,
        job.secret(side),
        job.ca_file(side),
        timeout,
        side=side,
        profile=job.profile(side),
        insecure=job.insecure,
        terminal=terminal,
    )


def open_sides(
    job: CopyJob,
    timeout: float,
    terminal: Terminal | None = None,
    *,
    target_role: str = "target",
) -> tuple[Side, Side]:
    """Both sides of a job, their warnings shown, then both secrets read (a prompt comes after
    every warning and every mistake in an endpoint)."""
    src = job_side_of(job, "source", timeout, terminal)
    dst = job_side_of(job, "target", timeout, terminal, role=target_role)
    src.check_secret()
    dst.check_secret()
    return src, dst


# -- running ----------------------------------------------------------------------------------


def outcome(summary: RunSummary) -> str:
    """How a run ended, for the journal, a batch account and `copy`'s exit code: interrupted,
    done, or partial (something failed or a budget stopped it)."""
    return "interrupted" if summary.interrupted else "done" if summary.ok else "partial"


def run_copy(
    open_source: Callable[[], Source],
    open_target: Callable[[], Target],
    source_label: str,
    target_label: str,
    state_path: Path,
    options: CopyOptions,
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
) -> RunSummary:
    """One engine run inside its journal: opened (and locked), the run recorded with its outcome
    whatever happens, closed. A dry run works on an in-memory copy of the journal."""
    journal = Journal.in_memory(state_path) if options.dry_run else Journal.open(state_path)
    engine = Engine(open_source, open_target, journal, options, reporter, stop)
    run_id = journal.start_run(source_label, target_label)
    journal.bind(source_label, target_label)
    ended = "failed"
    totals = [0, 0, 0, 0]
    try:
        summary = engine.run()
        ended = outcome(summary)
        totals = [summary.total(k) for k in ("copied", "skipped", "failed", "bytes")]
    finally:
        journal.finish_run(run_id, ended, *totals)
        journal.close()
    return summary


@dataclass
class OpenedJob:
    """A job ready to run: its options parsed, both sides reached (secrets read), the provider
    profiles applied, and the notices they give."""

    source: Side
    target: Side
    options: CopyOptions
    state_path: Path
    notices: list[str]

    def run(
        self, reporter: Reporter | None = None, stop: threading.Event | None = None
    ) -> RunSummary:
        """The copy, the profiles' notices first told to ``reporter``."""
        if reporter is not None:
            for text in self.notices:
                reporter.notice(text)
        return run_copy(
            self.source.store,
            self.target.store,
            str(self.source.endpoint),
            str(self.target.endpoint),
            self.state_path,
            self.options,
            reporter,
            stop,
        )


def open_job(
    job: CopyJob,
    settings: RunSettings,
    state_path: Path | None = None,
    terminal: Terminal | None = None,
) -> OpenedJob:
    """Everything before a copy, checked in the order a user should hear of problems: the
    options, the endpoints (with their warnings), the secrets, the profiles. The journal is at
    ``state_path``, by default the one of these endpoints (:func:`default_state_path`)."""
    options = copy_options(job, settings, option_label if terminal else column_label)
    src, dst = open_sides(job, settings.timeout, terminal)
    state_path = state_path or default_state_path(src.endpoint, dst.endpoint)
    notices = apply_profiles(
        options,
        src,
        dst,
        state_path,
        all_mail=job.all_mail,
        max_bytes_per_second=job.max_bytes_per_second,
        label=option_label if terminal else column_label,
    )
    return OpenedJob(src, dst, options, state_path, notices)


def run_job(
    job: CopyJob,
    settings: RunSettings,
    state_path: Path | None,
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
    terminal: Terminal | None = None,
) -> RunSummary:
    """Run one account's copy here, as `copy` does (:func:`open_job`, then
    :meth:`OpenedJob.run`): for `batch`, without a terminal, secrets resolved from their
    recipes; the profiles' notices go to ``reporter``."""
    return open_job(job, settings, state_path, terminal).run(reporter, stop)
