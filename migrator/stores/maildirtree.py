"""Maildir++ on disk: folder directories, message file names and the flags in them, the
keywords file, listing a folder. migrator.stores.maildir describes the layout and keeps the store.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from migrator.errors import FolderError, StoreError
from migrator.headers import header_and_blank_line, message_key
from migrator.model import INBOX, UNCOPIED_FLAGS, Folder, FolderPath, MessageRef, crlf_size
from migrator.stores.localfiles import (
    decode_level,
    dotlock,
    hostname_for_filename,
    os_reason,
    special_use_by_name,
    storable_keywords,
    write_private_file,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEYWORDS_FILE = "dovecot-keywords"
#: Keywords a folder can name: one lower-case letter each, a to z.
KEYWORD_LETTERS = 26
#: Bytes read at a time from a message file whose name gives its size (the header is enough).
HEADER_READ_STEP = 16384

#: System flags and their letters in the ":2," info, as Dovecot and mutt write them.
FLAG_LETTERS = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}
LETTER_FLAGS = {letter: flag for flag, letter in FLAG_LETTERS.items()} | {"T": "\\Deleted"}
_SIZE = re.compile(r",W=(\d+)")
_LOOKS_LIKE_MAIL = re.compile(rb"^(From |[!-9;-~]+[ \t]*:)")
#: Delivery names start with the time: "1700000000.M1P2Q3.host", "1700000000.12345_1.host".
_DELIVERY_NAME = re.compile(r"^\d+\.")
_counter = itertools.count(1)


def split_name(name: str) -> tuple[str, str]:
    """(unique base, info after ':2,'); the info is empty for a file without flags."""
    base, sep, info = name.partition(":")
    return base, info[2:] if sep and info.startswith("2,") else ""


def info_flags(info: str, letters: dict[str, str]) -> frozenset[str]:
    """Flags from the ':2,' letters; lower-case letters are keywords through ``letters``."""
    flags = {LETTER_FLAGS[c] for c in info if c in LETTER_FLAGS}
    flags.update(letters[c] for c in info if c.islower() and c in letters)
    return frozenset(flags)


def read_keywords(folder: Path) -> dict[str, str]:
    """letter -> keyword, from Dovecot's ``dovecot-keywords`` ("<index> <keyword>" lines)."""
    try:
        text = (folder / KEYWORDS_FILE).read_text("utf-8", "replace")
    except OSError:
        return {}
    letters: dict[str, str] = {}
    for line in text.splitlines():
        number, _, keyword = line.partition(" ")
        if number.isdigit() and int(number) < KEYWORD_LETTERS and keyword:
            letters[chr(ord("a") + int(number))] = keyword
    return letters


def unique_name(size: int, vsize: int) -> str:
    """A new file name in Dovecot's form, unique by time, pid and a per-process counter."""
    now = time.time()
    seconds = int(now)
    micro = int((now - seconds) * 1_000_000)
    return (
        f"{seconds}.M{micro}P{os.getpid()}Q{next(_counter)}.{hostname_for_filename()}"
        f",S={size},W={vsize}"
    )


# -- keywords -----------------------------------------------------------------------------------


def keyword_letters(folder: Path, wanted: Sequence[str], lock_timeout: float) -> dict[str, str]:
    """keyword -> letter of the folder, with ``wanted`` added."""
    if wanted:
        return _add_keywords(folder, wanted, lock_timeout)
    return {keyword: letter for letter, keyword in read_keywords(folder).items()}


def _add_keywords(folder: Path, wanted: Sequence[str], lock_timeout: float) -> dict[str, str]:
    """keyword -> letter for ``wanted``, adding new ones to dovecot-keywords (under its
    dotlock, written atomically) before any message uses them."""
    file = folder / KEYWORDS_FILE
    with dotlock(file, lock_timeout):
        letters = read_keywords(folder)
        by_keyword = {keyword: letter for letter, keyword in letters.items()}
        free = [chr(c) for c in range(ord("a"), ord("z") + 1) if chr(c) not in letters]
        added = False
        for keyword in wanted:
            if keyword not in by_keyword and free:
                letter = free.pop(0)
                by_keyword[keyword] = letter
                letters[letter] = keyword
                added = True
        if added:
            lines = "".join(
                f"{ord(letter) - ord('a')} {keyword}\n"
                for letter, keyword in sorted(letters.items())
            )
            write_private_file(file, lines.encode("utf-8"))
    return by_keyword


