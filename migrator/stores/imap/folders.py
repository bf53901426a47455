"""ImapStore's folders: server names and paths across namespaces (RFC 2342), LIST with special
uses (RFC 6154), SELECT, rights (RFC 4314), and creating a target's folders."""

from __future__ import annotations

import imaplib
from dataclasses import replace
from typing import Any

from imapclient.exceptions import IMAPClientError

from migrator.errors import FolderError
from migrator.model import INBOX, NAMESPACE_FOLDERS, SPECIAL_USES, Folder, FolderPath
from migrator.stores.imap import wire
from migrator.stores.imap.parse import server_words
from migrator.stores.imap.session import ImapSession


class ImapFolders(ImapSession):
    """The folder layer of ImapStore."""

    def _name(self, path: FolderPath) -> str:
        """The server's name for a path: a folder listed in another user's or a shared
        namespace by its listed name, any other under the personal namespace's prefix."""
        if (
            path not in self._foreign
            and self._namespaces
            and not self._listed
            and path[0] in NAMESPACE_FOLDERS.values()
        ):
            # A worker's own connection that never listed: learn the listed names first.
            self.list_folders()
        return self._foreign.get(path) or self._own_name(path)

    def _own_name(self, path: FolderPath) -> str:
        """The server's name for a path in the personal namespace (where a target writes)."""
        if path == INBOX:
            return "INBOX"
        if len(path) > 1 and not self.delimiter:
            raise FolderError(f"{self.label}: the server has no folder hierarchy")
        return self.prefix + (self.delimiter or "/").join(path)

    def _place(self, name: str, delimiter: str | None) -> tuple[FolderPath, str | None] | None:
        """A listed name's path and namespace (None: personal), relative to the namespace its
        prefix names (the longest that matches; the personal one on a tie); None for a
        namespace's own root."""
        if name.upper() == "INBOX":
            return INBOX, None
        kind: str | None = None
        prefix = self.prefix if name.startswith(self.prefix) else None
        for other, sep, what in self._namespaces:
            if name.startswith(other) and (prefix is None or len(other) > len(prefix)):
                prefix, kind, delimiter = other, what, sep or delimiter
        if prefix is None:  # outside every namespace the server named: take it as the user's
            prefix = ""
        rest = name[len(prefix) :]
        if not rest:
            return None
        if kind is None:
            return self._path(rest, delimiter), None
        levels = tuple(rest.split(delimiter)) if delimiter else (rest,)
        return (NAMESPACE_FOLDERS[kind], *levels), kind

    def _path(self, name: str, delimiter: str | None) -> FolderPath:
        levels = tuple(name.split(delimiter)) if delimiter else (name,)
        if levels[0].upper() == "INBOX":
            levels = (*INBOX, *levels[1:])
        return levels

    def list_folders(self) -> list[Folder]:
        with self._talk("LIST"):
            if "SPECIAL-USE" in self._caps:
                listing = wire.list_special_use(self._c)
            else:
                listing = self._c.list_folders()
        folders: list[Folder] = []
        own: set[FolderPath] = set()
        self._foreign = {}
        # The user's own folders first, so that a shared one never takes a personal one's path.
        listing = sorted(listing, key=lambda entry: self._is_foreign(entry[2]))
        for flags, delim, name in listing:
            flagset = {f.decode() if isinstance(f, bytes) else f for f in flags}
            lowered = {f.lower() for f in flagset}
            if "\\nonexistent" in lowered:
                continue
            if isinstance(delim, bytes):
                delim = delim.decode()
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            use = next((u for u in SPECIAL_USES if u.lower() in lowered), None)
            placed = self._place(name, delim)
            if placed is None:
                continue
            path, namespace = placed
            if namespace is not None:
                if path in own:  # a personal folder of that name comes first
                    continue
                self._foreign[path] = name
            else:
                own.add(path)
            selectable = "\\noselect" not in lowered
            folders.append(Folder(path, use, selectable=selectable, namespace=namespace))
        # Only the user's own folders count as there for a target: it writes nowhere else.
        self._existing = {f.path for f in folders if f.namespace is None}
        self._listed = True
        return [self._readable(f) for f in folders]

    def _readable(self, folder: Folder) -> Folder:
        """Another user's or a shared folder that this user may not read (no 'r' right, RFC
        4314) is only a container here: Cyrus lists such parents ("shared" above "shared.ro")
        without \\Noselect, and SELECT then says it does not exist."""
        if folder.namespace is None or not folder.selectable:
            return folder
        rights = self._myrights(self._foreign[folder.path])
        if rights is None or "r" in rights:
            return folder
        return replace(folder, selectable=False)

    def _is_foreign(self, name: Any) -> bool:
        text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        placed = self._place(text, self.delimiter)
        return placed is not None and placed[1] is not None

    def _select(self, path: FolderPath, readonly: bool) -> dict[bytes, Any]:
        name = self._name(path)
        with self._talk(f"SELECT {name!r}"):
            try:
                info = self._c.select_folder(name, readonly=readonly)
            except imaplib.IMAP4.readonly:
                # Opened, but [READ-ONLY] for this user (RFC 4314 rights): nothing here may be
                # changed. A per-folder failure, not a lost connection (imaplib's class says so).
                self._selected = None
                # imaplib refuses every later command while this answer is kept (it took the
                # folder for one that turned read-only under it): it was expected here.
                wire.forget_read_only(self._c)
                raise FolderError(
                    f"{self.label}: folder {name!r} is read-only for this user "
                    f"(the server said [READ-ONLY]{self._rights_note(name)}); "
                    "nothing was changed there"
                ) from None
            except (imaplib.IMAP4.error, IMAPClientError) as exc:
                if isinstance(exc, imaplib.IMAP4.abort):
                    raise
                raise FolderError(
                    f"{self.label}: cannot open folder {name!r}: {server_words(str(exc))}"
                ) from None
        self._selected = (name, readonly)
        return info

    def _myrights(self, name: str) -> str | None:
        """The user's rights on a folder (RFC 4314 MYRIGHTS: "lrswipkxtecda"); "" when the
        server refuses to say (no rights there, or no such folder); None when it has no ACL
        extension or the answer is unreadable."""
        if "ACL" not in self._caps:
            return None
        try:
            typ, data = wire.myrights(self._c, name)
        except (imaplib.IMAP4.error, IMAPClientError, OSError):
            return None
        if typ != "OK":
            return ""
        words = server_words(data).split()
        return words[-1] if len(words) >= 2 else None

    def _rights_note(self, name: str) -> str:
        """ "; the user's rights there are 'lr'", when the server says."""
        rights = self._myrights(name)
        return f"; the user's rights there are {rights!r}" if rights else ""

    def _ensure_selected(self, path: FolderPath, readonly: bool) -> None:
        name = self._name(path)
        if self._selected != (name, readonly) and not (
            readonly and self._selected == (name, False)
        ):
            self._select(path, readonly)

    # -- a target's folders ---------------------------------------------------------------

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        if not self._existing:
            self.list_folders()
        for depth in range(1, len(path) + 1):
            sub = path[:depth]
            if sub in self._existing or sub == INBOX:
                continue
            name = self._own_name(sub)
            with self._talk(f"CREATE {name!r}"):
                try:
                    if not (
                        depth == len(path)
                        and special_use
                        and self._create_special(name, special_use)
                    ):
                        self._c.create_folder(name)
                except (imaplib.IMAP4.error, IMAPClientError) as exc:
                    if isinstance(exc, imaplib.IMAP4.abort):
                        raise
                    # Another worker may have created it meanwhile.
                    if not self._c.folder_exists(name):
                        raise FolderError(
                            f"{self.label}: cannot create folder {name!r}: {server_words(str(exc))}"
                        ) from None
                try:
                    self._c.subscribe_folder(name)
                except (imaplib.IMAP4.error, IMAPClientError) as exc:
                    if isinstance(exc, imaplib.IMAP4.abort):
                        raise
                    # A subscription is a convenience for mail clients; a server that fails
                    # it (Cyrus under concurrent SUBSCRIBEs: "System I/O error") still has the
                    # folder, and the mail must go on.
                    wire.PROTOCOL_LOG.debug(
                        "SUBSCRIBE %r refused: %s", name, server_words(str(exc))
                    )
            self._existing.add(sub)
        if path not in self._insertable:
            name = self._own_name(path)
            rights = self._myrights(name)
            if rights and "i" not in rights:
                # Every APPEND would be refused: one folder failure, not one per message.
                raise FolderError(
                    f"{self.label}: cannot add messages to folder {name!r}: the user's rights "
                    f"there are {rights!r} (RFC 4314: appending needs 'i')"
                )
            self._insertable.add(path)

    def _create_special(self, name: str, use: str) -> bool:
        """CREATE name (USE (\\Sent)) where the server offers CREATE-SPECIAL-USE (RFC 6154);
        False when it does not, or refuses the attribute, for a plain CREATE instead."""
        if "CREATE-SPECIAL-USE" not in self._caps:
            return False
        return wire.create_special(self._c, name, use)
