"""What the user reads: tables that fit an 80-column terminal, and JSON objects. Pure functions
from results to text; the CLI decides where they go."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Sequence
from typing import Any

from migrator.checkpoint import Journal
from migrator.engine import RunSummary
from migrator.ratelimit import is_final_refusal
from migrator.verify import FolderCheck, describe_flags, summary

WIDTH = 80


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _width(text: str) -> int:
    """Columns a string takes in a terminal (wide CJK counts two, combining marks none)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def _fit(text: str, width: int) -> str:
    if _width(text) <= width:
        return text
    out = ""
    for c in text:
        if _width(out + c) > width - 1:
            break
        out += c
    return out + "…"


def table(head: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1) -> str:
    """Left-aligned text columns first, right-aligned numbers after; the text columns shrink to
    keep the table within WIDTH columns."""
    widths = [max(_width(r[i]) for r in [head, *rows]) for i in range(len(head))]
    over = sum(widths) + 2 * (len(widths) - 1) - WIDTH
    for i in range(text_columns):
        if over <= 0:
            break
        cut = min(over, max(0, widths[i] - 12))
        widths[i] -= cut
        over -= cut

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            cell = _fit(cell, widths[i])
            pad = " " * (widths[i] - _width(cell))
            out.append(cell + pad if i < text_columns else pad + cell)
        return "  ".join(out).rstrip()

    rule = line(["-" * w for w in widths])
    return "\n".join([line(head), rule, *(line(r) for r in rows)])


# -- copy -----------------------------------------------------------------------------------


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
    text = table(head, [*rows, totals], text_columns=2)
    lines = text.splitlines()
    lines.insert(len(lines) - 1, lines[1])
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
        for msg_id, reason in folder.failures[:20]:
            lines.append(f"failed: {folder.plan.source_name} #{msg_id}: {reason}")
        if len(folder.failures) > 20:
            lines.append(f"failed: {folder.plan.source_name}: {len(folder.failures) - 20} more")
        if folder.error:
            lines.append(f"folder not copied: {folder.plan.source_name}: {folder.error}")
    return "\n".join(lines)


def copy_json(summary: RunSummary) -> dict[str, Any]:
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


def _message_line(kind: str, info: Any) -> str:
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
    lines = table(["folder", "source", "target", "missing", "extra", "flags"], rows).splitlines()
    lines.insert(len(lines) - 1, lines[1])
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


def verify_json(checks: Sequence[FolderCheck]) -> dict[str, Any]:
    def info(i: Any) -> dict[str, Any]:
        return {
            "folder": i.folder,
            "id": i.id,
            "message_id": i.message_id,
            "subject": i.subject,
            "date": i.date.isoformat() if i.date else None,
            "flags": sorted(i.flags),
        }

    return {
        **summary(checks),
        "ok": summary(checks)["missing"] == 0 and summary(checks)["flag_differences"] == 0,
        "folders": [
            {
                "sources": c.sources,
                "target": c.target,
                "source_count": c.source_count,
                "target_count": c.target_count,
                "missing": [info(i) for i in c.missing],
                "extra": [info(i) for i in c.extra],
                "flag_differences": [
                    {
                        "message": info(i),
                        "only_source": sorted(a),
                        "only_target": sorted(b),
                    }
                    for i, a, b in c.flag_differences
                ],
                "error": c.error,
            }
            for c in checks
        ],
    }


# -- status ---------------------------------------------------------------------------------


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def status_data(journal: Journal) -> dict[str, Any]:
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


def status_text(data: dict[str, Any]) -> str:
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
    totals = ["total", ""] + [
        str(sum(f[k] for f in data["folders"])) for k in ("copied", "skipped", "failed", "pending")
    ]
    body = table(
        ["source folder", "target folder", "copied", "skipped", "failed", "pending"],
        [*rows, totals],
        text_columns=2,
    ).splitlines()
    body.insert(len(body) - 1, body[1])
    lines += body
    for f in data["folders"]:
        last = f["last_pass"]
        if any(last.values()):
            lines.append(
                f"last pass: {f['source']}: {last['flagged']} flags updated, {last['moved']} "
                f"moved in, {last['removed']} removed"
            )
    for f in data["failures"]:
        lines.append(f"failed: {f['folder']} #{f['id']} ({f['attempts']}x): {f['reason']}")
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
    for run in data["runs"][-5:]:
        ended = _when(run["ended"]) if run["ended"] else "never (killed, or still running)"
        lines.append(
            f"run {run['id']}: started {_when(run['started'])}, ended {ended}, {run['status']}; "
            f"{run['copied']} copied, {run['failed']} failed"
        )
    if data["runs"]:
        last = data["runs"][-1]
        finished = last["status"] == "done"
        lines.append(
            "the last run finished"
            if finished
            else f"the last run did not finish ({last['status']}): run the same copy command again"
        )
    return "\n".join(lines)
