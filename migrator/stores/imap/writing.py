"""ImapStore as a target: appending (MULTIAPPEND, RFC 3502; APPENDUID, RFC 4315), the index of
what a folder holds, and a later pass's changes to the copies: flags, removals and moves."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from migrator.errors import FolderError
from migrator.model import INBOX, UNCOPIED_FLAGS, FolderPath, MessageRef, to_crlf
from migrator.ratelimit import parse_backoff
from migrator.stores.base import AppendResult, FlagChange
from migrator.stores.imap import wire
from migrator.stores.imap.parse import (
    append_results,
    copyuid,
    server_words,
    text_bytes,
    uid_set,
    uids_of,
)
from migrator.stores.imap.reading import ImapReading
from migrator.stores.imap.session import META_BATCH


class ImapWriting(ImapReading):
    """The target layer of ImapStore."""

    def index(self, path: FolderPath) -> Iterable[str]:
        if not self._existing:
            self.list_folders()
        if path not in self._existing and path != INBOX:
            return []
        # SELECT afresh: a folder already selected shows other sessions' appends only after a
        # sync, and the index must see them (an append a dead run left in flight, say).
        self._selected = None
        return [ref.key for ref in self.list_messages(path)]

    def _multiappend(
        self, name: str, items: Sequence[tuple[MessageRef, bytes]]
    ) -> tuple[str, list[Any]]:
        """One APPEND of all the items (wire.append), each message's bytes made CRLF as it is
        sent."""
        messages = (
            (sorted(ref.flags - UNCOPIED_FLAGS), ref.date, to_crlf(body)) for ref, body in items
        )
        return wire.append(self._c, name, messages, "LITERAL+" in self._caps)

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        if not items:
            return []
        name = self._own_name(path)
        if len(items) > 1 and "MULTIAPPEND" in self._caps:
            with self._talk(f"APPEND to {name!r}"):
                typ, data = self._multiappend(name, items)
            if typ == "OK":
                return append_results(text_bytes(data), len(items))
            if parse_backoff(server_words(data)) is not None:  # throttled: not the messages' fault
                raise self._refused(f"APPEND to {name!r}", server_words(data))
            # MULTIAPPEND is all or nothing: find the message at fault one by one.
        results: list[AppendResult] = []
        for ref, body in items:
            with self._talk(f"APPEND to {name!r}"):
                typ, data = self._multiappend(name, [(ref, body)])
            if typ == "OK":
                results.extend(append_results(text_bytes(data), 1))
            elif parse_backoff(server_words(data)) is not None:
                raise self._refused(f"APPEND to {name!r}", server_words(data))
            else:
                results.append(AppendResult(error=f"the server said: {server_words(data)}"))
        return results

    def _open_target(self, path: FolderPath) -> str | None:
        """SELECT the target folder for changes; its UIDVALIDITY, None when it does not exist
        or is empty (nothing to list or change)."""
        if not self._existing:
            self.list_folders()
        if path not in self._existing and path != INBOX:
            return None
        name = self._name(path)
        known = self._selected_validity
        if self._selected == (name, False) and known is not None and known[0] == name:
            return known[1]  # still selected: a pass's moves out of one folder, one SELECT
        info = self._select(path, readonly=False)
        if not int(info.get(b"EXISTS", 0)):
            return None
        self._selected_validity = (name, str(info.get(b"UIDVALIDITY", 0)))
        return self._selected_validity[1]

    def _target_uids(self, path: FolderPath, ids: Sequence[str]) -> list[int]:
        """The UIDs of ``ids`` ("UIDVALIDITY:UID", as append() gives them) that belong to the
        folder's current UIDVALIDITY: an id from before a renumbering names nothing now."""
        return uids_of(ids, self._open_target(path))

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        """One UID SEARCH UID <set> a META_BATCH of ids: what the server still has of them."""
        validity = self._open_target(path)
        uids = uids_of(ids, validity)
        found: set[str] = set()
        with self._talk("UID SEARCH"):
            for start in range(0, len(uids), META_BATCH):
                chunk = uid_set(uids[start : start + META_BATCH])
                found.update(f"{validity}:{uid}" for uid in self._c.search(["UID", chunk]))
        return found

    def ids_by_key(self, path: FolderPath) -> list[tuple[str, str]]:
        validity = self._open_target(path)
        if validity is None:
            return []
        return [(f"{validity}:{ref.id}", ref.key) for ref in self.list_messages(path)]

    def update_flags(self, path: FolderPath, changes: Sequence[FlagChange]) -> None:
        todo = [(change, self._target_uids(path, change.ids)) for change in changes]
        with self._talk("UID STORE FLAGS"):
            for change, uids in todo:
                for start in range(0, len(uids), META_BATCH):
                    chunk = uid_set(uids[start : start + META_BATCH])
                    if change.add:
                        self._c.add_flags(
                            chunk, [f.encode() for f in sorted(change.add)], silent=True
                        )
                    if change.remove:
                        self._c.remove_flags(
                            chunk, [f.encode() for f in sorted(change.remove)], silent=True
                        )

    def _expunge(self, uids: Sequence[int]) -> None:
        """\\Deleted and UID EXPUNGE of exactly these UIDs (UIDPLUS: never anyone else's)."""
        if "UIDPLUS" not in self._caps:
            raise FolderError(
                f"{self.label}: the server lacks UIDPLUS, so an expunge could remove messages "
                "this job did not copy; nothing was removed"
            )
        with self._talk("UID STORE/EXPUNGE"):
            for start in range(0, len(uids), META_BATCH):
                chunk = uid_set(uids[start : start + META_BATCH])
                self._c.add_flags(chunk, [b"\\Deleted"], silent=True)
                self._c.uid_expunge(chunk)

    def remove(self, path: FolderPath, ids: Sequence[str]) -> None:
        uids = self._target_uids(path, ids)
        if uids:
            self._expunge(uids)

    def move(self, path: FolderPath, ids: Sequence[str], to: FolderPath) -> list[str | None]:
        """UID MOVE (RFC 6851), or UID COPY and an expunge of exactly those UIDs; the new ids
        from COPYUID (RFC 4315) when the server gives it."""
        by_id = {
            target_id: uid
            for target_id, uid in zip(ids, self._uids_in_order(path, ids), strict=True)
        }
        uids = [uid for uid in by_id.values() if uid is not None]
        new: dict[int, str] = {}
        name = self._name(to)
        for start in range(0, len(uids), META_BATCH):
            chunk = uids[start : start + META_BATCH]
            command = "MOVE" if "MOVE" in self._caps else "COPY"
            with self._talk(f"UID {command}"):
                typ, data, said = wire.uid_copy(self._c, command, uid_set(chunk), name)
            if typ != "OK":
                raise self._refused(f"UID {command}", server_words(data))
            new.update(copyuid(b" ".join(text_bytes(d) for d in said)))
            if command == "COPY":
                self._expunge(chunk)
        return [new.get(uid) if uid is not None else None for uid in by_id.values()]

    def _uids_in_order(self, path: FolderPath, ids: Sequence[str]) -> list[int | None]:
        current = set(self._target_uids(path, ids))
        result: list[int | None] = []
        for target_id in ids:
            uid = target_id.partition(":")[2]
            result.append(int(uid) if uid.isdigit() and int(uid) in current else None)
        return result
