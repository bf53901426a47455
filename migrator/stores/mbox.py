"""mbox archives: a directory of mboxrd files, one per folder, or a single mbox file.

Layout. ``mbox:DIR`` keeps folder Archive/2023 in DIR/Archive/2023.mbox and INBOX in
DIR/INBOX.mbox; a folder that holds both messages and sub-folders is a file and a directory side
by side (Archive.mbox, Archive/). ``mbox:FILE.mbox`` (or any existing file) is one folder, INBOX;
as a target every folder is appended to that one file. As a source the tree may also be what
Thunderbird keeps (extension-less mbox files beside ``NAME.sbd/`` directories, ``.msf`` indexes
and other files ignored) or what Dovecot keeps (extension-less files, directories for levels);
extension-less files count only when they start with a From_ line.

Format. mboxrd (RFC 4155): each message is a From_ line carrying its INTERNALDATE (with its
numeric zone, which Dovecot reads), the message with LF line endings and every line matching
``>*From `` quoted with one more '>', and one empty line. Reading removes exactly that: the From_
line, the final newline and one '>'. Files Dovecot wrote (Content-Length, no quoting) are read by
their Content-Length, as Dovecot reads them, and are not unquoted.

Flags live in the header fields mutt and Dovecot use: ``Status: RO`` (\\Seen), ``X-Status: AFT``
(\\Answered \\Flagged \\Draft; D is \\Deleted, never written) and ``X-Keywords:``. On reading, these
bookkeeping fields and the others Dovecot keeps (X-UID, X-IMAP, X-IMAPbase, Content-Length) are
removed from the message, as Dovecot hides them. A message that arrives with a field of one of
these names keeps it: the writer renames it ``X-Migrator-Kept-<name>`` (one more prefix for each
one already there) and the reader renames it back, so every message round-trips byte for byte.
Thunderbird's X-Mozilla-Status/-Keys give the flags of a message that has no Status field; messages
Thunderbird marked expunged (awaiting compaction) are not listed.

Identity. A message's id is the digest of its bytes (as fetch returns them) and how many identical
messages come before it in the file: ``<blake2b-128 hex>:<n>``. It survives the file growing, mutt
rewriting Status fields, Dovecot adding X-UID, and other programs deleting earlier messages, all of
which would shift a byte offset; so the validity is a constant naming this scheme.

Appending. Under a dotlock (``FILE.lock``) and an fcntl lock, as Dovecot's ``mbox_write_locks =
dotlock fcntl``: a small sidecar ``.FILE.migrator-append`` records where the batch starts before a
byte is written; the batch is written, fsynced, then the sidecar is removed. A sidecar found later
means a writer died mid-batch: ``recover`` (or the next append) truncates back to where that batch
began, never below the journal's last committed point, and only when the bytes before it are
unchanged (same inode, same digest of the 64 bytes before it). Until then listing and ``index``
stop at that offset, because the engine reconciles against ``index`` before it recovers: a batch
written whole but never finished must not count as copied and then be cut. Bytes another program
appended after our last batch (no sidecar) are never touched.

The first message of a new file carries Dovecot's ``X-IMAPbase`` with the keyword list and room to
grow: Dovecot drops, and rewrites away, X-Keywords entries missing from that list. Adding a keyword
later overwrites part of that padding in place, the only write to bytes already archived; it never
changes a message.

Deleting. ``can_delete`` is False: removing a message means rewriting the file, which would break
the promise that nothing archived is ever rewritten and race with mail clients reading it.

Modules. mboxformat.py is the format (a record in and out, a file read as records), mboxtree.py
the layout (which file holds which folder); this module is the store and its torn-batch sidecar.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from migrator.errors import FolderError, MessageError, StoreError
from migrator.headers import header_and_blank_line, message_key
from migrator.model import INBOX, Folder, FolderPath, FolderState, MessageRef, crlf_size
from migrator.stores.base import AppendResult, Source, Target
from migrator.stores.localfiles import (
    FILE_MODE,
    LOCK_TIMEOUT,
    check_root,
    dotlock,
    fcntl_lock,
    fcntl_unlock,
    fsync_dir,
    make_private_dirs,
    os_reason,
    write_all,
    write_parts,
)
from migrator.stores.mboxformat import (
    Decoded,
    NotMboxError,
    content_digest,
    decode_record,
    format_from_line,
    imapbase_field,
    is_from_line,
    iter_records,
    keywords_of,
    list_keywords,
    parse_from_date,
    quote,
    render_message,
    render_parts,
    unquote,
)
from migrator.stores.mboxtree import SUFFIX, MboxTree

#: Names the validity after the id scheme, so a future scheme does not match old journal rows.
VALIDITY = "mbox-digest-1"
#: Rendered bytes gathered into one write.
WRITE_SPAN = 1024 * 1024
#: Bytes before an offset whose digest tells that the file before it is unchanged.
TAIL_BYTES = 64

#: The format and the layout, importable from here as they were before they had modules.
__all__ = [
    "SUFFIX",
    "VALIDITY",
    "MboxStore",
    "decode_record",
    "format_from_line",
    "is_from_line",
    "parse_from_date",
    "quote",
    "render_message",
    "render_parts",
    "unquote",
]


# -- the store --------------------------------------------------------------------------------


@dataclass
class _Listing:
    """The refs open_folder found, kept for the list_messages that follows it."""

    signature: tuple[int, int, int]
    refs: list[MessageRef]


class MboxStore(Source, Target):
    """Both roles over a tree of mbox files or a single mbox file; see the module docstring."""

    delimiter = "/"
    stable_ids = True
    can_delete = False
    #: A batch costs four fsyncs and two journal commits (see Target.commit_group).
    commit_group = 4

    def __init__(
        self, path: Path, *, create: bool = True, lock_timeout: float = LOCK_TIMEOUT
    ) -> None:
        """``create`` False makes a missing path an error at connect (a source must exist)."""
        self.path = Path(path)
        self.label = f"mbox:{path}"
        self.create = create
        self.lock_timeout = lock_timeout
        self.single = self.path.suffix == SUFFIX and not self.path.is_dir()
        self._points: dict[Path, str] = {}
        self._floors: dict[Path, str | None] = {}
        self._listings: dict[Path, _Listing] = {}
        self._tree = MboxTree(self.path, self.label)

    # -- connecting and folders ------------------------------------------------------------

    def connect(self) -> None:
        if self.path.exists():
            self.single = self.path.is_file()
        check_root(self.path, self.label, create=self.create, file_ok=True)

    def close(self) -> None:
        self._listings.clear()

    def list_folders(self) -> list[Folder]:
        if self.single:
            return [Folder(INBOX)]
        return self._tree.folders()

    def _file(self, path: FolderPath) -> Path:
        """The file that holds a folder (see MboxTree.file); the file itself when single."""
        return self.path if self.single else self._tree.file(path)

    # -- reading ---------------------------------------------------------------------------

    def open_folder(self, path: FolderPath) -> FolderState:
        file = self._readable(path)
        refs = list(self._list(file))
        self._listings[file] = _Listing(_signature(file), refs)
        return FolderState(VALIDITY, len(refs))

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        file = self._readable(path)
        listing = self._listings.pop(file, None)
        if listing is not None and listing.signature == _signature(file):
            refs: Iterable[MessageRef] = listing.refs
        else:
            refs = self._list(file)
        return (ref for ref in refs if ref.id not in skip)

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        file = self._readable(path)
        located: dict[str, tuple[int, int]] | None = None
        try:
            handle = open(file, "rb")  # noqa: SIM115 - closed in finally, around the yields
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read {file}: {os_reason(exc)}") from None
        try:
            for ref in refs:
                if ref.extra.get("error"):
                    yield ref, MessageError(ref.extra["error"])
                    continue
                content = self._read_at(
                    handle, ref, ref.extra.get("offset"), ref.extra.get("length")
                )
                if content is None:
                    if located is None:
                        located = {
                            r.id: (int(r.extra["offset"]), int(r.extra["length"]))
                            for r in self._list(file)
                        }
                    where = located.get(ref.id)
                    if where is not None:
                        content = self._read_at(handle, ref, str(where[0]), str(where[1]))
                if content is None:
                    yield (
                        ref,
                        MessageError(f"no longer in {file}: the file changed since it was listed"),
                    )
                else:
                    yield ref, content
        finally:
            handle.close()

    def _read_at(
        self, handle: BinaryIO, ref: MessageRef, offset: str | None, length: str | None
    ) -> bytes | None:
        if offset is None or length is None:
            return None
        try:
            record = os.pread(handle.fileno(), int(length), int(offset))
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read: {os_reason(exc)}") from None
        decoded = decode_record(record)
        if content_digest(decoded.content).hex() != ref.id.partition(":")[0]:
            return None
        return decoded.content

    def _readable(self, path: FolderPath) -> Path:
        file = self._file(path)
        if not file.exists():
            raise FolderError(f"{self.label}: folder {'/'.join(path)} does not exist")
        if not os.access(file, os.R_OK):
            raise FolderError(f"{self.label}: cannot read {file}: permission denied")
        return file

    def _list(self, file: Path) -> Iterator[MessageRef]:
        seen: dict[bytes, int] = {}
        for n, (offset, record, decoded) in enumerate(self._decoded(file)):
            if decoded.expunged or (decoded.pseudo and n == 0):
                continue
            digest = content_digest(decoded.content)
            n = seen.get(digest, 0)
            seen[digest] = n + 1
            size = crlf_size(decoded.content)
            extra = {"offset": str(offset), "length": str(len(record))}
            if decoded.error:
                extra["error"] = decoded.error
            yield MessageRef(
                id=f"{digest.hex()}:{n}",
                size=size,
                flags=decoded.flags,
                date=decoded.date,
                key=message_key(header_and_blank_line(decoded.content), size),
                extra=extra,
            )

    def _decoded(self, file: Path) -> Iterator[tuple[int, bytes, Decoded]]:
        try:
            handle = open(file, "rb")  # noqa: SIM115 - closed in finally, around the yields
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read {file}: {os_reason(exc)}") from None
        try:
            size = os.fstat(handle.fileno()).st_size
            # A batch a dead writer left unfinished is not there: recover will cut it off, so
            # index() must not count its messages as already copied.
            cut = _unfinished_from(handle.fileno(), file, self._floors.get(file))
            for offset, record in iter_records(handle, handle.fileno(), size, cut):
                yield offset, record, decode_record(record)
        except NotMboxError:
            raise FolderError(
                f"{self.label}: {file} is not an mbox file (it does not start with a 'From ' "
                "line); nothing was read from it"
            ) from None
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot read {file}: {os_reason(exc)}") from None
        finally:
            handle.close()

    # -- writing ---------------------------------------------------------------------------

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        file = self._file(path)
        if file.exists():
            return
        try:
            make_private_dirs(file.parent)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            os.close(fd)
            fsync_dir(file.parent)
        except FileExistsError:
            return
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot create {file}: {os_reason(exc)}") from None

    def index(self, path: FolderPath) -> Iterable[str]:
        file = self._file(path)
        if not file.exists():
            return []
        return [ref.key for ref in self._list(file) if not ref.extra.get("error")]

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        if not items:
            return []
        file = self._file(path)
        try:
            make_private_dirs(file.parent)
        except OSError as exc:
            raise FolderError(
                f"{self.label}: cannot create {file.parent}: {os_reason(exc)}"
            ) from None
        keywords = sorted({k for ref, _ in items for k in keywords_of(ref.flags)})
        with self._locked(file) as fd:
            self._recover_locked(fd, file, self._floors.get(file))
            start = os.fstat(fd).st_size
            first_fields = imapbase_field(keywords, int(time.time())) if start == 0 else b""
            if start and keywords:
                try:
                    list_keywords(fd, keywords)
                except OSError as exc:
                    raise StoreError(
                        f"{self.label}: cannot write {file}: {os_reason(exc)}"
                    ) from None
            sidecar = _begin(fd, file, start)
            offsets: list[int] = []
            position = start
            try:
                os.lseek(fd, start, os.SEEK_SET)
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    # Another program left no final newline; a From_ line must start a line.
                    write_all(fd, b"\n")
                    position += 1
                # Records go out in gathered writes of about WRITE_SPAN: few system calls for
                # many small messages, and no whole copy of a large one.
                pending: list[bytes] = []
                held = 0
                for ref, data in items:
                    offsets.append(position)
                    for part in render_parts(data, ref.flags, ref.date, first_fields):
                        pending.append(part)
                        held += len(part)
                        position += len(part)
                        if held >= WRITE_SPAN:
                            write_parts(fd, pending)
                            _start_writeback(fd, position - held, held)
                            pending, held = [], 0
                    first_fields = b""
                write_parts(fd, pending)
                os.fsync(fd)
            except OSError as exc:
                # Nothing of this batch counts: cut it off now rather than at the next run.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                    os.fsync(fd)
                _end(sidecar, file)
                raise StoreError(f"{self.label}: cannot write {file}: {os_reason(exc)}") from None
            _end(sidecar, file)
            self._points[file] = _point(fd, position)
        return [AppendResult(target_id=str(offset)) for offset in offsets]

    def resume_point(self, path: FolderPath) -> str | None:
        return self._points.get(self._file(path))

    def recover(self, path: FolderPath, point: str | None) -> None:
        file = self._file(path)
        self._floors[file] = point
        if not file.exists() or not _sidecar(file).exists():
            return
        with self._locked(file) as fd:
            self._recover_locked(fd, file, point)

    @contextlib.contextmanager
    def _locked(self, file: Path) -> Iterator[int]:
        try:
            fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise FolderError(f"{self.label}: cannot open {file}: {os_reason(exc)}") from None
        try:
            with dotlock(file, self.lock_timeout):
                fcntl_lock(fd, file, self.lock_timeout)
                try:
                    yield fd
                finally:
                    fcntl_unlock(fd)
        finally:
            os.close(fd)

    def _recover_locked(self, fd: int, file: Path, point: str | None) -> None:
        """Cut off a batch a dead writer left unfinished; see the module docstring."""
        if not _sidecar(file).exists():
            return
        cut = _unfinished_from(fd, file, point)
        if cut is not None and cut < os.fstat(fd).st_size:
            os.ftruncate(fd, cut)
            os.fsync(fd)
        # An untrusted sidecar means the file changed since: keep every byte, drop the record.
        _end(_sidecar(file), file)


def _begin(fd: int, file: Path, start: int) -> Path | None:
    """Record where this batch starts, durably, before writing any of it."""
    sidecar = _sidecar(file)
    state = {"offset": start, "inode": os.fstat(fd).st_ino, "tail": _tail(fd, start)}
    try:
        out = os.open(sidecar, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            write_all(out, json.dumps(state).encode())
            os.fsync(out)
        finally:
            os.close(out)
        fsync_dir(file.parent)
    except OSError:
        # A directory we may not write to: the batch goes on, without torn-tail recovery.
        return None
    return sidecar


def _end(sidecar: Path | None, file: Path) -> None:
    if sidecar is None:
        return
    with contextlib.suppress(FileNotFoundError):
        sidecar.unlink()
    fsync_dir(file.parent)


def _unfinished_from(fd: int, file: Path, point: str | None) -> int | None:
    """Where the batch a dead writer left unfinished begins: the offset its sidecar records,
    never below the journal's committed ``point``; None without a sidecar that still describes
    this file (same inode, same bytes before the offset)."""
    try:
        state = json.loads(_sidecar(file).read_bytes())
        start, inode, tail = int(state["offset"]), int(state["inode"]), str(state["tail"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    st = os.fstat(fd)
    if not (0 <= start <= st.st_size and inode == st.st_ino and _tail(fd, start) == tail):
        return None
    floor = _parse_point(point)
    if floor is not None and floor[0] <= st.st_size and _tail(fd, floor[0]) == floor[1]:
        start = max(start, floor[0])
    return start


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing these bytes to disk now (and not keep them cached: an
    archive is written once and read rarely), so that the fsync at the end of the batch waits
    for the last piece only, not for all of it."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _sidecar(file: Path) -> Path:
    return file.with_name(f".{file.name}.migrator-append")


def _tail(fd: int, end: int) -> str:
    """A digest of the TAIL_BYTES before ``end``: enough to tell that the file before it is the
    file we wrote, not one another program rewrote."""
    start = max(0, end - TAIL_BYTES)
    return hashlib.blake2b(os.pread(fd, end - start, start), digest_size=8).hexdigest()


def _point(fd: int, end: int) -> str:
    return f"{end}:{_tail(fd, end)}"


def _parse_point(point: str | None) -> tuple[int, str] | None:
    if not point:
        return None
    end, _, tail = point.partition(":")
    try:
        return int(end), tail
    except ValueError:
        return None


def _signature(file: Path) -> tuple[int, int, int]:
    st = file.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns
