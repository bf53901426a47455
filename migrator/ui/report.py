"""What the user reads when `copy`, `verify`, `folders`, `status`, `check` and `profiles` end:
tables that fit an 80-column terminal, and JSON objects (typed below). Pure functions from
results to text; the CLI decides where the text goes. `batch`'s are in ui/batch.py."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

from migrator.checkpoint import Journal
from migrator.engine import RunSummary
from migrator.profiles import Profile, ProfileCatalog
from migrator.ratelimit import is_final_refusal
from migrator.ui.text import human_bytes, table
from migrator.verify import FolderCheck, MessageInfo, describe_flags, summary

#: Failed messages a copy's table names per folder; the journal (`migrator status`) has them all.
SHOWN_FAILURES = 20
#: The last runs `migrator status` lists.
SHOWN_RUNS = 5

# -- copy -----------------------------------------------------------------------------------


class FailureJson(TypedDict):
    id: str
    reason: str


class CopyFolderJson(TypedDict):
    source: str
    target: str
    copied: int
    skipped: int
    failed: int
    bytes: int
    deleted: int
    error: str | None
    failures: list[FailureJson]
    changed: int
    flagged: int
    moved: int
    removed: int


class CopyJson(TypedDict):
    copied: int
    skipped: int
    failed: int
    bytes: int
    seconds: float
    dry_run: bool
    interrupted: bool
    deleted: int
    changed: int
    changes: dict[str, int]
    flagged: int
    moved: int
    removed: int
    stopped: str | None
    notices: list[str]
    folders: list[CopyFolderJson]


def copy_table(summary: RunSummary) -> str:
    verb = "would copy" if summary.dry_run else "copied"
    rows = [
        [
            f.plan.source_name,
            f.plan.target_name,
            str(f.copied),
            str(f.skipped),
            str(f.failed) + ("!" if f.error else ""),
            human_bytes(f.bytes),
        ]
        for f in summary.folders
    ]
    totals = [
        "total",
        "",
        *(str(summary.total(k)) for k in ("copied", "skipped", "failed")),
        human_bytes(summary.total("bytes")),
    ]
    head = ["source folder", "target folder", verb, "skipped", "failed", "size"]
    lines = table(head, [*rows, totals], text_columns=2, total=True).splitlines()
    footer = f"{summary.seconds:.1f}s"
    deleted = summary.total("deleted")
    if deleted:
        footer += f"; {deleted} deleted from the source"
    converged = [
        (summary.total(key), text)
        for key, text in (
            ("flagged", "flags updated"),
            ("moved", "moved"),
            ("removed", "removed from the target"),
        )
    ]
    if any(n for n, _ in converged):
        prefix = "would have: " if summary.dry_run else ""
        footer += "; " + prefix + ", ".join(f"{n} {text}" for n, text in converged if n)
    if summary.interrupted:
        footer += "; interrupted: run the same command again to finish"
    lines.append(footer)
    changes = summary.changes()
    if changes:
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(changes.items()))
        lines.append(f"changed by message rules: {summary.total('changed')} ({counts})")
    if summary.stopped:
        lines.append(f"stopped: {summary.stopped}")
    for folder in summary.folders:
        for msg_id, reason in folder.failures[:SHOWN_FAILURES]:
            lines.append(f"failed: {folder.plan.source_name} #{msg_id}: {reason}")
        if len(folder.failures) > SHOWN_FAILURES:
            more = len(folder.failures) - SHOWN_FAILURES
            lines.append(f"failed: {folder.plan.source_name}: {more} more")
        if folder.error:
            lines.append(f"folder not copied: {folder.plan.source_name}: {folder.error}")
    return "\n".join(lines)


def copy_json(summary: RunSummary) -> CopyJson:
    return {
        "copied": summary.total("copied"),
        "skipped": summary.total("skipped"),
        "failed": summary.total("failed"),
        "bytes": summary.total("bytes"),
        "seconds": round(summary.seconds, 3),
        "dry_run": summary.dry_run,
        "interrupted": summary.interrupted,
        "deleted": summary.total("deleted"),
        "changed": summary.total("changed"),
        "changes": dict(summary.changes()),
        "flagged": summary.total("flagged"),
        "moved": summary.total("moved"),
        "removed": summary.total("removed"),
        "stopped": summary.stopped,
        # What the run said on the way (folders left out, renamed, a reconnect), as on stderr.
        "notices": list(summary.notices),
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
                "changed": f.changed,
                "flagged": f.flagged,
                "moved": f.moved,
                "removed": f.removed,
            }
            for f in summary.folders
        ],
    }


# -- verify ---------------------------------------------------------------------------------


class MessageJson(TypedDict):
    folder: str
    id: str
    message_id: str
    subject: str
    date: str | None
    flags: list[str]


class FlagDifferenceJson(TypedDict):
    message: MessageJson
    only_source: list[str]
    only_target: list[str]


class VerifyFolderJson(TypedDict):
    sources: list[str]
    target: str
    source_count: int
    target_count: int
    missing: list[MessageJson]
    extra: list[MessageJson]
    flag_differences: list[FlagDifferenceJson]
    error: str | None


def _message_line(kind: str, info: MessageInfo) -> str:
    date = info.date.strftime("%Y-%m-%d %H:%M") if info.date else "-"
    return (
        f"{kind}: {info.folder} #{info.id} {info.message_id or '(no Message-ID)'} "
        f"{date} {info.subject!r}"
    )


def verify_table(checks: Sequence[FolderCheck], list_missing: bool) -> str:
    rows = [
        [
            c.target if c.sources == [c.target] else f"{', '.join(c.sources)} -> {c.target}",
            str(c.source_count),
            str(c.target_count),
            str(len(c.missing)),
            str(len(c.extra)),
            str(len(c.flag_differences)),
        ]
        for c in checks
    ]
    totals = summary(checks)
    rows.append(
        [
            "total",
            *(str(totals[k]) for k in ("source", "target", "missing", "extra")),
            str(totals["flag_differences"]),
        ]
    )
    head = ["folder", "source", "target", "missing", "extra", "flags"]
    lines = table(head, rows, total=True).splitlines()
    for check in checks:
        if check.error:
            lines.append(f"error: {check.target}: {check.error}")
        for info, only_source, only_target in check.flag_differences:
            lines.append(
                _message_line("flags differ", info)
                + f": source has {describe_flags(only_source)}, "
                f"target has {describe_flags(only_target)}"
            )
        if list_missing:
            lines.extend(_message_line("missing", info) for info in check.missing)
    verdict = "nothing missing" if totals["missing"] == 0 else f"{totals['missing']} missing"
    if totals["missing"] and not list_missing:
        verdict += " (--list names them)"
    if totals["flag_differences"]:
        verdict += (
            f"; flags differ on {totals['flag_differences']} message(s) (listed above; "
            "--ignore-flags compares presence only)"
        )
    lines.append(verdict)
    return "\n".join(lines)


def _message_json(i: MessageInfo) -> MessageJson:
    return {
        "folder": i.folder,
        "id": i.id,
        "message_id": i.message_id,
        "subject": i.subject,
        "date": i.date.isoformat() if i.date else None,
        "flags": sorted(i.flags),
    }


class VerifyJson(TypedDict):
    #: verify.summary's counts
    source: int
    target: int
    missing: int
    extra: int
    flag_differences: int
    errors: int
    ok: bool
    folders: list[VerifyFolderJson]


def verify_json(checks: Sequence[FolderCheck]) -> VerifyJson:
    totals = summary(checks)
    folders: list[VerifyFolderJson] = [
        {
            "sources": c.sources,
            "target": c.target,
            "source_count": c.source_count,
            "target_count": c.target_count,
            "missing": [_message_json(i) for i in c.missing],
            "extra": [_message_json(i) for i in c.extra],
            "flag_differences": [
                {
                    "message": _message_json(i),
                    "only_source": sorted(a),
                    "only_target": sorted(b),
                }
                for i, a, b in c.flag_differences
            ],
            "error": c.error,
        }
        for c in checks
    ]
    return {
        "source": totals["source"],
        "target": totals["target"],
        "missing": totals["missing"],
        "extra": totals["extra"],
        "flag_differences": totals["flag_differences"],
        "errors": totals["errors"],
        "ok": totals["missing"] == 0 and totals["flag_differences"] == 0,
        "folders": folders,
    }


# -- folders --------------------------------------------------------------------------------


class FolderRow(TypedDict):
    """One folder as `migrator folders` lists it (and prints it with --json)."""

    folder: str
    messages: int
    bytes: int
    special_use: str | None
    selectable: bool
    selected: bool
    namespace: str
    target: str | None


def folders_table(rows: Sequence[FolderRow], with_target: bool) -> str:
    """The folders, then a line of totals; with_target adds where `copy` would put each."""
    head = ["folder", "messages", "size", "use"] + (["target"] if with_target else [])
    body = []
    for r in rows:
        line = [
            r["folder"],
            str(r["messages"]),
            human_bytes(r["bytes"]),
            (r["special_use"] or "").lstrip("\\") or ("(no mail)" if not r["selectable"] else ""),
        ]
        if with_target:
            line.append(r["target"] or "(not copied)")
        body.append(line)
    total = sum(r["messages"] for r in rows)
    size = human_bytes(sum(r["bytes"] for r in rows))
    return table(head, body) + f"\n{len(rows)} folders, {total} messages, {size}"


# -- check ----------------------------------------------------------------------------------


def facts_text(facts: Sequence[tuple[str, str]]) -> str:
    """`migrator check`: one fact a line, the values aligned."""
    width = max(len(k) for k, _ in facts)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in facts)


# -- profiles -------------------------------------------------------------------------------


#: One profile in `profiles list --json` ("from" is a keyword, hence the functional form):
#: "from" is "shipped", "user" or "user (overrides shipped)".
ProfileEntryJson = TypedDict("ProfileEntryJson", {"name": str, "description": str, "from": str})


class ProfilesJson(TypedDict):
    profiles: list[ProfileEntryJson]
    user_directory: str


class SettingJson(TypedDict):
    key: str
    value: object
    source: str
    note: str


ProfileJson = TypedDict("ProfileJson", {"name": str, "from": str, "settings": list[SettingJson]})


def profiles_json(catalog: ProfileCatalog) -> ProfilesJson:
    return {
        "profiles": [
            {"name": p.name, "description": p.description, "from": catalog.origin(p.name)}
            for p in catalog.all()
        ],
        "user_directory": str(catalog.directories[-1]),
    }


def profiles_text(catalog: ProfileCatalog) -> str:
    """A profile a line, marked when it is the user's; then where the user's own go."""
    profiles = catalog.all()
    width = max((len(p.name) for p in profiles), default=0)
    lines = []
    for p in profiles:
        origin = catalog.origin(p.name)
        mark = "" if origin == "shipped" else f" [{origin}]"
        lines.append(f"{p.name.ljust(width)}  {p.description}{mark}")
    lines.append(f"your own profiles: {catalog.directories[-1]}")
    return "\n".join(lines)


def profile_json(catalog: ProfileCatalog, profile: Profile) -> ProfileJson:
    return {
        "name": profile.name,
        "from": catalog.origin(profile.name),
        "settings": [
            {"key": s.key, "value": s.value, "source": s.source, "note": s.note}
            for s in profile.settings
        ],
    }


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def profile_text(catalog: ProfileCatalog, profile: Profile) -> str:
    """The profile's files, then each setting as TOML with the file it is from and its note."""
    shipped = catalog.directories[0]
    lines = [f"profile {profile.name}: {profile.description}"]
    for path in profile.files:
        kind = "shipped" if path.parent == shipped else "yours"
        lines.append(f"  {kind}: {path}")
    for setting in profile.settings:
        kind = "shipped" if Path(setting.source).parent == shipped else "yours"
        lines.append(f"{setting.key} = {_toml_value(setting.value)}  [{kind}]")
        if setting.note:
            lines.append(f"    # {setting.note}")
    return "\n".join(lines)


