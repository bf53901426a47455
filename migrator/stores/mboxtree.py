"""Which file holds which folder in a tree of mbox files: ours (``Archive/2023.mbox``),
Thunderbird's (extension-less files beside ``NAME.sbd/`` directories) and Dovecot's
(extension-less files, directories for levels). migrator.stores.mbox describes the layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from migrator.errors import FolderError
from migrator.model import INBOX, Folder, FolderPath
from migrator.stores.localfiles import decode_level, os_reason, special_use_by_name
from migrator.stores.mboxformat import is_from_line

SUFFIX = ".mbox"
#: Files beside mbox files that are never folders (Thunderbird, Dovecot, ourselves).
_IGNORED_SUFFIXES = (".msf", ".dat", ".html", ".json", ".sqlite", ".lock", ".tmp", ".bak")
#: Bytes read from an extension-less file to see whether it starts with a From_ line.
_SNIFF = 4096


class MboxTree:
    """The folders of a directory of mbox files, and the file of each."""

    def __init__(self, root: Path, label: str) -> None:
        self.root = root
        self.label = label

    def folders(self) -> list[Folder]:
        """Every folder with a file, and the levels above them (not selectable without one)."""
        if not self.root.is_dir():
            return []
        files = self.scan()
        paths: set[FolderPath] = set()
        for folder in files:
            paths.update(folder[:depth] for depth in range(1, len(folder) + 1))
        return [
            Folder(p, special_use_by_name(p) if p in files else None, p in files)
            for p in sorted(paths)
        ]

    def scan(self) -> dict[FolderPath, Path]:
        """Every mbox file under the root, by folder path (ours, Thunderbird's, Dovecot's)."""
        found: dict[FolderPath, Path] = {}

        def walk(directory: Path, prefix: FolderPath) -> None:
            try:
                entries = sorted(os.scandir(directory), key=lambda e: e.name)
            except OSError:
                return
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    is_file = entry.is_file()
                except OSError:
                    continue
                if is_dir:
                    level = name[:-4] if name.endswith(".sbd") else name
                    walk(Path(entry.path), (*prefix, _level(level, prefix)))
                elif is_file and _is_mbox_file(Path(entry.path), name):
                    level = name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name
                    folder = (*prefix, _level(level, prefix))
                    if folder in found:
                        folder = (*prefix, name)
                    found.setdefault(folder, Path(entry.path))

        walk(self.root, ())
        return found

    def file(self, path: FolderPath) -> Path:
        """The file that holds a folder: the existing one if a foreign layout has it, else ours."""
        for level in path:
            if (
                not level
                or level.startswith(".")
                or "/" in level
                or "\0" in level
                or level.endswith(".sbd")
            ):
                raise FolderError(
                    f"{self.label}: folder name level {level!r} cannot be a file name here"
                )
        ours = self.root.joinpath(*path[:-1], path[-1] + SUFFIX)
        try:
            return self._existing_file(path, ours)
        except OSError as exc:  # a name longer than the file system holds (ENAMETOOLONG), ...
            raise FolderError(
                f"{self.label}: no file here can hold this folder: {os_reason(exc)}"
            ) from None

    def _existing_file(self, path: FolderPath, ours: Path) -> Path:
        if ours.exists():
            return ours
        for candidate in (
            self.root.joinpath(*(f"{level}.sbd" for level in path[:-1]), path[-1]),
            self.root.joinpath(*path),
        ):
            if candidate.is_file():
                return candidate
        if path == INBOX:
            for name in ("Inbox", "inbox"):
                if (self.root / name).is_file():
                    return self.root / name
        tree = self.scan() if self.root.is_dir() else {}
        return tree.get(path, ours)


def _level(name: str, prefix: FolderPath) -> str:
    if not prefix and name.upper() == "INBOX":
        return "INBOX"
    return decode_level(name)


def _is_mbox_file(path: Path, name: str) -> bool:
    if name.endswith(SUFFIX):
        return True
    if name.lower().endswith(_IGNORED_SUFFIXES):
        return False
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF)
    except OSError:
        # Unreadable: list it, so the user hears about it instead of losing a folder silently.
        return "." not in name
    if not head:
        # Thunderbird keeps an empty file (and its .msf) for an empty folder.
        return path.with_name(name + ".msf").exists()
    return is_from_line(head.lstrip(b"\r\n").split(b"\n", 1)[0] + b"\n")
