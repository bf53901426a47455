"""Later passes converge (README, "A migration with a cutover"): flags follow the source, and
`sync` mirrors removals and moves, for the messages this job copied and no others.

The journal is the common base of a three-way comparison: it holds, per copied message, the
source's flags as last applied to the target. A pass pushes to the target only what changed at the
source since then, so a flag changed only at the target is kept, and where both changed the source
wins for the flags it changed. Every change to the target is idempotent or journaled first:

- flags: STORE +FLAGS/-FLAGS of the source's change, then the new base; a crash in between makes
  the next pass store the same change again (a no-op).
- removal: the target message is removed, then its row; a crash in between leaves a row whose
  target id is gone, which the next pass drops (ids are never reused).
- move: the new folder's row is written 'pending' before the move (the engine's crash rule), and
  the old row goes with the move's confirmation. After a crash, the old copy is no longer where
  the journal says, and the pending row makes the copy of the new folder look in the target first
  (see engine.plan.reconcile): found there, it is not uploaded again.

Two halves: ``FlagFollower`` (every pass) and ``Mirror`` (`sync`: moves, removals, the guard);
``Converger`` is both, as the engine uses them. Knows no protocol: it talks to the stores through
stores.base.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from migrator.checkpoint import Commit, Copied, Journal
from migrator.errors import ConfigError, FolderError
from migrator.folders import FolderPlan
from migrator.model import UNCOPIED_FLAGS, Folder, FolderPath, MessageRef
from migrator.stores.base import FlagChange, Source, Target

#: `sync` removes up to this many messages from a folder without the half-of-it guard.
GUARD_MIN_REMOVALS = 5


class GuardError(ConfigError):
    """`sync` would remove more than half of what it copied into a folder."""


@dataclass
class FolderChanges:
    """What a pass changed in one folder's copies (for the summary and `status`)."""

    flagged: int = 0
    moved: int = 0
    removed: int = 0
    #: For --dry-run: one line per planned move or removal.
    planned: list[str] = field(default_factory=list)


@dataclass
class _Side:
    """One source folder as the mirror sees it: what the journal says the target holds, and
    what the source holds now."""

    plan: FolderPlan
    validity: str
    #: Source ids the journal says the target holds, and how many of them this job copied.
    known: set[str]
    copied: int
    #: Source ids in the folder now.
    now: set[str]

    @property
    def src(self) -> FolderPath:
        return self.plan.source.path

    @property
    def dst(self) -> FolderPath:
        return self.plan.target


class _Pass:
    """What both halves of a later pass need: the journal, whether it is a dry run, the
    --max-delete allowance, and where notices go."""

    def __init__(
        self,
        journal: Journal,
        dry_run: bool,
        max_delete: int | None,
        notice: Callable[[str], None],
    ) -> None:
        self.journal = journal
        self.dry_run = dry_run
        self.max_delete = max_delete
        self.notice = notice


