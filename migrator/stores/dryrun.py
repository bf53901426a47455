"""A target that reads through to the real one and writes nothing: --dry-run's one decision.

It is a store like the others (it implements ``stores.base.Target``) but speaks no protocol of
its own: every read goes to the wrapped target, every write is answered as if it had succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence

from migrator.model import Folder, FolderPath, MessageRef
from migrator.stores.base import AppendResult, FlagChange, Target


class DryRunTarget(Target):
    """Reads through to the real target, writes nothing: the one place dry runs are decided."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.label = inner.label
        self.delimiter = inner.delimiter
        self.max_message_size = inner.max_message_size
        self.can_update = inner.can_update

    def connect(self) -> None:
        self.inner.connect()
        self.delimiter = self.inner.delimiter
        self.max_message_size = self.inner.max_message_size
        self.can_update = self.inner.can_update

    def close(self) -> None:
        self.inner.close()

    def list_folders(self) -> list[Folder]:
        return self.inner.list_folders()

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        pass

    def index(self, path: FolderPath) -> list[str]:
        return list(self.inner.index(path))

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        return self.inner.present_ids(path, ids)

    def ids_by_key(self, path: FolderPath) -> list[tuple[str, str]]:
        return self.inner.ids_by_key(path)

    def update_flags(self, path: FolderPath, changes: Sequence[FlagChange]) -> None:
        pass

    def remove(self, path: FolderPath, ids: Sequence[str]) -> None:
        pass

    def move(self, path: FolderPath, ids: Sequence[str], to: FolderPath) -> list[str | None]:
        return [None for _ in ids]

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        return [AppendResult() for _ in items]
