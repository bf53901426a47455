"""A copy job's options, declared once.

Each option of a job is a field of :class:`CopyJob` (or, for each side's login, a row of
:data:`SIDE_OPTIONS`; for how hard to work, a field of :class:`RunSettings`) whose metadata says
what every consumer needs: its help text, its kind (text, list, yes/no), the check of a value,
whether it decides which messages go where (:meth:`CopyJob.selection`, a batch account's
identity), whether a batch manifest has a column for it, and which commands take it. From these
are derived the command line options of `copy`, `sync`, `verify`, `folders` and `check` (cli.py),
the manifest's columns and their checks (batch.py), and the job's selection.

A new option of a copy job: one field here, then what it does in ``account.copy_options``.

Light on purpose: cli.py builds its commands from this module when it is imported, and
`migrator --help` must start fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from migrator.errors import ConfigError

# -- defaults ---------------------------------------------------------------------------------

#: Folders copied at once, each on its own connections: three keep an IMAP target busy while it
#: syncs each message to disk (`copy --help`; README, "Commands").
DEFAULT_WORKERS = 3
#: Reconnects after a dropped connection before a folder is given up.
DEFAULT_RETRIES = 5
#: Seconds before a silent server is dropped.
DEFAULT_TIMEOUT = 60.0

# -- kinds and groups -------------------------------------------------------------------------

#: Kinds of value: how a manifest cell is read and what a command line option takes.
TEXT, LIST, BOOL, PATH, INT, FLOAT = "text", "list", "bool", "path", "int", "float"

#: Groups of options, and the commands that take each group.
MAPPING = "mapping"  # which folders, and where they land
FILTER = "filter"  # which messages
COPYING = "copying"  # what a copy does beyond moving messages
SYNC = "sync"  # sync's own
RUN = "run"  # how hard to work
REACH = "reach"  # how long a server may stay silent
TLS = "tls"  # certificate checks
COMMAND_GROUPS: dict[str, tuple[str, ...]] = {
    "copy": (MAPPING, FILTER, COPYING, RUN, REACH, TLS),
    "sync": (MAPPING, FILTER, COPYING, SYNC, RUN, REACH, TLS),
    "verify": (MAPPING, FILTER, REACH, TLS),
    "folders": (MAPPING, REACH, TLS),
    "check": (REACH, TLS),
    "batch": (RUN, REACH),
}


@dataclass(frozen=True)
class JobOption:
    """What a consumer needs to know about one option (a field's ``metadata["option"]``)."""

    kind: str
    help: str
    group: str
    #: Part of :meth:`CopyJob.selection`: a change makes a finished batch account new.
    identity: bool = False
    #: Named in the selection only when set: an option added later keeps older jobs' identity.
    identity_when_set: bool = False
    #: A batch manifest has a column of this name.
    column: bool = False
    #: Checks one text value; a ValueError's text says what is wrong.
    parse: Callable[[str], object] | None = None
    #: Checks a list of values, named ``label`` in its message (a ConfigError).
    check: Callable[[Sequence[str], str], object] | None = None
    #: Bounds of a number on the command line.
    low: float | None = None
    high: float | None = None

    def problem(self, value: Any, label: str) -> str | None:
        """What is wrong with a value read from a manifest (``label`` names it), or None."""
        try:
            if self.parse is not None and value is not None:
                self.parse(value)
            if self.check is not None:
                self.check(value, label)
        except (ValueError, ConfigError) as exc:
            return str(exc)
        return None


def option(default: Any, kind: str, group: str, help: str, **more: Any) -> Any:
    """A dataclass field declaring a job option (see :class:`JobOption`)."""
    return field(default=default, metadata={"option": JobOption(kind, help, group, **more)})


def selecting(default: Any, kind: str, group: str, help: str, **more: Any) -> Any:
    """An option that decides which messages go where: part of the job's selection (its
    identity in a batch), with a manifest column."""
    return option(default, kind, group, help, identity=True, column=True, **more)


def declared(cls: type) -> Iterator[tuple[str, JobOption]]:
    """The declared options of a dataclass, in declaration order."""
    for f in fields(cls):
        if "option" in f.metadata:
            yield f.name, f.metadata["option"]


def default_of(cls: type, name: str) -> Any:
    """The default of a declared option."""
    return next(f.default for f in fields(cls) if f.name == name)


# -- values users type ------------------------------------------------------------------------

SYSTEM_FLAGS = {
    "seen": "\\Seen",
    "answered": "\\Answered",
    "flagged": "\\Flagged",
    "draft": "\\Draft",
}


def parse_renames(items: Sequence[str], what: str = "map") -> dict[str, str]:
    renames: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition("=")
        if not sep or not src.strip() or not dst.strip():
            form = f"{what} SOURCE=TARGET" if what.startswith("--") else "SOURCE=TARGET"
            raise ConfigError(f"{what} {item!r}: write {form}")
        renames[src.strip()] = dst.strip()
    return renames


def parse_flags(names: Sequence[str], what: str = "flags") -> frozenset[str]:
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


def _date(text: str) -> object:
    from migrator.filters import parse_date

    return parse_date(text)


def _age(text: str) -> object:
    from migrator.filters import parse_age

    return parse_age(text)


def _size(text: str) -> object:
    from migrator.filters import parse_size

    return parse_size(text)


# -- one side's login ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRecipe:
    """How one side logs in, first found wins as for `copy`: an OAuth2 access token printed by
    ``oauth2_token_cmd``; a password from the environment variable named ``env``, the file
    ``file``, the output of ``cmd``; the sign-in `migrator auth login` stored; the system
    keyring. ``auth`` forces a mechanism (--source-auth)."""

    env: str | None = None
    file: str | None = None
    cmd: str | None = None
    keyring: bool = False
    oauth2_token_cmd: str | None = None
    auth: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.env or self.file or self.cmd or self.keyring or self.oauth2_token_cmd)


