"""One copy job, from plain data to a finished run: what `migrator copy` and every account of
`migrator batch` do.

A :class:`CopyJob` holds only strings, numbers and tuples, and a :class:`SecretRecipe` says where a
password is found, never the password: both can be pickled and sent to a Dask worker, which turns
the recipe into a secret only there (``run_job``). ``run_copy`` is the journal's lifecycle around
one engine run, shared with the CLI's ``copy``.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from migrator.checkpoint import Journal
from migrator.credentials import SecretSources, env_name, secret_provider
from migrator.endpoints import (
    AccessOptions,
    Endpoint,
    ProfileEndpoint,
    ServerEndpoint,
    open_store,
    parse_endpoint,
)
from migrator.engine import CopyOptions, Engine, Reporter, RunSummary
from migrator.errors import ConfigError
from migrator.filters import MessageFilter, parse_age, parse_date, parse_size
from migrator.folders import FolderMap
from migrator.stores.base import Source, Target

SYSTEM_FLAGS = {
    "seen": "\\Seen",
    "answered": "\\Answered",
    "flagged": "\\Flagged",
    "draft": "\\Draft",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class SecretRecipe:
    """How one side's password is found, first found wins as for `copy`: the environment
    variable named ``env``, the file ``file``, the output of ``cmd``, the system keyring."""

    env: str | None = None
    file: str | None = None
    cmd: str | None = None
    keyring: bool = False

    @property
    def given(self) -> bool:
        return bool(self.env or self.file or self.cmd or self.keyring)


@dataclass(frozen=True)
class CopyJob:
    """Everything that defines one account's copy, as plain picklable values (the manifest's
    row, or the `copy` command's options)."""

    source: str
    target: str
    source_secret: SecretRecipe = field(default_factory=SecretRecipe)
    target_secret: SecretRecipe = field(default_factory=SecretRecipe)
    source_ca_file: str | None = None
    target_ca_file: str | None = None
    folder: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    map: tuple[str, ...] = ()
    into: str | None = None
    to_folder: str | None = None
    since: str | None = None
    before: str | None = None
    older_than: str | None = None
    max_size: str | None = None
    flags: tuple[str, ...] = ()
    delete_source: bool = False

    def selection(self) -> dict[str, object]:
        """What decides which messages go where: a change here makes a finished account new."""
        return {
            "source": self.source,
            "target": self.target,
            "folder": list(self.folder),
            "exclude": list(self.exclude),
            "map": list(self.map),
            "into": self.into,
            "to_folder": self.to_folder,
            "since": self.since,
            "before": self.before,
            "older_than": self.older_than,
            "max_size": self.max_size,
            "flags": list(self.flags),
            "delete_source": self.delete_source,
        }


@dataclass(frozen=True)
class RunSettings:
    """How hard to work on one account (the same for every account of a batch)."""

    workers: int = 2
    retries: int = 5
    timeout: float = 60.0


# -- values users type ------------------------------------------------------------------------


def parse_renames(items: tuple[str, ...] | list[str], what: str = "map") -> dict[str, str]:
    renames: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise ConfigError(f"{what} {item!r}: write SOURCE=TARGET")
        renames[src.strip()] = dst.strip()
    return renames


def parse_flags(names: tuple[str, ...] | list[str], what: str = "flags") -> frozenset[str]:
    flags = set()
    for name in names:
        key = name.strip().lstrip("\\").lower()
        if key in SYSTEM_FLAGS:
            flags.add(SYSTEM_FLAGS[key])
        elif re.fullmatch(r"[$A-Za-z0-9_.-]+", name.strip()):
            flags.add(name.strip())
        else:
            raise ConfigError(f"{what} {name!r}: use seen, answered, flagged, draft or a keyword")
    return frozenset(flags)