def info_letters(flags: Iterable[str], letters: dict[str, str]) -> str:
    """The info letters of ``flags`` (keywords by the folder's dovecot-keywords letters)."""
    kept = set(flags) - UNCOPIED_FLAGS
    info = "".join(sorted(FLAG_LETTERS[f] for f in kept if f in FLAG_LETTERS))
    return info + "".join(sorted(letters[k] for k in storable_keywords(kept) if k in letters))


def _read_header(handle: BinaryIO) -> bytes:
    """The start of a message up to its empty line, read in small steps."""
    data = b""
    while True:
        chunk = handle.read(HEADER_READ_STEP)
        if not chunk:
            return data
        data += chunk
        if b"\n\n" in data or b"\r\n\r\n" in data:
            return data


# -- listing ----------------------------------------------------------------------------------


def list_tree(root: Path, label: str) -> list[Folder]:
    """The folders of a Maildir++ tree: INBOX, each .A.B directory with a cur/, and the levels
    above them (not selectable without a directory of their own)."""
    if not root.is_dir():
        return []
    selectable: set[FolderPath] = set()
    if (root / "cur").is_dir():
        selectable.add(INBOX)
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        raise StoreError(f"{label}: cannot list: {os_reason(exc)}") from None
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or name in (".", ".."):
            continue
        levels = name[1:].split(".")
        if any(not level for level in levels):
            continue
        with contextlib.suppress(OSError):
            if entry.is_dir() and os.path.isdir(os.path.join(entry.path, "cur")):
                selectable.add(tuple(decode_level(level) for level in levels))
    paths = {p[:depth] for p in selectable for depth in range(1, len(p) + 1)}
    return [
        Folder(p, special_use_by_name(p) if p in selectable else None, p in selectable)
        for p in sorted(paths)
    ]


def message_files(folder: Path, label: str) -> Iterator[tuple[str, str]]:
    """(sub-directory, file name) of each message file, new/ first, in name order."""
    seen: set[str] = set()
    for sub in ("new", "cur"):
        try:
            entries = sorted(os.scandir(folder / sub), key=lambda e: e.name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise FolderError(f"{label}: cannot list {folder / sub}: {os_reason(exc)}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            base = split_name(entry.name)[0]
            if base not in seen:
                seen.add(base)
                yield sub, entry.name


def message_ref(folder: Path, sub: str, name: str, letters: dict[str, str]) -> MessageRef:
    """The ref of one message file: id from its name, flags from its info, date from its mtime,
    size from its name (W=) or its bytes, key from its header."""
    base, info = split_name(name)
    file = folder / sub / name
    extra = {"file": f"{sub}/{name}"}
    flags = info_flags(info, letters) if sub == "cur" else frozenset()
    try:
        mtime_ns = file.stat().st_mtime_ns
        date: datetime | None = EPOCH + timedelta(microseconds=mtime_ns // 1000)
        sized = _SIZE.search(base)
        with open(file, "rb") as handle:
            data = handle.read() if sized is None else _read_header(handle)
    except OSError as exc:
        extra["error"] = f"cannot read {file}: {os_reason(exc)}"
        return MessageRef(base, 0, flags, None, "", extra)
    size = int(sized[1]) if sized else crlf_size(data)
    if not _DELIVERY_NAME.match(name) and not _LOOKS_LIKE_MAIL.match(data):
        extra["error"] = (
            f"{file} does not look like a message (no header field at its start); "
            "it was left in place"
        )
    return MessageRef(
        base, size, flags, date, message_key(header_and_blank_line(data), size), extra
    )
