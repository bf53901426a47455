"""What the mbox and Maildir stores share: private files, fsync, locks, folder names, dates.
(Header parsing, for these and every other store, is migrator.headers.)

Kept free of either format so each store module reads as its format alone. Files and directories
are created with explicit modes (0600/0700) through os.open/os.mkdir, never left to the umask,
because an archive of someone's mail must not become readable by other users.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from imapclient import imap_utf7

from migrator.errors import ConfigError, StoreError
from migrator.headers import header_and_blank_line
from migrator.model import FolderPath

FILE_MODE = 0o600
DIR_MODE = 0o700

#: How long a writer waits for another program's lock before giving up (retried by the engine).
LOCK_TIMEOUT = 30.0
#: A dotlock untouched for this long is left over from a crash (Dovecot uses 2-5 minutes).
DOTLOCK_STALE_SECONDS = 300.0
#: How often a writer looks again at a lock another program holds.
LOCK_POLL_SECONDS = 0.05
#: Bytes of a dotlock read for its "<pid>:<host>" line.
_DOTLOCK_TEXT = 64

#: Usual names of special-use folders, for stores that have no flags on disk (RFC 6154).
_SPECIAL_NAMES = {
    "\\Sent": ("sent", "sent items", "sent messages", "sent mail", "sent-mail"),
    "\\Drafts": ("drafts", "draft"),
    "\\Trash": ("trash", "deleted items", "deleted messages", "bin"),
    "\\Junk": ("junk", "spam", "junk e-mail", "junk email", "bulk mail"),
    "\\Archive": ("archive", "archives"),
}


def special_use_by_name(path: FolderPath) -> str | None:
    """The special use a local folder has by its usual name, at the top level only (an
    ``INBOX/Archive`` is a folder of the inbox, not the archive: see folders.special_use)."""
    if len(path) == 1:
        name = path[-1].strip().lower()
        for use, names in _SPECIAL_NAMES.items():
            if name in names:
                return use
    return None


def storable_keywords(flags: Iterable[str]) -> list[str]:
    """The keywords a file can name (mbox X-Keywords, Maildir dovecot-keywords): no whitespace
    in them, no system flags, in a stable order."""
    return sorted(
        k for k in flags if k and not k.startswith("\\") and not any(c.isspace() for c in k)
    )


def check_root(path: Path, label: str, *, create: bool, file_ok: bool) -> None:
    """At connect, a ConfigError the user can act on when the archive's root cannot serve: not a
    directory (nor a file, when ``file_ok``), not readable, or missing while ``create`` is off."""
    if path.exists():
        if path.is_dir():
            mode = os.R_OK | os.X_OK
        elif file_ok and path.is_file():
            mode = os.R_OK
        else:
            raise ConfigError(
                f"{label}: not a file or a directory" if file_ok else f"{label}: not a directory"
            )
        if not os.access(path, mode):
            raise ConfigError(f"{label}: permission denied; check the owner and mode")
    elif not create:
        raise ConfigError(
            f"{label}: no such file or directory" if file_ok else f"{label}: no such directory"
        )


# -- folder names on disk ---------------------------------------------------------------------


def decode_level(name: str) -> str:
    """A folder level as read from disk: modified UTF-7 (what Dovecot writes) when the name is
    valid mUTF-7 that encodes back to itself, else the name as it is (UTF-8 layouts)."""
    if "&" not in name or not name.isascii():
        return name
    try:
        decoded = imap_utf7.decode(name.encode("ascii"))
    except (UnicodeError, ValueError):
        return name
    if imap_utf7.encode(decoded) != name.encode("ascii"):
        return name
    return decoded


def encode_level(level: str) -> str:
    """A folder level as Dovecot names it on disk (modified UTF-7)."""
    return imap_utf7.encode(level).decode("ascii")


# -- private files and durability -------------------------------------------------------------


def make_private_dirs(path: Path) -> list[Path]:
    """Create ``path`` and missing parents with mode 0700; return the directories created, the
    outermost first, so the caller can fsync their parents."""
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        created.append(directory)
    for directory in created:
        fsync_dir(directory.parent)
    return created


def fsync_dir(path: Path) -> None:
    """Make a directory entry (a new or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


#: Parts per writev: IOV_MAX on Linux and the BSDs.
_IOV_MAX = 1024


def write_parts(fd: int, parts: Sequence[bytes]) -> None:
    """Write the parts one after another in as few system calls as the kernel allows, without
    first joining them into one more copy."""
    pending: list[bytes | memoryview] = list(parts)
    first = 0
    while first < len(pending):
        written = os.writev(fd, pending[first : first + _IOV_MAX])
        while first < len(pending) and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:  # a short write ended inside this part
            pending[first] = memoryview(pending[first])[written:]


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically and durably with ``data`` (tmp, fsync, rename, fsync dir)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def os_reason(exc: OSError) -> str:
    """The short reason of an OSError, without Python's repr noise."""
    return exc.strerror or str(exc)


# -- locks ------------------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dotlock_stale(lock: Path) -> bool:
    try:
        st = lock.stat()
        text = lock.read_bytes()[:_DOTLOCK_TEXT]
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if time.time() - st.st_mtime > DOTLOCK_STALE_SECONDS:
        return True
    match = re.match(rb"\s*(\d+)", text)
    # A pid is only meaningful when the lock was made on this host.
    if match and (b":" not in text or socket.gethostname().encode() in text):
        return not pid_alive(int(match[1]))
    return False


@contextlib.contextmanager
def dotlock(target: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[bool]:
    """Hold ``<target>.lock`` as mutt, procmail and Dovecot do (created O_EXCL, holding our pid).

    Yields False when the directory does not let us create the lock file: the caller then relies
    on its fcntl lock alone, as Dovecot does for "dotlock_try"."""
    lock = target.with_name(target.name + ".lock")
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except FileExistsError:
            if _dotlock_stale(lock):
                with contextlib.suppress(FileNotFoundError):
                    lock.unlink()
                continue
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{target}: locked by another program ({lock} exists); "
                    "close the mail client using it or remove a stale lock file",
                    transient=True,
                ) from None
            time.sleep(LOCK_POLL_SECONDS)
            continue
        except PermissionError:
            yield False
            return
        try:
            write_all(fd, f"{os.getpid()}:{socket.gethostname()}\n".encode())
        finally:
            os.close(fd)
        try:
            yield True
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        return


def fcntl_lock(fd: int, target: Path, timeout: float = LOCK_TIMEOUT) -> None:
    """Take an exclusive POSIX record lock on an open file (what Dovecot calls "fcntl")."""
    import fcntl

    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            if time.monotonic() > deadline:
                raise StoreError(
                    f"{target}: locked by another program; close the mail client using it",
                    transient=True,
                ) from None
            time.sleep(LOCK_POLL_SECONDS)


def fcntl_unlock(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        fcntl.lockf(fd, fcntl.LOCK_UN)


# -- message text and dates -------------------------------------------------------------------

#: The header cut mbox and Maildir have always made (migrator.headers says why it stays).
header_block = header_and_blank_line


def to_lf(data: bytes) -> bytes:
    """Line endings as mbox and Maildir keep them (Dovecot serves them back as CRLF); a bare CR
    is kept."""
    return data.replace(b"\r\n", b"\n")


def utc_now() -> datetime:
    return datetime.now(UTC)


def hostname_for_filename() -> str:
    """The host part of a Maildir file name, with '/' and ':' escaped as Dovecot does."""
    return socket.gethostname().replace("/", "\\057").replace(":", "\\072") or "localhost"