def parse_value(what: str, parser: Callable[[str], object], value: str | None) -> object:
    if value is None:
        return None
    try:
        return parser(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def message_filter(job: CopyJob) -> MessageFilter:
    since = parse_value("since", parse_date, job.since)
    before = parse_value("before", parse_date, job.before)
    if job.older_than:
        cutoff = datetime.now(UTC) - parse_value("older_than", parse_age, job.older_than)  # type: ignore[operator]
        before = min(before, cutoff) if before else cutoff  # type: ignore[type-var]
    size = parse_value("max_size", parse_size, job.max_size)
    return MessageFilter(since=since, before=before, max_size=size)  # type: ignore[arg-type]


def copy_options(job: CopyJob, settings: RunSettings) -> CopyOptions:
    return CopyOptions(
        folder_map=FolderMap(
            include=job.folder,
            exclude=job.exclude,
            renames=parse_renames(job.map),
            into=job.into,
            to_folder=job.to_folder,
        ),
        message_filter=message_filter(job),
        delete_source=job.delete_source,
        add_flags=parse_flags(job.flags),
        workers=settings.workers,
        retries=settings.retries,
    )


def env_var_name_ok(name: str) -> bool:
    return bool(_ENV_NAME.fullmatch(name))


# -- secrets, resolved where the job runs -----------------------------------------------------


#: A job from plain data does not apply a provider profile's folder rules, limits and OAuth2
#: sign-in yet (`copy` does, in the CLI): refused rather than copied without them.
PROFILES_NOT_YET = (
    "{endpoint}: provider profiles are not supported in a batch yet; write the server as "
    "imaps://USER@HOST (its connection limit still caps the accounts per host)"
)


@functools.cache
def _catalog() -> Any:
    from platformdirs import user_config_path

    from migrator.profiles import load_catalog

    return load_catalog(user_config_path("migrator") / "profiles")


def load_profile(name: str) -> Any:
    """A provider profile, shipped or the user's own; ConfigError names an unknown one."""
    return _catalog().get(name)


def connection_limits() -> dict[str, int]:
    """Server host -> the connection limit of the provider profile serving it (IMAP and POP3
    hosts of every profile that names one). A user's broken profile file leaves it out."""
    limits: dict[str, int] = {}
    catalog = _catalog()
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


def resolve_secret(
    recipe: SecretRecipe, side: str, label: str, keyring_user: str
) -> Callable[[], str]:
    """The recipe turned into a password callable, in this process (a Dask worker runs this: a
    secret never crosses the scheduler). Only the one variable the recipe names is read."""
    env: dict[str, str] = {}
    if recipe.env:
        # The one place a library module reads the environment: the worker's own, for the
        # variable the manifest names (never MIGRATOR_*_PASSWORD, which is one account's).
        value = os.getenv(recipe.env)
        if not value:
            raise ConfigError(
                f"{label}: the environment variable {recipe.env} named for the {side} "
                "password is not set where this account runs"
            )
        env[env_name(side)] = value
    sources = SecretSources(
        side, Path(recipe.file).expanduser() if recipe.file else None, recipe.cmd
    )
    return secret_provider(
        sources, label=label, keyring_user=keyring_user, env=env, interactive=False
    )


def open_side(
    text: str,
    role: str,
    recipe: SecretRecipe,
    ca_file: str | None,
    timeout: float,
) -> tuple[Endpoint, Callable[[], Source | Target]]:
    """Parse an endpoint, find its secret (now: a missing one fails before any connection) and
    return a factory of unconnected stores."""
    endpoint = parse_endpoint(text)
    access = None
    if isinstance(endpoint, ProfileEndpoint):
        raise ConfigError(PROFILES_NOT_YET.format(endpoint=endpoint))
    if isinstance(endpoint, ServerEndpoint):
        secret = resolve_secret(recipe, role, str(endpoint), f"{endpoint.user}@{endpoint.host}")
        secret()
        access = AccessOptions(
            secret=secret, ca_file=Path(ca_file).expanduser() if ca_file else None, timeout=timeout
        )
    open_store(endpoint, access, role)  # an unsupported endpoint fails here, before anything

    def factory() -> Source | Target:
        return open_store(endpoint, access, role)

    return endpoint, factory


# -- running ----------------------------------------------------------------------------------


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
    outcome = "failed"
    totals = [0, 0, 0, 0]
    try:
        summary = engine.run()
        outcome = "interrupted" if summary.interrupted else "done" if summary.ok else "partial"
        totals = [summary.total(k) for k in ("copied", "skipped", "failed", "bytes")]
    finally:
        journal.finish_run(run_id, outcome, *totals)
        journal.close()
    return summary


def run_job(
    job: CopyJob,
    settings: RunSettings,
    state_path: Path,
    reporter: Reporter | None = None,
    stop: threading.Event | None = None,
) -> RunSummary:
    """Run one account's copy here: options parsed, secrets resolved from their recipes,
    endpoints opened, the journal at ``state_path``."""
    options = copy_options(job, settings)
    src, open_source = open_side(
        job.source, "source", job.source_secret, job.source_ca_file, settings.timeout
    )
    dst, open_target = open_side(
        job.target, "target", job.target_secret, job.target_ca_file, settings.timeout
    )
    return run_copy(
        open_source,  # type: ignore[arg-type]
        open_target,  # type: ignore[arg-type]
        str(src),
        str(dst),
        state_path,
        options,
        reporter,
        stop,
    )
