"""`verify`: does the target hold every selected source message? Looks at both stores, trusts
neither the journal nor the copy's own report.

Messages are matched by a digest of their bytes with line endings normalised (an mbox or Maildir
stores LF, IMAP sends CRLF), or by Message-ID for targets known to rewrite messages. Matching is
a multiset: two identical source messages need two copies.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from migrator.errors import FolderError
from migrator.filters import MessageFilter
from migrator.folders import FolderMap, FolderPlan, keep_recorded
from migrator.model import UNCOPIED_FLAGS, FolderPath, MessageRef, display_name, header_fields
from migrator.stores.base import Source

BY = ("digest", "message-id")


@dataclass(frozen=True)
class MessageInfo:
    folder: str
    id: str
    message_id: str
    subject: str
    date: datetime | None
    flags: frozenset[str]


@dataclass
class FolderCheck:
    sources: list[str]
    target: str
    source_count: int = 0
    target_count: int = 0
    missing: list[MessageInfo] = field(default_factory=list)
    extra: list[MessageInfo] = field(default_factory=list)
    #: (source message, flags only in the source, flags only in the target)
    flag_differences: list[tuple[MessageInfo, frozenset[str], frozenset[str]]] = field(
        default_factory=list
    )
    error: str | None = None


def _identity(data: bytes, by: str) -> str:
    if by == "message-id":
        mid = header_fields(data).get(b"message-id", b"").strip()
        if mid:
            return "mid:" + mid.decode("utf-8", "replace")
    normalised = data.replace(b"\r\n", b"\n")
    return "sha256:" + hashlib.sha256(normalised).hexdigest()


def _info(folder: str, ref: MessageRef, data: bytes) -> MessageInfo:
    fields = header_fields(data)
    return MessageInfo(
        folder=folder,
        id=ref.id,
        message_id=fields.get(b"message-id", b"").decode("utf-8", "replace"),
        subject=fields.get(b"subject", b"").decode("utf-8", "replace"),
        date=ref.date,
        flags=ref.flags - UNCOPIED_FLAGS,
    )


def _read(
    store: Source, path: FolderPath, wanted: Callable[[MessageRef], bool], by: str
) -> tuple[dict[str, list[MessageInfo]], int]:
    store.open_folder(path)
    refs = [r for r in store.list_messages(path) if wanted(r)]
    found: dict[str, list[MessageInfo]] = defaultdict(list)
    name = display_name(path)
    for ref, data in store.fetch(path, refs):
        if isinstance(data, bytes):
            found[_identity(data, by)].append(_info(name, ref, data))
        else:
            found[f"unreadable:{ref.id}"].append(
                MessageInfo(name, ref.id, "", f"(unreadable: {data})", ref.date, ref.flags)
            )
    return found, len(refs)


def verify(
    source: Source,
    target: Source,
    folder_map: FolderMap,
    message_filter: MessageFilter,
    by: str = "digest",
    progress: Callable[[str], None] | None = None,
    compare_flags: bool = True,
    recorded: Mapping[FolderPath, FolderPath] | None = None,
) -> list[FolderCheck]:
    """Compare every selected source folder with the target folder `copy` would use (the one
    the copy's journal recorded, when given: ``recorded``); with ``compare_flags`` False
    (--ignore-flags), presence only."""
    target_folders = target.list_folders()
    existing = {f.path for f in target_folders if f.selectable}
    plans = folder_map.plan(
        source.list_folders(), target_folders, getattr(target, "delimiter", None)
    )
    if recorded:
        plans = keep_recorded(plans, recorded)[0]
    groups: dict[FolderPath, list[FolderPlan]] = defaultdict(list)
    for plan in plans:
        groups[plan.target].append(plan)
    checks: list[FolderCheck] = []
    for target_path, members in groups.items():
        check = FolderCheck([p.source_name for p in members], display_name(target_path))
        checks.append(check)
        if progress:
            progress(check.target)
        try:
            wanted: dict[str, list[MessageInfo]] = defaultdict(list)
            for plan in members:
                found, count = _read(source, plan.source.path, message_filter.include, by)
                check.source_count += count
                for key, infos in found.items():
                    wanted[key].extend(infos)
            have: dict[str, list[MessageInfo]] = {}
            if target_path in existing:
                have, check.target_count = _read(target, target_path, lambda r: True, by)
        except FolderError as exc:
            check.error = str(exc)
            continue
        _compare(check, wanted, have, compare_flags)
    return checks


def _compare(
    check: FolderCheck,
    wanted: dict[str, list[MessageInfo]],
    have: dict[str, list[MessageInfo]],
    compare_flags: bool = True,
) -> None:
    for key, sources in wanted.items():
        copies = sorted(have.get(key, []), key=lambda i: sorted(i.flags))
        for src in sorted(sources, key=lambda i: sorted(i.flags)):
            match = next((c for c in copies if c.flags == src.flags), None)
            if match is None and copies:
                match = copies[0]
            if match is None:
                check.missing.append(src)
                continue
            copies.remove(match)
            if compare_flags and match.flags != src.flags:
                check.flag_differences.append(
                    (src, src.flags - match.flags, match.flags - src.flags)
                )
        have[key] = copies
    check.extra = [info for infos in have.values() for info in infos]


def summary(checks: Sequence[FolderCheck]) -> dict[str, int]:
    return {
        "source": sum(c.source_count for c in checks),
        "target": sum(c.target_count for c in checks),
        "missing": sum(len(c.missing) for c in checks),
        "extra": sum(len(c.extra) for c in checks),
        "flag_differences": sum(len(c.flag_differences) for c in checks),
        "errors": sum(1 for c in checks if c.error),
    }


def describe_flags(flags: Iterable[str]) -> str:
    return " ".join(sorted(flags)) or "(none)"