# -- status ---------------------------------------------------------------------------------


class LastPassJson(TypedDict):
    flagged: int
    moved: int
    removed: int


class StatusFolderJson(TypedDict):
    source: str
    target: str
    copied: int
    skipped: int
    failed: int
    pending: int
    last_pass: LastPassJson


class StatusFailureJson(TypedDict):
    folder: str
    id: str
    reason: str
    attempts: int
    #: "refused" or "retry"
    kind: str


class StatusRunJson(TypedDict):
    id: int
    started: float
    ended: float | None
    status: str
    copied: int
    skipped: int
    failed: int
    bytes: int


class StatusData(TypedDict):
    journal: str | None
    source: str | None
    target: str | None
    folders: list[StatusFolderJson]
    failures: list[StatusFailureJson]
    runs: list[StatusRunJson]


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def status_data(journal: Journal) -> StatusData:
    runs = journal.runs()
    return {
        "journal": str(journal.path) if journal.path else None,
        "source": journal.meta("source"),
        "target": journal.meta("target"),
        "folders": [
            {
                "source": "/".join(c.src_folder),
                "target": "/".join(c.dst_folder),
                "copied": c.done,
                "skipped": c.skipped,
                "failed": c.failed,
                "pending": c.pending,
                "last_pass": {"flagged": c.flagged, "moved": c.moved, "removed": c.removed},
            }
            for c in journal.counts()
        ],
        "failures": [
            {
                "folder": "/".join(f.src_folder),
                "id": f.src_id,
                "reason": f.error,
                "attempts": f.attempts,
                # "refused": the server refused the message itself (a rerun cannot fix that);
                # "retry": a rerun tries it again and may well copy it.
                "kind": "refused" if is_final_refusal(f.error or "") else "retry",
            }
            for f in journal.failures()
        ],
        "runs": [
            {
                "id": r[0],
                "started": r[1],
                "ended": r[2],
                "status": r[3],
                "copied": r[4],
                "skipped": r[5],
                "failed": r[6],
                "bytes": r[7],
            }
            for r in runs
        ],
    }


