"""Maildir++ trees as Dovecot and Courier serve them.

Layout. DIR/{cur,new,tmp} is INBOX; folder Archive/2023 is DIR/.Archive.2023/ (each level in
modified UTF-7, as Dovecot writes it, with a ``maildirfolder`` marker file). A level holding '.'
cannot be stored, so ``delimiter`` is "." and the engine renames such levels first. A parent that
has no directory of its own is listed as a non-selectable folder, as Dovecot shows it.

Messages. Written to tmp/, fsynced, given INTERNALDATE as mtime (Dovecot's received date), then
renamed into cur/ under Dovecot's name
``<time>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<vsize>:2,<flags>`` (S is the size on disk, with LF
line endings; W the size with CRLF); cur/ is fsynced once per batch.
Everything goes to cur/: new/ means "not yet seen by a mail client", which \\Recent no longer
describes once copied. Flags are the ``:2,`` letters D F R S (T, \\Deleted, is never written);
keywords are letters a-z mapped in the folder's ``dovecot-keywords`` file, which is updated under
its dotlock before any message uses a new letter. A folder can hold at most 26 keywords this way; a
message needing a 27th is refused with that reason rather than stored without it.

Identity. A message's id is its file name up to ':' (the part flags never change), so it survives
flag changes and the move from new/ to cur/; the validity is constant.

Reading. Files in new/ and cur/ whose name starts with '.' and anything that is not a regular file
are skipped; a file whose name is not a delivery name (``<digits>.…``) and whose content does not
start like a message (a header field or a From_ line) is listed and reported as a failed message,
never copied as mail and never touched. tmp/ is never read.

Modules. maildirtree.py holds the names (folders, message files and their flags), the keywords
file and the listing; this module is the store: reading, delivering, renaming, recovering.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Container, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

from migrator.errors import FolderError, MessageError, StoreError
from migrator.headers import header_and_blank_line, message_date
from migrator.model import INBOX, Folder, FolderPath, FolderState, MessageRef, crlf_size
from migrator.stores.base import AppendResult, FlagChange, Source, Target
from migrator.stores.localfiles import (
    FILE_MODE,
    LOCK_TIMEOUT,
    check_root,
    encode_level,
    fsync_dir,
    hostname_for_filename,
    make_private_dirs,
    os_reason,
    pid_alive,
    storable_keywords,
    to_lf,
    utc_now,
    write_all,
)
from migrator.stores.maildirtree import (
    EPOCH,
    info_flags,
    info_letters,
    keyword_letters,
    list_tree,
    message_files,
    message_ref,
    read_keywords,
    split_name,
    unique_name,
)

#: Names the id scheme (file names up to ':'), so a future scheme does not match old journal rows.
VALIDITY = "maildir-1"
SUBDIRS = ("cur", "new", "tmp")
_OUR_TMP = re.compile(r"^\d+\.M\d+P(\d+)Q\d+\.(.+?),S=")

#: Importable from here as they were before maildirtree.py.
__all__ = [
    "VALIDITY",
    "FolderState",
    "MaildirStore",
    "hostname_for_filename",
    "info_flags",
    "split_name",
]


class MaildirStore(Source, Target):
    """Both roles over a Maildir++ tree; see the module docstring."""

    delimiter = "."
    stable_ids = True
    can_delete = True
    #: A batch ends with an fsync of cur/ and two journal commits (see Target.commit_group).
    commit_group = 4

    def __init__(
        self, path: Path, *, create: bool = True, lock_timeout: float = LOCK_TIMEOUT
    ) -> None:
        """``create`` False makes a missing directory an error at connect (a source must exist)."""
        self.path = Path(path)
        self.label = f"maildir:{path}"
        self.create = create
        self.lock_timeout = lock_timeout

    # -- connecting and folders ------------------------------------------------------------

    def connect(self) -> None:
        check_root(self.path, self.label, create=self.create, file_ok=False)

    def close(self) -> None:
        pass

    def list_folders(self) -> list[Folder]:
        return list_tree(self.path, self.label)

    def _dir(self, path: FolderPath) -> Path:
        if path == INBOX:
            return self.path
        for level in path:
            if not level or "." in level or "/" in level or "\0" in level:
                raise FolderError(
                    f"{self.label}: folder level {level!r} cannot be stored in Maildir++ "
                    "('.' separates levels there)"
                )
        return self.path / ("." + ".".join(encode_level(level) for level in path))

    # -- reading ---------------------------------------------------------------------------

    def open_folder(self, path: FolderPath) -> FolderState:
        folder = self._existing(path)
        return FolderState(VALIDITY, sum(1 for _ in self._files(folder)))

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        folder = self._existing(path)
        letters = read_keywords(folder)
        return (
            message_ref(folder, sub, name, letters)
            for sub, name in self._files(folder)
            if split_name(name)[0] not in skip
        )

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        folder = self._existing(path)
        where: dict[str, str] | None = None
        for ref in refs:
            if ref.extra.get("error"):
                yield ref, MessageError(ref.extra["error"])
                continue
            data = self._read(folder / ref.extra["file"]) if ref.extra.get("file") else None
            if data is None:
                if where is None:
                    where = self._locate(folder)
                rel = where.get(ref.id)
                data = self._read(folder / rel) if rel else None
            if data is None:
                yield ref, MessageError("no longer in the Maildir (moved or deleted meanwhile)")
            elif isinstance(data, MessageError):
                yield ref, data
            else:
                yield ref, data

    def delete(self, path: FolderPath, ids: Sequence[str]) -> None:
        folder = self._existing(path)
        where = self._locate(folder)
        touched: set[Path] = set()
        for message_id in ids:
            rel = where.get(message_id)
            if rel is None:
                continue
            file = folder / rel
            try:
                file.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise FolderError(f"{self.label}: cannot delete {file}: {os_reason(exc)}") from None
            touched.add(file.parent)
        for directory in touched:
            fsync_dir(directory)

    def _existing(self, path: FolderPath) -> Path:
        folder = self._dir(path)
        if not (folder / "cur").is_dir():
            raise FolderError(f"{self.label}: folder {'/'.join(path)} does not exist")
        if not os.access(folder / "cur", os.R_OK | os.X_OK):
            raise FolderError(f"{self.label}: cannot read {folder / 'cur'}: permission denied")
        return folder

    def _files(self, folder: Path) -> Iterator[tuple[str, str]]:
        return message_files(folder, self.label)

    def _locate(self, folder: Path) -> dict[str, str]:
        return {split_name(name)[0]: f"{sub}/{name}" for sub, name in self._files(folder)}

    @staticmethod
    def _read(file: Path) -> bytes | MessageError | None:
        try:
            return file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return MessageError(f"cannot read {file}: {os_reason(exc)}")

    # -- writing ---------------------------------------------------------------------------

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        folder = self._dir(path)
        try:
            for directory in (self.path, folder):
                make_private_dirs(directory)
                for sub in SUBDIRS:
                    make_private_dirs(directory / sub)
            marker = folder / "maildirfolder"
            if folder != self.path and not marker.exists():
                os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
                fsync_dir(folder)
        except OSError as exc:
            # The directory or file that could not be made (the folder itself may exist).
            where = exc.filename or folder
            raise FolderError(f"{self.label}: cannot create {where}: {os_reason(exc)}") from None

    def index(self, path: FolderPath) -> Iterable[str]:
        folder = self._dir(path)
        if not (folder / "cur").is_dir():
            return []
        return [
            ref.key
            for sub, name in self._files(folder)
            if not (ref := message_ref(folder, sub, name, {})).extra.get("error")
        ]

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        if not items:
            return []
        folder = self._dir(path)
        if not (folder / "cur").is_dir():
            self.ensure_folder(path)
        wanted = sorted({k for ref, _ in items for k in storable_keywords(ref.flags)})
        try:
            letters = self._keyword_letters(folder, wanted) if wanted else {}
            results: list[AppendResult] = []
            for ref, data in items:
                missing = [k for k in storable_keywords(ref.flags) if k not in letters]
                if missing:
                    results.append(
                        AppendResult(
                            error=f"the folder already uses the 26 keywords Maildir can store; "
                            f"no letter left for {', '.join(missing)}"
                        )
                    )
                    continue
                results.append(AppendResult(target_id=self._deliver(folder, ref, data, letters)))
            fsync_dir(folder / "cur")
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot write to {folder}: {os_reason(exc)}") from None
        return results

    def _deliver(self, folder: Path, ref: MessageRef, data: bytes, letters: dict[str, str]) -> str:
        """tmp/, fsync, mtime, rename into cur/: the file appears whole or not at all."""
        content = to_lf(data)
        base = unique_name(len(content), crlf_size(content))
        tmp = folder / "tmp" / base
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(fd, content)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        os.close(fd)
        date = ref.date or message_date(header_and_blank_line(content)) or utc_now()
        stamp = (date - EPOCH) // timedelta(microseconds=1) * 1000  # exact, unlike float seconds
        os.utime(tmp, ns=(stamp, stamp))
        final = folder / "cur" / f"{base}:2,{info_letters(ref.flags, letters)}"
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        os.rename(tmp, final)
        return base

    def recover(self, path: FolderPath, point: str | None) -> None:
        """Remove tmp/ files a killed run of ours left behind (never another program's)."""
        tmp = self._dir(path) / "tmp"
        host = hostname_for_filename()
        try:
            names = os.listdir(tmp)
        except OSError:
            return
        for name in names:
            match = _OUR_TMP.match(name)
            if match and match[2] == host and not pid_alive(int(match[1])):
                with contextlib.suppress(OSError):
                    (tmp / name).unlink()

    # -- later passes: flags, removals and moves of copies (migrator.converge) ----------------

    can_update = True

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        folder = self._dir(path)
        if not (folder / "cur").is_dir():
            return set()
        return set(ids) & set(self._locate(folder))

    def ids_by_key(self, path: FolderPath) -> list[tuple[str, str]]:
        folder = self._dir(path)
        if not (folder / "cur").is_dir():
            return []
        refs = (message_ref(folder, sub, name, {}) for sub, name in self._files(folder))
        return [(ref.id, ref.key) for ref in refs if not ref.extra.get("error")]

    def update_flags(self, path: FolderPath, changes: Sequence[FlagChange]) -> None:
        """Rename each file to carry its new flags in the info suffix (into cur/)."""
        folder = self._existing(path)
        wanted = sorted({k for change in changes for k in storable_keywords(change.add)})
        try:
            letters = self._keyword_letters(folder, wanted)
            by_letter = {letter: keyword for keyword, letter in letters.items()}
            where = self._locate(folder)
            for change in changes:
                for target_id in change.ids:
                    rel = where.get(target_id)
                    if rel is None:
                        continue
                    sub, name = rel.split("/", 1)
                    old = (
                        info_flags(split_name(name)[1], by_letter) if sub == "cur" else frozenset()
                    )
                    info = info_letters((old | change.add) - change.remove, letters)
                    os.rename(folder / rel, folder / "cur" / f"{target_id}:2,{info}")
            for sub in SUBDIRS:
                fsync_dir(folder / sub)
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot rename in {folder}: {os_reason(exc)}") from None

    def _keyword_letters(self, folder: Path, wanted: Sequence[str]) -> dict[str, str]:
        return keyword_letters(folder, wanted, self.lock_timeout)

    def remove(self, path: FolderPath, ids: Sequence[str]) -> None:
        self.delete(path, ids)

    def move(self, path: FolderPath, ids: Sequence[str], to: FolderPath) -> list[str | None]:
        """A rename into the other folder's cur/ (same file system): the bytes are not written
        again; keywords take the letters of the new folder."""
        folder, into = self._existing(path), self._dir(to)
        if not (into / "cur").is_dir():
            self.ensure_folder(to)
        by_letter = read_keywords(folder)
        where = self._locate(folder)
        moving = []
        for target_id in ids:
            rel = where.get(target_id)
            if rel is not None:
                sub, name = rel.split("/", 1)
                flags = info_flags(split_name(name)[1], by_letter) if sub == "cur" else frozenset()
                moving.append((target_id, rel, flags))
        try:
            wanted = sorted({k for _, _, flags in moving for k in storable_keywords(flags)})
            letters = self._keyword_letters(into, wanted)
            for target_id, rel, flags in moving:
                os.rename(
                    folder / rel, into / "cur" / f"{target_id}:2,{info_letters(flags, letters)}"
                )
            if moving:
                fsync_dir(into / "cur")
                for sub in SUBDIRS:
                    fsync_dir(folder / sub)
        except OSError as exc:
            raise StoreError(f"{self.label}: cannot move into {into}: {os_reason(exc)}") from None
        done = {target_id for target_id, _, _ in moving}
        return [target_id if target_id in done else None for target_id in ids]