class FlagFollower(_Pass):
    """Flags follow the source (`copy` and `sync`), three-way with the journal as the base."""

    def follow_flags(
        self, source: Source, target: Target, plan: FolderPlan, validity: str, copied: bool
    ) -> int:
        """Apply to the target the flag changes made at the source since the last pass, for the
        messages the journal says the target holds (``copied``: it holds some); returns how
        many messages changed. Before a folder's first copy, only notes where the next pass's
        listing may start."""
        if not target.can_update:
            return 0  # an mbox archive keeps the flags it was written with (README)
        src, dst = plan.source.path, plan.target
        if not copied:
            # The copy's listing comes after this mark: a change in between is listed by the
            # next pass and compared with flags that already have it (a no-op).
            self.journal.flags_followed(src, validity, dst, [], [], source.flag_mark(src), 0)
            return 0
        listing = source.flag_listing(src, self.journal.flag_mark(src, validity, dst))
        count = 0
        bases: list[tuple[str, frozenset[str]]] = []
        found: list[tuple[str, str]] = []
        if listing.flags:  # a CONDSTORE pass with no change at the source reads no row
            only = None if listing.complete else listing.flags.keys()
            rows = self.journal.copied(src, validity, dst, only)
            count, bases, found = self._apply_flags(target, plan, rows, listing.flags)
        # The new bases, the mark and the count: one transaction.
        self.journal.flags_followed(src, validity, dst, bases, found, listing.mark, count)
        return count

    def _apply_flags(
        self,
        target: Target,
        plan: FolderPlan,
        rows: list[Copied],
        current: dict[str, frozenset[str]],
    ) -> tuple[int, list[tuple[str, frozenset[str]]], list[tuple[str, str]]]:
        """Three-way: push what changed at the source since the base, in one bulk update.
        Returns how many messages changed, their new bases (source id, flags) and the target
        ids found by key (source id, target id), for the journal."""
        dst = plan.target
        unknown: list[tuple[str, frozenset[str]]] = []
        changed: list[tuple[Copied, frozenset[str]]] = []
        for row in rows:
            now = current.get(row.src_id)
            if now is None:
                continue  # gone from the source: sync's business
            now = now - UNCOPIED_FLAGS
            if row.flags is None:
                unknown.append((row.src_id, now))  # journal of version 1: the base starts here
            elif now != row.flags:
                changed.append((row, now))
        if not changed and not unknown:
            return 0, [], []
        ids, found = target_ids(target, dst, [row for row, _ in changed])
        groups: dict[tuple[frozenset[str], frozenset[str]], list[str]] = defaultdict(list)
        applied: list[tuple[str, frozenset[str]]] = []
        for row, now in changed:
            target_id = ids.get(row.src_id)
            if target_id is None:
                continue  # not found in the target: nothing to change there
            assert row.flags is not None
            groups[(now - row.flags, row.flags - now)].append(target_id)
            applied.append((row.src_id, now))
        if groups:  # a dry run's target (DryRunTarget) changes nothing
            target.update_flags(
                dst, [FlagChange(add, remove, tids) for (add, remove), tids in groups.items()]
            )
        return len(applied), applied + unknown, found