@dataclass(frozen=True)
class SideOption:
    """One option of each side: --source-NAME and --target-NAME (a command with one endpoint:
    --NAME), and the manifest's columns source_NAME and target_NAME."""

    name: str
    kind: str
    #: Where the value goes: a field of the side's SecretRecipe, else CopyJob's SIDE_NAME.
    recipe_field: str | None
    #: Help with ``{side}`` for a command with both sides, and for a command with one endpoint.
    help: str = ""
    plain: str = ""
    cli: bool = True
    column: bool = True
    #: Shell completion: "auth" (mechanisms) or "profile" (profile names).
    complete: str | None = None


_AUTH_HELP = "How to log in: password, plain, login, oauth2, xoauth2 or oauthbearer."
#: In the manifest's column order.
SIDE_OPTIONS = (
    SideOption("password_env", TEXT, "env", cli=False),
    SideOption(
        "password_file",
        PATH,
        "file",
        "Read the {side} password from this file.",
        "Read the password here.",
    ),
    SideOption(
        "password_cmd",
        TEXT,
        "cmd",
        "Its output is the {side} password.",
        "Its output is the password.",
    ),
    SideOption(
        "oauth2_token_cmd",
        TEXT,
        "oauth2_token_cmd",
        "Its output is the {side}'s OAuth2 access token (every login).",
        "Its output is the access token.",
    ),
    SideOption("keyring", BOOL, "keyring", cli=False),
    SideOption("ca_file", PATH, None, "Trust this CA for the {side}.", "Trust this CA."),
    SideOption("auth", TEXT, "auth", _AUTH_HELP, _AUTH_HELP, column=False, complete="auth"),
    SideOption(
        "profile",
        TEXT,
        None,
        "Apply this provider profile to an imaps:// {side}.",
        "Apply this provider profile.",
        column=False,
        complete="profile",
    ),
)
SIDES = ("source", "target")


