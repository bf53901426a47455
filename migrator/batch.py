"""Many accounts: a manifest, checked whole before anything starts, run concurrently on Dask.

The manifest (CSV with a header, or TOML with ``[[account]]`` tables) has one row per account:
its source and target (``PROFILE:USER`` too), where each side's password or OAuth2 token is found
(an environment variable's name, a file, a command, the keyring; never the secret) and the
account's `copy` options. Every row is checked before the first account starts; each problem is
one line naming the row and column.

Each account runs as one task (:func:`run_account`) on a Dask cluster, in-process by default
(``LocalCluster(processes=False)``) or a real one (``--cluster tcp://HOST:8786``), through the same
code. The task gets the recipe for the secrets and resolves them on the worker. The client submits
an account only while ``jobs`` and the per-host caps allow, so a cluster of any size never has
more than ``max_per_host`` accounts on one server at once. A worker that dies mid-account: the
scheduler runs the task again elsewhere, and the account's journal (on a state directory every
worker shares), or failing that the lost-journal guarantee, keeps the copy exactly-once.

The batch remembers what it did in a ledger (``batch.sqlite`` in the state directory, written only
by the client): a rerun skips an account that finished, with the same selection, once its journal
confirms that its last run was complete; resumes interrupted and never-started ones; and with
``retry_failed`` / ``only_failed`` runs the failed ones again.

Stopping: Ctrl-C or SIGTERM on the client calls :func:`stop_accounts` where the accounts run (in
this process, or on every worker through ``Client.run``); it sets each running account's
``threading.Event``, and the engine commits its batch in flight and returns. An account whose
task nobody waits for any more (the client left or was killed, so the scheduler released it)
stops itself the same way (:func:`_watch_client`). What an account copied is read from its
journal (:meth:`Journal.copied_in`), so an interrupted account, or one run again after its worker
died, reports what reached its target during the run.

Library code: nothing here prints. Progress goes to a :class:`BatchObserver`.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import queue
import re
import shlex
import sqlite3
import threading
import time
import tomllib
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from migrator.account import (
    connection_limits,
    env_var_name_ok,
    outcome,
    profile_catalog,
    resolve_endpoint,
    run_job,
    tls_notices,
)
from migrator.checkpoint import Journal
from migrator.endpoints import (
    AccessOptions,
    Endpoint,
    ProfileEndpoint,
    ServerEndpoint,
    open_store,
)
from migrator.errors import ConfigError, ConnectError, MigratorError
from migrator.folders import FolderPlan
from migrator.options import (
    BOOL,
    LIST,
    SIDES,
    TEXT,
    CopyJob,
    RunSettings,
    SecretRecipe,
    declared,
    manifest_columns,
)
from migrator.profiles import ProfileCatalog
from migrator.ui.text import plural

#: Accounts at once on one server host, when neither --max-per-host nor a profile says.
DEFAULT_PER_HOST = 4

# -- the manifest's columns --------------------------------------------------------------------

#: Column -> kind (text, list, bool), derived from the job's declared options (options.py).
COLUMNS: dict[str, str] = manifest_columns()
REQUIRED = ("source", "target")
#: Column names that can only hold a secret (password, source_password, token, api_key, ...).
_SECRET_COLUMN = re.compile(
    r"(^|_)(pass|passwd|password|passphrase|pw|pwd|secret|token|oauth2?_token|access_token|"
    r"refresh_token|credentials?|api_?key|app_password)$"
)
#: Separates several values in one CSV cell (folder, exclude, map, flags).
LIST_SEPARATOR = ";"
_TRUE = {"1", "yes", "y", "true", "on"}
_FALSE = {"", "0", "no", "n", "false", "off"}


class ManifestError(ConfigError):
    """Every problem found in a manifest, one line each; nothing was started."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class Account:
    """One row of the manifest, checked."""

    index: int  # 1-based, in manifest order
    where: str  # "accounts.csv line 3": for messages
    name: str
    job: CopyJob
    source: str  # the endpoints, normalised (str(parse_endpoint(...)))
    target: str
    hosts: tuple[str, ...]  # server hosts this account talks to (the per-host caps)
    journal: str  # file name of its journal in the state directory's journals/
    fingerprint: str  # of everything that selects and places its messages


@dataclass(frozen=True)
class Manifest:
    path: Path
    accounts: list[Account]
    warnings: list[str] = field(default_factory=list)


def column_name(raw: str) -> str:
    return re.sub(r"[\s-]+", "_", raw.strip().lower())


