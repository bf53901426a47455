"""ImapStore as a source: listing a folder's messages (one UID SEARCH, then one UID FETCH of
metadata per META_BATCH), streaming bodies in batches of a few megabytes, deleting the copied,
and the flags a later pass compares (CONDSTORE, RFC 7162)."""

from __future__ import annotations

import imaplib
from collections.abc import Container, Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from migrator.errors import FolderError, MessageError, StoreError
from migrator.model import UNCOPIED_FLAGS, FolderPath, FolderState, MessageRef, message_key
from migrator.stores.base import LARGEST_MESSAGE, FlagListing
from migrator.stores.imap import wire
from migrator.stores.imap.folders import ImapFolders
from migrator.stores.imap.parse import (
    batches_by_size,
    complete_bodies,
    fixed_zone,
    is_utf8,
    parse_bodies,
    parse_meta,
    server_words,
    uid_set,
)
from migrator.stores.imap.session import META_BATCH, META_BATCH_MIN

_KEY_HEADERS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"
_KEY_RESPONSE = b"BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"
#: Body FETCH / APPEND batch limits: bytes in flight per batch, and messages per command.
BODY_BATCH_BYTES = 2 * 1024 * 1024
BODY_BATCH_COUNT = 400
#: A body FETCH may bring this much more than the messages' RFC822.SIZE claimed (beyond twice
#: the claim) before the claims are taken for lies: the connection is dropped, what came whole
#: is kept, and from then on each message is fetched on its own.
FETCH_SLACK = 4 * 1024 * 1024
#: Characters of a nonsense RFC822.SIZE quoted in the reason its message is not copied.
SIZE_SHOWN = 40