# -- the job ------------------------------------------------------------------------------------


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
    source_profile: str | None = None
    target_profile: str | None = None
    folder: tuple[str, ...] = selecting(
        (), LIST, MAPPING, "Only folders matching this glob (repeatable)."
    )
    exclude: tuple[str, ...] = selecting(
        (), LIST, MAPPING, "Skip folders matching this glob (repeatable)."
    )
    map: tuple[str, ...] = selecting(
        (),
        LIST,
        MAPPING,
        "Rename a folder and its sub-folders: SRC=DST (repeatable).",
        check=parse_renames,
    )
    into: str | None = selecting(None, TEXT, MAPPING, "Put every folder under this one.")
    to_folder: str | None = selecting(
        None, TEXT, MAPPING, "Where a one-folder source (POP3, one mbox) lands."
    )
    since: str | None = selecting(
        None, TEXT, FILTER, "Only mail received on/after DATE.", parse=_date
    )
    before: str | None = selecting(
        None, TEXT, FILTER, "Only mail received before DATE.", parse=_date
    )
    older_than: str | None = selecting(
        None, TEXT, FILTER, "Only mail older than AGE (90d, 12w, 1y).", parse=_age
    )
    max_size: str | None = selecting(
        None, TEXT, FILTER, "Leave out messages larger than SIZE (25M).", parse=_size
    )
    flags: tuple[str, ...] = selecting(
        (),
        LIST,
        COPYING,
        "Add this flag to every copied message: seen, answered, flagged, draft, or a keyword "
        "(repeatable). For POP3 sources whose client had read everything.",
        check=parse_flags,
    )
    delete_source: bool = selecting(
        False,
        BOOL,
        COPYING,
        "Remove copied messages from the source once the target holds them durably.",
    )
    include_shared: bool = option(
        False,
        BOOL,
        MAPPING,
        "Also copy other users' and shared folders (IMAP namespaces), under target folders "
        "named 'Other Users' and 'Shared Folders'.",
        identity=True,
        identity_when_set=True,
    )
    max_bytes_per_second: str | None = option(
        None, TEXT, COPYING, "Copy no faster than this (500K, 2M), all workers."
    )
    all_mail: str | None = option(
        None,
        TEXT,
        COPYING,
        "Gmail: copy All Mail alone, into this target folder, instead of the labels.",
    )
    dry_run: bool = option(False, BOOL, COPYING, "Show what would be copied; change nothing.")
    #: `sync`: what this job copied and the source no longer holds is removed from the target.
    mirror: bool = False
    max_delete: int | None = option(
        None,
        INT,
        SYNC,
        "Allow removing up to N messages from a folder even when that is more than half of "
        "what was copied there (the guard against a source that looks empty by mistake).",
        low=0,
    )
    insecure: bool = option(False, BOOL, TLS, "Do not verify certificates (prints a warning).")

    def selection(self) -> dict[str, object]:
        """What decides which messages go where: a change here makes a finished account new."""
        chosen: dict[str, object] = {"source": self.source, "target": self.target}
        for name, opt in declared(CopyJob):
            value = getattr(self, name)
            if opt.identity and (value or not opt.identity_when_set):
                chosen[name] = list(value) if isinstance(value, tuple) else value
        return chosen

    def secret(self, side: str) -> SecretRecipe:
        recipe: SecretRecipe = getattr(self, f"{side}_secret")
        return recipe

    def ca_file(self, side: str) -> str | None:
        value: str | None = getattr(self, f"{side}_ca_file")
        return value

    def profile(self, side: str) -> str | None:
        value: str | None = getattr(self, f"{side}_profile")
        return value


def job_from_values(
    source: str, target: str, values: Mapping[str, Any]
) -> tuple[CopyJob, RunSettings]:
    """A job and its run settings from values named as the manifest's columns and the commands'
    parameters (``folder``, ``source_password_file``, ``workers``, ...); absent ones keep their
    default. A list becomes a tuple, a path text."""

    def plain(value: Any) -> Any:
        if isinstance(value, list | tuple):
            return tuple(value)
        return str(value) if isinstance(value, Path) else value

    given = {k: plain(v) for k, v in values.items() if v is not None}
    job: dict[str, Any] = {n: given[n] for n, _ in declared(CopyJob) if n in given}
    for side in SIDES:
        recipe: dict[str, Any] = {}
        for opt in SIDE_OPTIONS:
            key = f"{side}_{opt.name}"
            if key not in given:
                continue
            if opt.recipe_field is not None:
                recipe[opt.recipe_field] = given[key]
            else:
                job[key] = given[key]
        job[f"{side}_secret"] = SecretRecipe(**recipe)
    return CopyJob(source, target, **job), settings_from_values(given)


def settings_from_values(values: Mapping[str, Any]) -> RunSettings:
    """Run settings from values named as their options; absent ones keep their default."""
    return RunSettings(**{n: values[n] for n, _ in declared(RunSettings) if n in values})


# -- how hard to work ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSettings:
    """How hard to work on one account (the same for every account of a batch)."""

    workers: int = option(
        DEFAULT_WORKERS,
        INT,
        RUN,
        "Folders copied at once, each on its own connections (three keep an IMAP target busy "
        "while it syncs each message to disk).",
        low=1,
        high=32,
    )
    retries: int = option(
        DEFAULT_RETRIES, INT, COPYING, "Reconnects after a dropped connection.", low=0
    )
    timeout: float = option(
        DEFAULT_TIMEOUT, FLOAT, REACH, "Seconds before a silent server is dropped.", low=1
    )


# -- the manifest's columns ---------------------------------------------------------------------


def manifest_columns() -> dict[str, str]:
    """Column -> kind, in the order an unknown column's message lists them: the account's name,
    its endpoints, each side's login, then the job's options."""
    return {
        "name": TEXT,
        "source": TEXT,
        "target": TEXT,
        **{
            f"{side}_{opt.name}": TEXT if opt.kind == PATH else opt.kind
            for side in SIDES
            for opt in SIDE_OPTIONS
            if opt.column
        },
        **{name: opt.kind for name, opt in declared(CopyJob) if opt.column},
    }