def load_manifest(path: Path, env: Mapping[str, str] | None = None) -> Manifest:
    """Read and check a manifest (``.toml``, else CSV). ``env`` is the environment the accounts
    will run in when they run here; with it, the password variables, password files and CA files
    the rows name are checked too (on a cluster they are the workers' business)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the manifest is not UTF-8 text") from None
    if path.suffix.lower() == ".toml":
        rows, problems = _toml_rows(path, text)
    else:
        rows, problems = _csv_rows(path, text)
    return check_rows(path, rows, problems, env)


@dataclass
class _Row:
    where: str  # "accounts.csv line 3": the row, or the line of its [[account]] table
    values: dict[str, Any]
    #: Sides whose secret was written inline (already reported: no "needs a password" too).
    refused: set[str] = field(default_factory=set)
    #: TOML: the line of each key, by column name (a CSV row is one line).
    lines: dict[str, int] = field(default_factory=dict)
    file: str = ""

    def at(self, col: str) -> str:
        """Where a problem with ``col`` is: "accounts.csv line 3, column source", or for TOML
        "accounts.toml line 12, key source" (the key's own line)."""
        if not self.file:
            return f"{self.where}, column {col}"
        if col in self.lines:
            return f"{self.file} line {self.lines[col]}, key {col}"
        return f"{self.where}, key {col}"


def _csv_rows(path: Path, text: str) -> tuple[list[_Row], list[str]]:
    name = path.name
    problems: list[str] = []
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows: list[_Row] = []
    try:
        for cells in reader:
            line = reader.line_num
            if not any(c.strip() for c in cells) or cells[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [column_name(c) for c in cells]
                found = _header_problems(f"{name} line {line} (the header)", header)
                if found:  # reported once, not again on every row
                    return [], [*problems, *found]
                continue
            where = f"{name} line {line}"
            if len(cells) > len(header):
                extra = [c for c in cells[len(header) :] if c.strip()]
                if extra:
                    problems.append(
                        f"{where}: {len(cells)} cells but the header names {len(header)} columns"
                    )
            values = {
                col: cells[i].strip() if i < len(cells) else ""
                for i, col in enumerate(header)
                if col in COLUMNS
            }
            rows.append(_Row(where, values))
    except csv.Error as exc:
        problems.append(f"{name} line {reader.line_num}: not valid CSV ({exc})")
    if header is None:
        problems.append(f"{name}: empty manifest; the first line names the columns")
    return rows, problems


def _header_problems(where: str, header: list[str]) -> list[str]:
    problems = []
    seen: set[str] = set()
    for col in header:
        if not col:  # a trailing comma, as spreadsheets write them
            continue
        if col in seen:
            problems.append(f"{where}, column {col}: named twice")
        seen.add(col)
        if col not in COLUMNS:
            problems.append(f"{where}, column {col}: {_unknown_column(col)}")
    for col in REQUIRED:
        if col not in header:
            problems.append(
                f"{where}: missing column {col} (every row needs source and target endpoints)"
            )
    return problems


def _unknown_column(col: str) -> str:
    if _SECRET_COLUMN.search(col):
        side = (
            "source"
            if col.startswith("source")
            else "target"
            if col.startswith("target")
            else "SIDE"
        )
        return (
            "a secret written in the manifest is refused; say where it is found instead: "
            f"{side}_password_env (an environment variable's name), {side}_password_file or "
            f"{side}_password_cmd; a token: {side}_oauth2_token_cmd"
        )
    return "unknown column; known columns: " + ", ".join(COLUMNS)


def _toml_rows(path: Path, text: str) -> tuple[list[_Row], list[str]]:
    name = path.name
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
        if at:
            message = message[: at.start()]
            return [], [f"{name} line {at[1]}, column {at[2]}: not valid TOML ({message})"]
        return [], [f"{name}: not valid TOML ({message})"]
    positions = _toml_positions(text)
    problems = []
    for key in doc:
        if key not in ("account", "accounts"):
            line = positions.tables.get(key)
            problems.append(
                f"{name}{f' line {line}' if line else ''}: unknown table [{key}]; "
                "write one [[account]] per account"
            )
    tables = doc.get("account", doc.get("accounts", []))
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        return [], [*problems, f"{name}: write one [[account]] table per account"]
    # Line numbers only when the text's [[account]] headers are the tables tomllib found (not,
    # say, an inline array of tables).
    located = len(positions.accounts) == len(tables)
    rows = []
    for n, table in enumerate(tables, 1):
        if located:
            line, keys = positions.accounts[n - 1]
            row = _Row(f"{name} line {line}", {}, lines=keys, file=name)
        else:
            row = _Row(f"{name} [[account]] {n}", {}, file=name)
        for raw, value in table.items():
            col = column_name(raw)
            if col not in COLUMNS:
                problems.append(f"{row.at(col)}: {_unknown_column(col)}")
                if _SECRET_COLUMN.search(col):
                    row.refused.update(
                        s for s in SIDES if not col.startswith(SIDES) or col.startswith(s)
                    )
                continue
            row.values[col] = value
        rows.append(row)
    return rows, problems


@dataclass
class _TomlPositions:
    #: Per [[account]] header, in order: its line, and the line of each of its keys.
    accounts: list[tuple[int, dict[str, int]]] = field(default_factory=list)
    #: Other tables' header lines, by name.
    tables: dict[str, int] = field(default_factory=dict)


_TOML_ACCOUNT = re.compile(r"""^\s*\[\[\s*(["']?)(accounts?)\1\s*\]\]""")
_TOML_HEADER = re.compile(r"""^\s*\[+\s*(["']?)([^\]"']*)\1\s*\]""")
_TOML_KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")


def _toml_positions(text: str) -> _TomlPositions:
    """Where the tables and keys of a TOML manifest are (tomllib gives values, not lines): a
    line-by-line look at headers and ``key =`` lines, skipping multi-line strings."""
    found = _TomlPositions()
    keys: dict[str, int] | None = None
    open_quote: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if open_quote is not None:
            if line.count(open_quote) % 2 == 1:
                open_quote = None
            continue
        if match := _TOML_ACCOUNT.match(line):
            keys = {}
            found.accounts.append((number, keys))
            continue
        if match := _TOML_HEADER.match(line):
            keys = None
            found.tables.setdefault(match[2].strip(), number)
            continue
        if match := _TOML_KEY.match(line):
            key = next(g for g in match.groups() if g is not None)
            if keys is not None:
                keys.setdefault(column_name(key), number)
            rest = line[match.end() :]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    open_quote = quote
    return found


def _text(row: _Row, col: str, problems: list[str]) -> str | None:
    value = row.values.get(col)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        problems.append(f"{row.at(col)}: expected text")
        return None
    return str(value).strip() or None


def _list(row: _Row, col: str, problems: list[str]) -> tuple[str, ...]:
    value = row.values.get(col)
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            problems.append(f"{row.at(col)}: expected a list of text")
            return ()
        return tuple(v.strip() for v in value if v.strip())
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(LIST_SEPARATOR) if v.strip())
    problems.append(f"{row.at(col)}: expected text")
    return ()


def _bool(row: _Row, col: str, problems: list[str]) -> bool:
    value = row.values.get(col)
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    problems.append(f"{row.at(col)}: write yes or no")
    return False


def _default_name(endpoint: Endpoint) -> str:
    if isinstance(endpoint, ServerEndpoint):
        return f"{endpoint.user}@{endpoint.host}"
    if isinstance(endpoint, ProfileEndpoint):
        return str(endpoint)
    return endpoint.path.name or str(endpoint.path)


def _slug(text: str, size: int = 60) -> str:
    return re.sub(r"[^A-Za-z0-9@._-]+", "_", text).strip("._")[:size] or "account"


def check_rows(
    path: Path,
    rows: list[_Row],
    problems: list[str],
    env: Mapping[str, str] | None = None,
) -> Manifest:
    """Turn raw rows into accounts; raise ManifestError with every problem found."""
    problems = list(problems)
    warnings: list[str] = []
    accounts: list[Account] = []
    by_pair: dict[tuple[str, str], str] = {}
    by_name: dict[str, str] = {}
    catalog = profile_catalog()  # one for every row: PROFILE:USER endpoints
    for row in rows:
        # Names first, whatever else is wrong with the row: every problem at once.
        explicit = _text(row, "name", [])
        if explicit is not None:
            if explicit in by_name:
                problems.append(
                    f"{row.at('name')}: {explicit!r} is already the name of the account at "
                    f"{by_name[explicit]}"
                )
                _check_row(row, len(accounts) + 1, problems, warnings, env, catalog)
                continue
            by_name[explicit] = row.where
        account = _check_row(row, len(accounts) + 1, problems, warnings, env, catalog)
        if account is None:
            continue
        pair = (account.source, account.target)
        if pair in by_pair:
            problems.append(
                f"{row.where}, columns source and target: duplicate of {by_pair[pair]} "
                "(the same account twice would copy its mail twice)"
            )
            continue
        by_pair[pair] = row.where
        name = account.name
        if explicit is None:
            if name in by_name:
                name = f"{name}#{account.index}"
                account = replace(account, name=name, journal=_journal_name(name, pair))
            by_name[name] = row.where
        accounts.append(account)
    if not rows and not problems:
        problems.append(f"{path.name}: no accounts in the manifest")
    if problems:
        raise ManifestError(problems)
    return Manifest(path, accounts, warnings)


def _journal_name(name: str, pair: tuple[str, str]) -> str:
    digest = hashlib.sha256("\n".join(pair).encode()).hexdigest()[:12]
    return f"{_slug(name)}-{digest}.sqlite"


def _check_row(
    row: _Row,
    index: int,
    problems: list[str],
    warnings: list[str],
    env: Mapping[str, str] | None,
    catalog: ProfileCatalog | None = None,
) -> Account | None:
    before = len(problems)
    where = row.where
    endpoints: dict[str, Endpoint] = {}
    recipes: dict[str, SecretRecipe] = {}
    ca_files: dict[str, str | None] = {}
    hosts: set[str] = set()
    for side in SIDES:
        text = _text(row, side, problems)
        if text is None:
            problems.append(f"{row.at(side)}: empty; every account needs a {side}")
            continue
        try:
            # PROFILE:USER reaches the profile's server (an unknown profile is named as such)
            endpoint, server, _ = resolve_endpoint(text, side, catalog=catalog)
            if isinstance(server, ServerEndpoint):
                hosts.add(server.host)
                # tls=none: the check need not load the trust store (70 ms an endpoint)
                check: Endpoint = replace(server, tls="none")
            else:
                check = server
            open_store(check, AccessOptions(secret=_never), side)  # a role or kind not served
        except MigratorError as exc:
            problems.append(f"{row.at(side)}: {exc}")
            continue
        endpoints[side] = endpoint
        recipe = _recipe(row, side, problems)
        ca_files[side] = _text(row, f"{side}_ca_file", problems)
        if isinstance(server, ServerEndpoint):
            if not recipe.given and side not in row.refused:
                problems.append(
                    f"{row.at(side + '_password_env')}: {endpoint} needs a password or an "
                    f"OAuth2 token: name its environment variable ({side}_password_env), a "
                    f"{side}_password_file, a {side}_password_cmd, a {side}_oauth2_token_cmd, "
                    f"or set {side}_keyring"
                )
            warnings.extend(f"{where}: {notice}" for notice in tls_notices(endpoint, server))
            if env is not None:
                _check_here(row, side, recipe, ca_files[side], env, problems)
        recipes[side] = recipe
    job_values = _options(row, problems)
    if len(problems) > before or len(endpoints) < 2:
        return None
    job = CopyJob(
        source=str(row.values["source"]).strip(),
        target=str(row.values["target"]).strip(),
        source_secret=recipes["source"],
        target_secret=recipes["target"],
        source_ca_file=ca_files["source"],
        target_ca_file=ca_files["target"],
        **job_values,
    )
    src, dst = endpoints["source"], endpoints["target"]
    pair = (str(src), str(dst))
    name = _text(row, "name", problems) or _default_name(src)
    selection = {**job.selection(), "source": pair[0], "target": pair[1]}
    fingerprint = hashlib.sha256(json.dumps(selection, sort_keys=True).encode()).hexdigest()
    return Account(
        index=index,
        where=where,
        name=name,
        job=job,
        source=pair[0],
        target=pair[1],
        hosts=tuple(sorted(hosts)),
        journal=_journal_name(name, pair),
        fingerprint=fingerprint,
    )


def _never() -> str:
    raise AssertionError("checking a manifest never asks for a secret")


def _recipe(row: _Row, side: str, problems: list[str]) -> SecretRecipe:
    env = _text(row, f"{side}_password_env", problems)
    if env is not None and not env_var_name_ok(env):
        # The value is not repeated: it may be the password itself.
        problems.append(
            f"{row.at(side + '_password_env')}: not the name of an environment variable; write "
            "the variable's name (the password itself never goes in the manifest)"
        )
        row.refused.add(side)
        env = None
    return SecretRecipe(
        env=env,
        file=_text(row, f"{side}_password_file", problems),
        cmd=_command(row, f"{side}_password_cmd", f"{side}_password_file", problems),
        keyring=_bool(row, f"{side}_keyring", problems),
        oauth2_token_cmd=_command(row, f"{side}_oauth2_token_cmd", None, problems),
    )


def _command(row: _Row, col: str, instead: str | None, problems: list[str]) -> str | None:
    """A command printing a secret; one that prints a literal is a secret written inline."""
    cmd = _text(row, col, problems)
    if cmd is not None:
        try:
            words = shlex.split(cmd)
        except ValueError:
            words = []
            problems.append(f"{row.at(col)}: unbalanced quotes")
        if len(words) > 1 and Path(words[0]).name in ("echo", "printf"):
            what = "password" if instead else "token"
            problems.append(
                f"{row.at(col)}: a command that prints a literal is a {what} "
                f"written in the manifest; use a password manager's command"
                + (f", or {instead}" if instead else "")
            )
    return cmd


def _check_here(
    row: _Row,
    side: str,
    recipe: SecretRecipe,
    ca_file: str | None,
    env: Mapping[str, str],
    problems: list[str],
) -> None:
    """Checks that only make sense where the accounts will run (no cluster)."""
    if recipe.env and not env.get(recipe.env):
        problems.append(
            f"{row.at(side + '_password_env')}: the environment variable {recipe.env} is not set"
        )
    if recipe.file and not recipe.env:
        p = Path(recipe.file).expanduser()
        if not p.is_file() or not os.access(p, os.R_OK):
            problems.append(f"{row.at(side + '_password_file')}: cannot read {p}")
    if ca_file:
        p = Path(ca_file).expanduser()
        if not p.is_file():
            problems.append(f"{row.at(side + '_ca_file')}: no such file {p}")


def _options(row: _Row, problems: list[str]) -> dict[str, Any]:
    """The job's options in a row, each read as its kind says, then checked: every date and
    size first, then the lists (map, flags)."""
    readers: dict[str, Callable[[_Row, str, list[str]], Any]] = {
        TEXT: _text,
        LIST: _list,
        BOOL: _bool,
    }
    columns = [(name, opt) for name, opt in declared(CopyJob) if opt.column]
    values = {name: readers[opt.kind](row, name, problems) for name, opt in columns}
    for name, opt in sorted(columns, key=lambda column: column[1].check is not None):
        if (problem := opt.problem(values[name], name)) is not None:
            problems.append(f"{row.at(name)}: {problem}")
    return values


# -- the ledger: what the batch did, per account -----------------------------------------------

DONE, PARTIAL, FAILED, INTERRUPTED, NOT_RUN, RUNNING = (
    "done",
    "partial",
    "failed",
    "interrupted",
    "not run",
    "running",
)
#: Statuses that make the batch exit 1.
BAD = (PARTIAL, FAILED)

_LEDGER_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    name TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    journal TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    copied INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    seconds REAL NOT NULL DEFAULT 0,
    error TEXT,
    worker TEXT,
    runs INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
"""


@dataclass(frozen=True)
class LedgerEntry:
    name: str
    fingerprint: str
    journal: str
    status: str
    copied: int
    skipped: int
    failed: int
    bytes: int
    seconds: float
    error: str | None
    worker: str | None
    runs: int


class Ledger:
    """``batch.sqlite`` in the state directory; only the batch's client writes it, and a lock
    keeps a second batch off the same state directory."""

    def __init__(self, state_dir: Path, db: sqlite3.Connection, lock_fd: int) -> None:
        self.state_dir = state_dir
        self._db = db
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, state_dir: Path) -> Ledger:
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            (state_dir / "journals").mkdir(exist_ok=True, mode=0o700)
            lock_fd = os.open(state_dir / "batch.lock", os.O_CREAT | os.O_RDWR, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"cannot use the state directory {state_dir}: {exc.strerror}; "
                "choose another with --state-dir"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise ConfigError(
                f"another migrator batch is using the state directory {state_dir}; "
                "wait for it to finish"
            ) from None
        path = state_dir / "batch.sqlite"
        try:
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # No fsync a write (5 ms an account, on the client's one thread): a power cut can
            # lose the last rows, and then the plan runs those accounts again, which their
            # journals make a no-op (a 'done' row is trusted only when the journal agrees).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.executescript(_LEDGER_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            os.close(lock_fd)
            raise ConfigError(f"cannot use the batch ledger {path}: {exc}") from None
        return cls(state_dir, db, lock_fd)

    def close(self) -> None:
        self._db.close()
        os.close(self._lock_fd)

    def journal_path(self, account: Account) -> Path:
        return self.state_dir / "journals" / account.journal

    def entry(self, name: str) -> LedgerEntry | None:
        row = self._db.execute(
            "SELECT name, fingerprint, journal, status, copied, skipped, failed, bytes, seconds, "
            "error, worker, runs FROM accounts WHERE name=?",
            (name,),
        ).fetchone()
        return LedgerEntry(*row) if row else None

    def started(self, account: Account) -> None:
        self._db.execute(
            "INSERT INTO accounts(name, fingerprint, journal, source, target, status, updated) "
            "VALUES (?, ?, ?, ?, ?, 'running', ?) ON CONFLICT(name) DO UPDATE SET "
            "fingerprint=excluded.fingerprint, journal=excluded.journal, source=excluded.source, "
            "target=excluded.target, status='running', updated=excluded.updated",
            (
                account.name,
                account.fingerprint,
                account.journal,
                account.source,
                account.target,
                time.time(),
            ),
        )

    def running_on(self, name: str, worker: str | None) -> None:
        """Note which worker has a running account (a retried task moves it)."""
        self._db.execute(
            "UPDATE accounts SET worker=?, updated=? WHERE name=? AND status='running'",
            (worker, time.time(), name),
        )

    def record(self, result: AccountResult) -> None:
        self._db.execute(
            "UPDATE accounts SET status=?, copied=?, skipped=?, failed=?, bytes=?, seconds=?, "
            "error=?, worker=?, runs=runs+1, updated=? WHERE name=?",
            (
                result.status,
                result.copied,
                result.skipped,
                result.failed,
                result.bytes,
                result.seconds,
                result.error,
                result.worker,
                time.time(),
                result.name,
            ),
        )


def journal_finished(path: Path) -> bool:
    """True when the account's journal says its last run completed (status 'done')."""
    summary = Journal.summary(path)
    return summary is not None and summary.finished


def journal_copied(path: Path, batch: str) -> tuple[int, int] | None:
    """(messages, bytes) that reached the account's target during batch run ``batch``, by its
    journal (see Journal.copied_in); None when that run never began to copy it."""
    summary = Journal.summary(path, batch)
    return None if summary is None else summary.copied


# -- results -------------------------------------------------------------------------------------


@dataclass
class AccountResult:
    name: str
    source: str
    target: str
    status: str
    #: False when the account was not run this time (finished or failed before, or not reached).
    ran: bool = True
    copied: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    worker: str | None = None
    journal: str | None = None

    @property
    def shown_status(self) -> str:
        if self.ran or self.status == NOT_RUN:
            return self.status
        return f"{self.status} before"


@dataclass
class BatchResult:
    accounts: list[AccountResult]
    seconds: float
    interrupted: bool = False
    #: Accounts this run started.
    ran: int = 0

    def count(self, status: str) -> int:
        return sum(a.status == status for a in self.accounts)

    def total(self, attribute: str) -> int:
        return sum(getattr(a, attribute) for a in self.accounts)

    @property
    def ok(self) -> bool:
        return not self.interrupted and not any(a.status in BAD for a in self.accounts)


# -- planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """Which accounts a rerun takes up again (CLI: --retry-failed, --only-failed, --refresh)."""

    retry_failed: bool = False
    only_failed: bool = False
    refresh: bool = False


@dataclass
class Plan:
    run: list[Account]
    kept: dict[str, AccountResult]  # name -> its result from before, not run this time


def plan(accounts: Sequence[Account], ledger: Ledger, selection: Selection) -> Plan:
    """Decide which accounts run: a finished account costs one ledger row and one look at its
    journal; a failed one waits for --retry-failed; everything else (new, interrupted, left
    'running' by a batch that was killed, or whose selection changed) runs."""
    to_run: list[Account] = []
    kept: dict[str, AccountResult] = {}
    for account in accounts:
        before = ledger.entry(account.name)
        same = before is not None and before.fingerprint == account.fingerprint
        journal = ledger.journal_path(account)
        finished = (
            same and before is not None and before.status == DONE and journal_finished(journal)
        )
        failed = same and before is not None and before.status in BAD
        if selection.only_failed:
            run = failed
        elif finished:
            run = selection.refresh
        elif failed:
            run = selection.retry_failed
        else:
            run = True
        if run:
            to_run.append(account)
        else:
            status = before.status if same and before is not None else NOT_RUN
            kept[account.name] = AccountResult(
                account.name,
                account.source,
                account.target,
                status,
                ran=False,
                error=before.error if same and before is not None else None,
                journal=str(journal),
                worker=None,
            )
    return Plan(to_run, kept)


class HostSlots:
    """Accounts running per server host, against each host's cap."""

    def __init__(self, limit: Callable[[str], int]) -> None:
        self._limit = limit
        self._busy: Counter[str] = Counter()

    def free(self, hosts: Iterable[str]) -> bool:
        return all(self._busy[h] < self._limit(h) for h in hosts)

    def take(self, hosts: Iterable[str]) -> None:
        self._busy.update(hosts)

    def release(self, hosts: Iterable[str]) -> None:
        self._busy.subtract(hosts)

    def busy(self, host: str) -> int:
        return self._busy[host]


def next_ready(pending: Sequence[Account], slots: HostSlots) -> int | None:
    """The first pending account (manifest order) whose hosts all have a free slot."""
    for i, account in enumerate(pending):
        if slots.free(account.hosts):
            return i
    return None


def host_limits(
    max_per_host: int | None, profile_limits: Mapping[str, int] | None = None
) -> Callable[[str], int]:
    """--max-per-host when given; else the connection limit of the provider profile serving the
    host (imap.gmail.com: gmail's); else DEFAULT_PER_HOST."""
    if max_per_host is not None:
        return lambda host: max_per_host
    limits = dict(profile_limits or {})
    return lambda host: limits.get(host, DEFAULT_PER_HOST)


# -- one account, on a worker ------------------------------------------------------------------


@dataclass(frozen=True)
class AccountTask:
    """What a worker gets: plain data and recipes, never a secret."""

    name: str
    source: str
    target: str
    job: CopyJob
    settings: RunSettings
    journal: str
    #: The batch's tag: the Dask topic its events go to, and what stop_accounts() stops.
    topic: str | None = None
    #: How long to wait for the journal's lock (a dead client's task may still be finishing).
    lock_wait: float = 120.0


class _EventReporter:
    """The engine's reporter on a worker: progress sent to the client as Dask events, at most a
    few per second."""

    def __init__(self, send: Callable[[dict[str, Any]], None], name: str) -> None:
        self._send = send
        self._name = name
        self._lock = threading.Lock()
        self._last = 0.0
        self.messages = self.messages_total = self.bytes = self.bytes_total = 0

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        self._send(
            {
                "kind": "progress",
                "account": self._name,
                "messages": self.messages,
                "messages_total": self.messages_total,
                "bytes": self.bytes,
                "bytes_total": self.bytes_total,
            }
        )

    def planned(self, plans: Sequence[FolderPlan]) -> None:
        pass

    def folder_started(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        with self._lock:
            self.messages_total += messages
            self.bytes_total += nbytes
            self._progress(force=True)

    def advanced(self, plan: FolderPlan, messages: int, nbytes: int) -> None:
        with self._lock:
            self.messages += messages
            self.bytes += nbytes
            self._progress()

    def folder_finished(self, stats: Any) -> None:
        with self._lock:
            self._progress(force=True)

    def notice(self, text: str) -> None:
        self._send({"kind": "notice", "account": self._name, "text": text})


def _first_error(summary: Any) -> str | None:
    for folder in summary.folders:
        if folder.error:
            return f"{folder.plan.source_name}: {folder.error}"
        for msg_id, reason in folder.failures:
            return f"{folder.plan.source_name} #{msg_id}: {reason}"
    return None


def run_account(task: AccountTask) -> AccountResult:
    """Copy one account here (a Dask worker, or any process): its secrets are resolved here from
    the recipes; a MigratorError becomes a failed result; anything else propagates, so that Dask
    retries the task."""
    worker = _current_worker()
    address = getattr(worker, "address", None)

    def send(message: dict[str, Any]) -> None:
        if worker is not None and task.topic:
            with contextlib.suppress(Exception):
                worker.log_event(task.topic, message)

    stop = threading.Event()
    result = AccountResult(
        task.name, task.source, task.target, FAILED, worker=address, journal=task.journal
    )
    watching = _watch_client(worker, stop) if worker is not None else contextlib.nullcontext()
    with _stoppable(task.topic, stop), watching:
        if stop.is_set():  # the batch was stopped before this account started: not run
            result.status, result.worker = NOT_RUN, None
            return result
        send({"kind": "started", "account": task.name, "worker": address})
        started = time.monotonic()
        reporter = _EventReporter(send, task.name)
        path = Path(task.journal)
        batch = task.topic or uuid.uuid4().hex
        try:
            Journal.wait_unlocked(path, task.lock_wait, stop)
            _begin_attempt(path, batch)
            summary = run_job(task.job, task.settings, path, reporter, stop)
        except MigratorError as exc:
            result.error = str(exc)
        else:
            result.status = outcome(summary)
            result.copied = summary.total("copied")
            result.skipped = summary.total("skipped")
            result.failed = summary.total("failed")
            result.bytes = summary.total("bytes")
            result.error = _first_error(summary)
        _count_from_journal(result, batch)
        result.seconds = time.monotonic() - started
        return result


def _begin_attempt(path: Path, batch: str) -> None:
    journal = Journal.open(path)
    try:
        journal.begin_attempt(batch)
    finally:
        journal.close()


def _count_from_journal(result: AccountResult, batch: str) -> None:
    """Copied and bytes as the journal has them for this batch run, all attempts together (an
    earlier attempt, on a worker that died, counts); what the engine counted as skipped because
    an earlier attempt had copied it is not skipped."""
    if result.journal is None:
        return
    counted = journal_copied(Path(result.journal), batch)
    if counted is None:
        return
    copied, nbytes = counted
    result.skipped = max(0, result.skipped - max(0, copied - result.copied))
    result.copied, result.bytes = copied, nbytes


def _current_worker() -> Any:
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:  # not running in a worker
        return None


# Accounts running in this process, by batch (the batch's topic): what stop_accounts() stops.
# A plain threading.Event per account works in any thread; no Dask object is shared across
# threads (a distributed.Event made in the task's thread cannot be waited on in another).
_running_lock = threading.Lock()
_running: dict[str, set[threading.Event]] = {}
_stopped: set[str] = set()


@contextlib.contextmanager
def _stoppable(batch: str | None, stop: threading.Event) -> Iterator[None]:
    """Register ``stop`` as one of ``batch``'s running accounts here, for stop_accounts()."""
    if batch is None:
        yield
        return
    with _running_lock:
        _running.setdefault(batch, set()).add(stop)
        if batch in _stopped:
            stop.set()
    try:
        yield
    finally:
        with _running_lock:
            events = _running.get(batch)
            if events is not None:
                events.discard(stop)
                if not events:
                    del _running[batch]


def stop_accounts(batch: str) -> int:
    """Stop every account of ``batch`` running in this process (and any that starts later): the
    engine commits the batch of messages in flight and returns. The client calls it on every
    worker (Client.run) on Ctrl-C or SIGTERM; returns how many accounts it reached here."""
    with _running_lock:
        _stopped.add(batch)
        events = list(_running.get(batch, ()))
    for event in events:
        event.set()
    return len(events)


#: Seconds between two looks of an account's watcher at its task and its worker.
WATCH_INTERVAL = 0.5


# Accounts of this process that the watcher looks after: stop event -> (worker, task key).
_watched: dict[threading.Event, tuple[Any, Any]] = {}
_watcher: threading.Thread | None = None


@contextlib.contextmanager
def _watch_client(worker: Any, stop: threading.Event) -> Iterator[None]:
    """While the account runs, stop it when nobody waits for it any more: its task was cancelled
    or released (the client left or was killed, and the scheduler forgot its tasks), or the
    worker is closing. One watcher thread per process looks at every account every
    WATCH_INTERVAL, reading only the worker's own state (so it works from any thread). Not a
    thread per account: on Python 3.11 before 3.11.9, a thread ending while Dask's sampling
    profiler runs can deadlock the process (CPython gh-106883), so threads are not churned."""
    global _watcher
    key = None
    with contextlib.suppress(Exception):
        key = worker.get_current_task()
    if key is None:
        yield
        return
    with _running_lock:
        _watched[stop] = (worker, key)
        if _watcher is None or not _watcher.is_alive():
            _watcher = threading.Thread(
                target=_watch_accounts, name="migrator-account-watch", daemon=True
            )
            _watcher.start()
    try:
        yield
    finally:
        with _running_lock:
            _watched.pop(stop, None)


def _wanted(worker: Any, key: Any) -> bool:
    try:
        task = worker.state.tasks.get(key)
        state = getattr(task, "state", None)
        status = getattr(getattr(worker, "status", None), "name", "running")
    except Exception:  # the worker's state is being torn down: it is closing
        return False
    return state in ("executing", "long-running") and status in ("running", "paused")


def _watch_accounts() -> None:
    while True:
        time.sleep(WATCH_INTERVAL)
        with _running_lock:
            watched = list(_watched.items())
        for stop, (worker, key) in watched:
            if not stop.is_set() and not _wanted(worker, key):
                stop.set()


# -- the client: schedule accounts on the cluster ------------------------------------------------


@dataclass(frozen=True)
class BatchSettings:
    state_dir: Path
    jobs: int = 4
    max_per_host: int | None = None
    #: A Dask scheduler's address (tcp://HOST:8786, tls://...); None: an in-process cluster.
    cluster: str | None = None
    run: RunSettings = field(default_factory=RunSettings)
    selection: Selection = field(default_factory=Selection)
    #: Dask retries of a task that raised (a worker's death is the scheduler's own retry).
    task_retries: int = 2
    lock_wait: float = 120.0
    #: After an interrupt, how long running accounts get to finish their batch and stop.
    grace: float = 30.0


class BatchObserver(Protocol):
    """What the batch tells its caller; every call comes from the thread that called run_batch."""

    def planned(self, plan: Plan, total: int) -> None: ...

    def account_started(self, name: str, worker: str | None) -> None: ...

    def account_progress(
        self, name: str, messages: int, messages_total: int, nbytes: int, bytes_total: int
    ) -> None: ...

    def account_finished(self, result: AccountResult) -> None: ...

    def notice(self, text: str) -> None: ...


class NullObserver:
    def planned(self, plan: Plan, total: int) -> None:
        pass

    def account_started(self, name: str, worker: str | None) -> None:
        pass

    def account_progress(
        self, name: str, messages: int, messages_total: int, nbytes: int, bytes_total: int
    ) -> None:
        pass

    def account_finished(self, result: AccountResult) -> None:
        pass

    def notice(self, text: str) -> None:
        pass


def default_state_dir(manifest: Path) -> Path:
    """Under the user's state directory: batch/<manifest file name without suffix>/."""
    from platformdirs import user_state_path

    return user_state_path("migrator") / "batch" / _slug(manifest.stem)


def run_batch(
    manifest: Manifest, settings: BatchSettings, observer: BatchObserver | None = None
) -> BatchResult:
    """Plan against the ledger, run what needs running, and return every account's result (in
    manifest order). Ctrl-C (KeyboardInterrupt in this thread) stops the running accounts at
    their next batch of messages and returns with ``interrupted`` set."""
    observer = observer or NullObserver()
    started = time.monotonic()
    ledger = Ledger.open(settings.state_dir)
    try:
        the_plan = plan(manifest.accounts, ledger, settings.selection)
        observer.planned(the_plan, len(the_plan.run))
        results = dict(the_plan.kept)
        interrupted = False
        if the_plan.run:
            runner = _Runner(manifest.accounts, the_plan.run, settings, ledger, observer)
            ran, interrupted = runner.run()
            results.update(ran)
    finally:
        ledger.close()
    return BatchResult(
        accounts=[results[a.name] for a in manifest.accounts],
        seconds=time.monotonic() - started,
        interrupted=interrupted,
        ran=len(the_plan.run),
    )


class _Runner:
    def __init__(
        self,
        accounts: Sequence[Account],
        to_run: list[Account],
        settings: BatchSettings,
        ledger: Ledger,
        observer: BatchObserver,
    ) -> None:
        self.to_run = to_run
        self.settings = settings
        self.ledger = ledger
        self.observer = observer
        known = connection_limits() if settings.max_per_host is None else {}
        self.slots = HostSlots(host_limits(settings.max_per_host, known))
        self.results: dict[str, AccountResult] = {}
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.wake = threading.Event()
        tag = uuid.uuid4().hex[:12]
        self.topic = f"migrator-batch-{tag}"

    def run(self) -> tuple[dict[str, AccountResult], bool]:
        client, cluster = _connect(self.settings)
        interrupted = False
        try:
            client.subscribe_topic(self.topic, self._on_event)
            pending: deque[Account] = deque(self.to_run)
            running: dict[Any, Account] = {}
            try:
                while pending or running:
                    self._submit(client, pending, running)
                    self.wake.wait(0.25)
                    self.wake.clear()
                    self._drain()
                    self._collect(running)
            except KeyboardInterrupt:
                interrupted = True
                self._stop(client, pending, running)
        finally:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(self.topic)
            with contextlib.suppress(Exception):
                client.close()
            if cluster is not None:
                with contextlib.suppress(Exception):
                    cluster.close()
        return self.results, interrupted

    def _on_event(self, event: Any) -> None:
        """Called on the Dask client's thread: hand the event to the caller's thread."""
        message = event[1] if isinstance(event, tuple | list) else event
        if isinstance(message, dict):
            self.events.put(message)
            self.wake.set()

    def _drain(self) -> None:
        while True:
            try:
                m = self.events.get_nowait()
            except queue.Empty:
                return
            name = m.get("account", "")
            if name in self.results:
                continue
            kind = m.get("kind")
            if kind == "started":
                self.ledger.running_on(name, m.get("worker"))
                self.observer.account_started(name, m.get("worker"))
            elif kind == "progress":
                self.observer.account_progress(
                    name, m["messages"], m["messages_total"], m["bytes"], m["bytes_total"]
                )
            elif kind == "notice":
                self.observer.notice(f"{name}: {m.get('text', '')}")

    def _submit(self, client: Any, pending: deque[Account], running: dict[Any, Account]) -> None:
        while pending and len(running) < self.settings.jobs:
            i = next_ready(pending, self.slots)
            if i is None:
                return
            account = pending[i]
            del pending[i]
            self.slots.take(account.hosts)
            self.ledger.started(account)
            task = AccountTask(
                name=account.name,
                source=account.source,
                target=account.target,
                job=account.job,
                settings=self.settings.run,
                journal=str(self.ledger.journal_path(account)),
                topic=self.topic,
                lock_wait=self.settings.lock_wait,
            )
            future = client.submit(
                run_account,
                task,
                key=f"migrator-account-{_slug(account.name, 40)}-{uuid.uuid4().hex[:8]}",
                pure=False,
                retries=self.settings.task_retries,
            )
            future.add_done_callback(lambda _: self.wake.set())
            running[future] = account

    def _collect(self, running: dict[Any, Account]) -> None:
        for future in [f for f in running if f.done()]:
            account = running.pop(future)
            result = _outcome(future, account, self.ledger)
            if result.status == FAILED and not result.copied:
                # no result came back (a worker lost for good, ...): what its journal says
                _count_from_journal(result, self.topic)
            self._finish(account, result)

    def _finish(self, account: Account, result: AccountResult) -> None:
        self.slots.release(account.hosts)
        self.results[account.name] = result
        self.ledger.record(result)
        self._drain()
        self.observer.account_finished(result)

    def _stop(self, client: Any, pending: deque[Account], running: dict[Any, Account]) -> None:
        """Ask running accounts to stop after their current batch, give them ``grace`` seconds
        to say so, then leave the rest as interrupted (their journals keep what they did)."""
        _stop_everywhere(client, self.topic, local=self.settings.cluster is None)
        self.observer.notice(
            f"stopping: {plural(len(running), 'running account')} "
            f"{'finishes its' if len(running) == 1 else 'finish their'} current batch of messages"
        )
        deadline = time.monotonic() + self.settings.grace
        try:
            while running and time.monotonic() < deadline:
                self.wake.wait(0.25)
                self.wake.clear()
                self._drain()
                self._collect(running)
        except KeyboardInterrupt:
            pass
        for future, account in list(running.items()):
            with contextlib.suppress(Exception):
                future.cancel()
            abandoned = AccountResult(
                account.name,
                account.source,
                account.target,
                INTERRUPTED,
                error="still running when the batch was interrupted",
                journal=str(self.ledger.journal_path(account)),
            )
            _count_from_journal(abandoned, self.topic)  # what it copied until now
            self._finish(account, abandoned)
        running.clear()
        for account in pending:
            self.results[account.name] = AccountResult(
                account.name,
                account.source,
                account.target,
                NOT_RUN,
                ran=False,
                journal=str(self.ledger.journal_path(account)),
            )


def _stop_everywhere(client: Any, batch: str, local: bool) -> None:
    """stop_accounts(batch) where the accounts run: here for the in-process cluster, on every
    worker of a real one (a worker that cannot be reached in a few seconds stops its accounts
    by itself once this client is gone: see _watch_client)."""
    if local:
        stop_accounts(batch)
        return

    def reach() -> None:
        with contextlib.suppress(Exception):
            client.run(stop_accounts, batch, on_error="ignore")

    sender = threading.Thread(target=reach, name="migrator-batch-stop", daemon=True)
    sender.start()
    sender.join(STOP_REACH_SECONDS)


#: How long the client tries to reach the workers with a stop before it relies on them noticing
#: that it left.
STOP_REACH_SECONDS = 5.0


def _outcome(future: Any, account: Account, ledger: Ledger) -> AccountResult:
    journal = str(ledger.journal_path(account))
    failed = AccountResult(account.name, account.source, account.target, FAILED, journal=journal)
    status = getattr(future, "status", "")
    if status == "finished":
        try:
            result: AccountResult = future.result()
        except Exception as lost:  # the result could not come back
            failed.error = f"{type(lost).__name__}: {lost}"
            return failed
        return result
    if status == "cancelled":
        failed.error = "cancelled by the Dask scheduler (was it restarted?); rerun the batch"
        return failed
    error: BaseException | None
    try:
        error = future.exception()
    except Exception as other:
        error = other
    name = type(error).__name__
    if name == "KilledWorker":
        failed.error = (
            "the workers running it died repeatedly (out of memory?); rerun the batch to resume"
        )
    elif isinstance(error, ModuleNotFoundError) and "migrator" in str(error):
        failed.error = f"{error}: install mailbox-migrator on every Dask worker"
    else:
        failed.error = f"internal error: {name}: {error} (rerun the batch to resume)"
    return failed


def _connect(settings: BatchSettings) -> tuple[Any, Any]:
    """A Dask client: to the scheduler at ``settings.cluster``, or to a new in-process cluster
    with one worker of ``jobs`` threads."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(
            "migrator batch needs Dask: pip install 'mailbox-migrator[batch]' (dask[distributed])"
        ) from None
    if settings.cluster:
        if not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://", settings.cluster):
            raise ConfigError(
                f"--cluster {settings.cluster}: write the scheduler's address, "
                "tcp://HOST:8786 or tls://HOST:8786"
            )
        try:
            return Client(settings.cluster, timeout="15s", set_as_default=False), None
        except (OSError, TimeoutError) as exc:
            raise ConnectError(
                f"cannot reach the Dask scheduler at {settings.cluster} ({exc}); start it with "
                "`dask scheduler` and workers with `dask worker ADDRESS`"
            ) from None
    import dask

    # No sampling profiler (sys._current_frames every 10 ms): nobody reads its figures here, and
    # on Python 3.11 before 3.11.9 it can deadlock with a thread that ends (CPython gh-106883),
    # as the accounts' threads do all the time: seen on a batch of 2,000 accounts.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=settings.jobs,
            processes=False,
            dashboard_address=None,
            memory_limit=0,
        )
    try:
        return Client(cluster, set_as_default=False), cluster
    except BaseException:
        cluster.close()
        raise