def target_ids(
    target: Target, dst: FolderPath, rows: Sequence[Copied]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Source id -> target id for ``rows``; those the append did not tell are found by their
    identity key (one listing), and returned apart to be journaled."""
    ids = {row.src_id: row.dst_id for row in rows if row.dst_id}
    blind = [row for row in rows if not row.dst_id]
    found: list[tuple[str, str]] = []
    if blind:
        claimed = set(ids.values())
        by_key: dict[str, list[str]] = defaultdict(list)
        for target_id, key in target.ids_by_key(dst):
            if target_id not in claimed:
                by_key[key].append(target_id)
        for row in blind:
            if by_key.get(row.key):
                target_id = by_key[row.key].pop(0)
                ids[row.src_id] = target_id
                found.append((row.src_id, target_id))
    return ids, found


class Mirror(_Pass):
    """`sync` mirrors removals and moves at the source, for what this job copied, under the
    guard."""

    def mirror(
        self,
        source: Source,
        target: Target,
        plans: Sequence[FolderPlan],
        vanished: Sequence[tuple[FolderPath, FolderPath]] = (),
    ) -> dict[FolderPath, FolderChanges]:
        """Before the copy: move on the target what moved at the source, and remove what this job
        copied and the source no longer holds. ``vanished``: (source, target) folders of earlier
        passes that the source no longer has at all (deleted, or renamed: their messages then
        moved). Refuses (GuardError) before changing anything when a folder would lose more than
        half of what was copied into it."""
        if not target.can_update:
            raise ConfigError(
                f"{target.label}: sync cannot remove or move messages in this target (an mbox "
                "archive is append-only); use copy"
            )
        sides: list[_Side] = []
        for plan in plans:
            src, dst = plan.source.path, plan.target
            try:
                state = source.open_folder(src)
                now = source.message_ids(src)
            except FolderError as exc:
                # Unreadable now: nothing of it is taken as gone (its copies stay).
                self.notice(f"{plan.source_name}: not mirrored: {exc}")
                continue
            known = self.journal.done_ids(src, state.validity, dst)
            copied = self.journal.count_done(src, state.validity, dst)
            sides.append(_Side(plan, state.validity, known, copied, now))
        for src, dst in vanished:
            validity = self.journal.folder_validity(src, dst)
            if validity is None:
                continue
            known = self.journal.done_ids(src, validity, dst)
            copied = self.journal.count_done(src, validity, dst)
            if known:
                sides.append(_Side(FolderPlan(Folder(src), dst), validity, known, copied, set()))
        # Only the rows of messages gone from the source are read (a handful, not the folder).
        gone = {
            id(side): [
                r
                for r in self.journal.copied(
                    side.src, side.validity, side.dst, side.known - side.now
                )
                if r.state == "done" and not r.deleted  # --delete-source: gone on purpose
            ]
            for side in sides
        }
        changes: dict[FolderPath, FolderChanges] = defaultdict(FolderChanges)
        if any(gone.values()):
            self._mirror(source, target, sides, gone, changes)
        self.journal.set_changes(
            [
                (side.src, side.dst, counts.moved, counts.removed)
                for side in sides
                for counts in [changes.get(side.src) or FolderChanges()]
            ]
        )
        return changes

    def _mirror(
        self,
        source: Source,
        target: Target,
        sides: list[_Side],
        gone: dict[int, list[Copied]],
        changes: dict[FolderPath, FolderChanges],
    ) -> None:
        moves = self._find_moves(source, sides, gone)
        moved_rows = {id(row) for pairs in moves.values() for row, _ in pairs}
        removals = {
            id(side): [r for r in gone[id(side)] if id(r) not in moved_rows] for side in sides
        }
        self._guard(sides, removals)
        if moves:
            self._moves(target, moves, {id(side): side for side in sides}, changes)
        for side in sides:
            if removals[id(side)]:
                self._remove(target, side, removals[id(side)], changes)

    def _find_moves(
        self, source: Source, sides: list[_Side], gone: dict[int, list[Copied]]
    ) -> dict[tuple[int, int], list[tuple[Copied, MessageRef]]]:
        """Messages gone from one source folder that appeared in another (or again in the same
        one), recognised by the identity key the journal stores: (old side, new side) ->
        (old row, new source message)."""
        waiting: dict[str, list[tuple[int, Copied]]] = defaultdict(list)
        for side in sides:
            for row in gone[id(side)]:
                waiting[row.key].append((id(side), row))
        moves: dict[tuple[int, int], list[tuple[Copied, MessageRef]]] = defaultdict(list)
        for side in sides:
            if not side.now - side.known:
                continue
            for ref in source.list_messages(side.src, skip=side.known, keys=True):
                candidates = waiting.get(ref.key)
                if candidates:
                    old, row = candidates.pop(0)
                    moves[(old, id(side))].append((row, ref))
        return moves

    def _guard(self, sides: list[_Side], removals: dict[int, list[Copied]]) -> None:
        refused = []
        for side in sides:
            count = len(removals[id(side)])
            copied = side.copied
            allowed = self.max_delete is not None and count <= self.max_delete
            if count > GUARD_MIN_REMOVALS and 2 * count > copied and not allowed:
                refused.append(f"{side.plan.source_name} ({count} of {copied})")
        if refused:
            raise GuardError(
                f"sync refused to remove more than half of the messages it copied into "
                f"{', '.join(refused)}: the source may be misconfigured. Nothing was removed or "
                "moved. If this is right, rerun with --max-delete N (N at least the number "
                "to remove)"
            )

    def _present(self, target: Target, side: _Side, rows: Sequence[Copied]) -> dict[str, str]:
        """Source id -> target id of the rows whose copy is still in the target folder."""
        ids, found = target_ids(target, side.dst, rows)
        if found:
            self.journal.set_flags(side.src, side.validity, side.dst, [], found)
        there = target.present_ids(side.dst, list(ids.values()))
        return {src_id: tid for src_id, tid in ids.items() if tid in there}

    def _moves(
        self,
        target: Target,
        moves: dict[tuple[int, int], list[tuple[Copied, MessageRef]]],
        by_side: dict[int, _Side],
        changes: dict[FolderPath, FolderChanges],
    ) -> None:
        """All moves of the pass: their intent in one journal transaction (the new folders'
        rows 'pending'), one MOVE per pair of folders, their confirmation in one transaction."""
        # The new rows keep the base flags of the old ones: the copy's flags have not moved.
        planned = [
            (
                by_side[old],
                by_side[new],
                pairs,
                [
                    MessageRef(
                        ref.id,
                        row.size,
                        row.flags if row.flags is not None else ref.flags,
                        None,
                        row.key,
                    )
                    for row, ref in pairs
                ],
            )
            # by old folder: the moves out of one folder share its SELECT
            for (old, new), pairs in sorted(
                moves.items(), key=lambda item: (by_side[item[0][0]].dst, by_side[item[0][1]].dst)
            )
        ]
        for old_side, new_side, pairs, _ in planned:
            counts = changes[new_side.src]
            counts.moved += len(pairs)
            line = (
                f"move {len(pairs)} message(s) from {old_side.plan.target_name} to "
                f"{new_side.plan.target_name}"
            )
            counts.planned.append(line)
            # A dry run's target (DryRunTarget) changes nothing; its journal is a copy.
            self.notice(f"would {line}" if self.dry_run else f"{line[0].upper()}{line[1:]}")
        self.journal.begin_many(
            [
                (new_side.src, new_side.validity, new_side.dst, refs)
                for _, new_side, _, refs in planned
            ]
        )
        confirmed = []
        for old_side, new_side, pairs, refs in planned:
            present = self._present(target, old_side, [row for row, _ in pairs])
            there = [
                (row, ref)
                for (row, _), ref in zip(pairs, refs, strict=True)
                if row.src_id in present
            ]
            done: list[tuple[MessageRef, str | None]] = []
            if there and old_side.dst == new_side.dst:
                done = [(ref, present[row.src_id]) for row, ref in there]
            elif there:
                target.ensure_folder(new_side.dst)
                ids = [present[row.src_id] for row, _ in there]
                new_ids = target.move(old_side.dst, ids, new_side.dst)
                done = [(ref, new_id) for (_, ref), new_id in zip(there, new_ids, strict=True)]
            # Copies no longer in the old folder (a pass killed after its move, or removed at
            # the target) keep their 'pending' row: the new folder's copy looks for them first.
            confirmed.append(
                (
                    (old_side.src, old_side.validity, old_side.dst),
                    [row.src_id for row, _ in pairs],
                    Commit(new_side.src, new_side.validity, new_side.dst, done, []),
                )
            )
        self.journal.moved(confirmed)

    def _remove(
        self,
        target: Target,
        side: _Side,
        rows: list[Copied],
        changes: dict[FolderPath, FolderChanges],
    ) -> None:
        counts = changes[side.src]
        counts.removed += len(rows)
        line = f"remove {len(rows)} message(s) from {side.plan.target_name}"
        counts.planned.append(line)
        self.notice(f"would {line}" if self.dry_run else f"{line[0].upper()}{line[1:]}")
        present = self._present(target, side, rows)
        if present:
            target.remove(side.dst, list(present.values()))
        self.journal.forget(side.src, side.validity, side.dst, [row.src_id for row in rows])


class Converger(FlagFollower, Mirror):
    """Both halves, as the engine runs them at each pass: flags first for each folder's copies
    (FlagFollower.follow_flags), and for `sync` the moves and removals before any copy
    (Mirror.mirror)."""