def status_text(data: StatusData) -> str:
    lines = [f"journal: {data['journal']}", f"{data['source']} -> {data['target']}", ""]
    rows = [
        [
            f["source"],
            f["target"],
            str(f["copied"]),
            str(f["skipped"]),
            str(f["failed"]),
            str(f["pending"]),
        ]
        for f in data["folders"]
    ]
    counts = [[f["copied"], f["skipped"], f["failed"], f["pending"]] for f in data["folders"]]
    totals = ["total", "", *(str(sum(c[i] for c in counts)) for i in range(4))]
    lines += table(
        ["source folder", "target folder", "copied", "skipped", "failed", "pending"],
        [*rows, totals],
        text_columns=2,
        total=True,
    ).splitlines()
    for f in data["folders"]:
        last = f["last_pass"]
        if any(last.values()):
            lines.append(
                f"last pass: {f['source']}: {last['flagged']} flags updated, {last['moved']} "
                f"moved in, {last['removed']} removed"
            )
    for failure in data["failures"]:
        lines.append(
            f"failed: {failure['folder']} #{failure['id']} ({failure['attempts']}x): "
            f"{failure['reason']}"
        )
    refused = sum(1 for f in data["failures"] if f["kind"] == "refused")
    retry = len(data["failures"]) - refused
    if retry:
        lines.append(
            f"{retry} failure(s) a rerun may fix (connection, throttling): run the same copy "
            "command again"
        )
    if refused:
        lines.append(
            f"{refused} message(s) the target refused for good (invalid message, over quota, "
            "too big, no permission): a rerun will not copy them as they are; fix them at the "
            "source, make room or grant the right, or leave them out (--max-size, --exclude)"
        )
    lines.append("")
    for run in data["runs"][-SHOWN_RUNS:]:
        ended = _when(run["ended"]) if run["ended"] else "never (killed, or still running)"
        lines.append(
            f"run {run['id']}: started {_when(run['started'])}, ended {ended}, {run['status']}; "
            f"{run['copied']} copied, {run['failed']} failed"
        )
    if data["runs"]:
        last_run = data["runs"][-1]
        finished = last_run["status"] == "done"
        lines.append(
            "the last run finished"
            if finished
            else f"the last run did not finish ({last_run['status']}): run the same copy "
            "command again"
        )
    return "\n".join(lines)