class ImapReading(ImapFolders):
    """The source layer of ImapStore."""

    def open_folder(self, path: FolderPath) -> FolderState:
        info = self._select(path, readonly=True)
        validity = "X-GM-MSGID" if self._gmail else info.get(b"UIDVALIDITY", 0)
        return FolderState(validity=str(validity), count=int(info.get(b"EXISTS", 0)))

    def _gmail_map(self, path: FolderPath) -> dict[int, str]:
        """UID -> X-GM-MSGID for the whole folder (one FETCH per META_BATCH UIDs)."""
        uids = self._all_uids(path)
        found: dict[int, str] = {}
        for start in range(0, len(uids), META_BATCH):
            with self._talk("UID FETCH X-GM-MSGID"):
                data = self._fetch(uid_set(uids[start : start + META_BATCH]), "(X-GM-MSGID)")
            found.update(
                (u, str(item[b"X-GM-MSGID"])) for u, item in data.items() if b"X-GM-MSGID" in item
            )
        self._gm_uids[self._name(path)] = {m: u for u, m in found.items()}
        return found

    def _uid(self, path: FolderPath, ref_id: str) -> int:
        if self._gmail:
            uids = self._gm_uids.get(self._name(path)) or {}
            if ref_id not in uids:
                self._gmail_map(path)
                uids = self._gm_uids[self._name(path)]
            if ref_id not in uids:
                raise MessageError(f"X-GM-MSGID {ref_id} is no longer in the folder")
            return uids[ref_id]
        return int(ref_id)

    def _all_uids(self, path: FolderPath) -> list[int]:
        self._ensure_selected(path, readonly=True)
        with self._talk("UID SEARCH"):
            return sorted(self._c.search("ALL"))

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        gm = self._gmail_map(path) if self._gmail else None
        if gm is not None:
            uids = [u for u in sorted(gm) if gm[u] not in skip]
        else:
            uids = [u for u in self._all_uids(path) if str(u) not in skip]
        # The header fields cost the server a read of every message; sizes, flags and dates
        # come from its index.
        items = "(RFC822.SIZE FLAGS INTERNALDATE" + (" " + _KEY_HEADERS if keys else "") + ")"
        start = 0
        while start < len(uids):
            chunk = uids[start : start + self._meta_batch]
            try:
                with self._talk("UID FETCH"):
                    data = self._fetch(uid_set(chunk), items)
            except StoreError as exc:
                if exc.transient:  # a link that breaks mid-answer: ask for less next time
                    self._meta_batch = max(META_BATCH_MIN, self._meta_batch // 8)
                raise
            self._meta_batch = min(META_BATCH, self._meta_batch * 2)
            start += len(chunk)
            for uid in chunk:
                item = data.get(uid)
                if item is None:  # expunged meanwhile
                    continue
                ref = self._ref(uid, item, keys)
                if gm is not None:
                    if str(uid) in self._unusable:  # known by its X-GM-MSGID from here on
                        self._unusable[gm[uid]] = self._unusable.pop(str(uid))
                    ref = replace(ref, id=gm[uid])
                yield ref

    def _fetch(
        self, uids: str, items: str, allowed: int = LARGEST_MESSAGE
    ) -> dict[int, dict[bytes, Any]]:
        """UID FETCH by UID (wire.uid_fetch), the usual shapes parsed fast. ``allowed``: the
        literal bytes the answer may bring in all (see FETCH_SLACK)."""
        client = self._c
        try:
            typ, data = wire.uid_fetch(client, uids, items, allowed)
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
            # What came whole before the connection broke (a BYE mid-FETCH): fetch() keeps it.
            self._partial = wire.fetched_so_far(client)
            if isinstance(exc, wire.LiteralTooBig):
                if exc.single and exc.uid is not None:
                    self._unusable[exc.uid] = str(exc)
                elif exc.single and "," not in uids and ":" not in uids:
                    self._unusable[uids] = str(exc)
                else:
                    self._sizes_lie = True
            raise
        if typ != "OK":
            raise self._refused("FETCH", server_words(data))
        fast = parse_bodies(data) if "BODY.PEEK[]" in items else parse_meta(data)
        return fast if fast is not None else wire.parse_fetch(data)

    def _ref(self, uid: int, item: dict[bytes, Any], keys: bool = True) -> MessageRef:
        size = item.get(b"RFC822.SIZE", 0)
        raw = item.get(b"FLAGS", ())
        if not isinstance(size, int) or not 0 <= size <= LARGEST_MESSAGE:
            # Kept out of the journal and the batch sizes; fetch() fails the message.
            shown = server_words(str(size))[:SIZE_SHOWN]
            self._unusable[str(uid)] = (
                f"the server gave its size as {shown} bytes (migrator copies messages of up to "
                f"{LARGEST_MESSAGE >> 20} MiB)"
            )
            size = 0
        flags = self._flag_sets.get(raw)
        if flags is None:
            try:
                kept = frozenset(f.decode() if isinstance(f, bytes) else str(f) for f in raw)
            except UnicodeDecodeError:
                bad = next(f for f in raw if isinstance(f, bytes) and not is_utf8(f))
                self._unusable[str(uid)] = (
                    f"its keyword {server_words(bad)!r} is not UTF-8, which no target can store "
                    "as it is"
                )
                raw, kept = (), frozenset()
            kept -= UNCOPIED_FLAGS
            # One frozenset per distinct set of flags: a listing has a handful, not one each.
            flags = self._flag_sets.setdefault(kept, kept)
            if isinstance(raw, tuple):
                self._flag_sets[raw] = flags
        date = item.get(b"INTERNALDATE")
        if (
            isinstance(date, datetime)
            and (offset := date.utcoffset()) is not None
            and date.tzinfo is not (zone := fixed_zone(offset))
        ):
            # imapclient gives each date its own zone object; a listing keeps one per offset.
            date = date.replace(tzinfo=zone)
        header = item.get(_KEY_RESPONSE) or b""
        return MessageRef(
            id=str(uid),
            size=size,
            flags=flags,
            date=date if isinstance(date, datetime) else None,
            key=message_key(header, size) if keys else "",
        )

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        for ref in refs:
            if ref.id in self._unusable:
                yield ref, MessageError(self._unusable[ref.id])
        refs = [ref for ref in refs if ref.id not in self._unusable]
        count = 1 if self._sizes_lie else BODY_BATCH_COUNT
        for batch in batches_by_size(refs, BODY_BATCH_BYTES, count):
            self._ensure_selected(path, readonly=not self.restore_seen)
            uids = {r.id: self._uid(path, r.id) for r in batch}
            self._partial = []
            claimed = sum(r.size for r in batch)
            allowed = LARGEST_MESSAGE if len(batch) == 1 else 2 * claimed + FETCH_SLACK
            try:
                with self._talk("UID FETCH"):
                    data = self._fetch(uid_set(uids.values()), "(BODY.PEEK[])", allowed)
            except StoreError:
                for ref in batch:  # a message found too big is known by its id from here on
                    if ref.id != (uid := str(uids[ref.id])) and uid in self._unusable:
                        self._unusable[ref.id] = self._unusable.pop(uid)
                # The messages that arrived whole before the connection broke are handed over
                # before the error, so that each attempt moves what it could.
                whole = complete_bodies(self._partial)
                self._partial = []
                for ref in batch:
                    if (body := whole.get(uids[ref.id])) is not None:
                        yield ref, body
                raise
            unseen = [uids[r.id] for r in batch if "\\Seen" not in r.flags]
            if self.restore_seen and unseen:
                with self._talk("UID STORE -FLAGS (\\Seen)"):
                    self._c.remove_flags(uid_set(unseen), [b"\\Seen"], silent=True)
            for ref in batch:
                body = data.get(uids[ref.id], {}).get(b"BODY[]")
                if body is None:
                    yield ref, MessageError("the message vanished from the source")
                else:
                    yield ref, bytes(body)
            del data

    def delete(self, path: FolderPath, ids: Sequence[str]) -> None:
        if not ids:
            return
        if "UIDPLUS" not in self._caps:
            raise FolderError(
                f"{self.label}: the server lacks UIDPLUS, so an expunge could remove messages "
                "that were not copied; nothing was deleted"
            )
        self._ensure_selected(path, readonly=False)
        uids = [self._uid(path, i) for i in ids]
        try:
            with self._talk("UID STORE/EXPUNGE"):
                for start in range(0, len(uids), META_BATCH):
                    chunk = uid_set(uids[start : start + META_BATCH])
                    self._c.add_flags(chunk, [b"\\Deleted"], silent=True)
                    self._c.uid_expunge(chunk)
        except StoreError as exc:
            if exc.transient:
                raise
            # Refused (no 't' or 'e' right, RFC 4314): this folder keeps its copied messages;
            # the others go on.
            name = self._name(path)
            raise FolderError(
                f"{exc}{self._rights_note(name)}; the copied messages stay in {name!r}"
            ) from None

    # -- later passes: the flags a source has now (migrator.converge) ------------------------

    def message_ids(self, path: FolderPath) -> set[str]:
        if self._gmail:
            return super().message_ids(path)
        return {str(uid) for uid in self._all_uids(path)}  # one UID SEARCH

    def flag_mark(self, path: FolderPath) -> str | None:
        """The folder's HIGHESTMODSEQ (CONDSTORE, RFC 7162), by STATUS."""
        if "CONDSTORE" not in self._caps or self._gmail:
            return None
        with self._talk("STATUS HIGHESTMODSEQ"):
            status = self._c.folder_status(self._name(path), [b"HIGHESTMODSEQ"])
        return str(status.get(b"HIGHESTMODSEQ") or "") or None

    def flag_listing(self, path: FolderPath, since: str | None = None) -> FlagListing:
        """One UID FETCH of FLAGS for the folder; with CONDSTORE (RFC 7162) and ``since``, only
        the messages whose flags changed since that mod-sequence (CHANGEDSINCE)."""
        if self._gmail:
            return super().flag_listing(path)
        mark = self.flag_mark(path)
        self._ensure_selected(path, readonly=True)
        changed_only = mark is not None and since is not None and since.isdigit()
        items = f"(UID FLAGS) (CHANGEDSINCE {since})" if changed_only else "(UID FLAGS)"
        with self._talk("UID FETCH FLAGS"):
            data = self._fetch("1:*", items)
        flags = {str(uid): self._ref(uid, item, keys=False).flags for uid, item in data.items()}
        return FlagListing(flags, complete=not changed_only, mark=mark)
