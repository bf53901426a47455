"""The interface every store implements, and nothing else.

A store is one side of a copy: an IMAP account, a POP3 mailbox, a tree of mbox files or a Maildir.
The engine only ever talks to these two classes; it never learns which protocol is behind them.
Stores never print, never read the environment and never exit: they return values or raise the
errors of ``migrator.errors``.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Self

from migrator.errors import MessageError
from migrator.model import Folder, FolderPath, FolderState, MessageRef

#: The largest message a network store copies (256 MiB; the big providers stop at 25-150 MB):
#: a size claimed or announced above it fails that message, and nothing of that size is ever
#: allocated, whatever a server says.
LARGEST_MESSAGE = 256 * 1024 * 1024
#: Each --timeout seconds of a response must bring at least this much of it, so that a server
#: that trickles a line or a message a byte at a time cannot hold a read for longer than
#: ``timeout * (1 + size / MIN_BYTES_PER_TIMEOUT)``.
MIN_BYTES_PER_TIMEOUT = 1024 * 1024


@dataclass(frozen=True)
class AppendResult:
    """What the target said about one appended message: its new id (None when the target
    cannot tell, e.g. no UIDPLUS), or the reason it refused the message."""

    target_id: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class FlagChange:
    """Flags to add and to remove on a set of target messages: one STORE pair for all of them."""

    add: frozenset[str]
    remove: frozenset[str]
    ids: Sequence[str]


@dataclass(frozen=True)
class FlagListing:
    """Source flags by message id: all of the folder's messages (``complete``), or those changed
    since an earlier listing. ``mark`` is where the next one may start (a CONDSTORE
    HIGHESTMODSEQ), None when the store cannot list changes only."""

    flags: dict[str, frozenset[str]]
    complete: bool
    mark: str | None = None


class Store:
    """What both roles share. ``label`` names the endpoint in messages (never with a secret)."""

    label: str = ""

    def connect(self) -> None:
        """Open connections and log in; raise ConnectError with one clear line on failure."""

    def close(self) -> None:
        """Release everything; safe to call twice and after a failure."""

    def list_folders(self) -> list[Folder]:
        raise NotImplementedError

    def describe(self) -> list[tuple[str, str]]:
        """What `migrator check` shows about a connected store: (name, value) pairs."""
        return [("endpoint", self.label)]

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Source(Store):
    """Where messages come from."""

    #: True when ids survive across sessions (IMAP UIDs under one UIDVALIDITY, POP3 UIDL).
    stable_ids: bool = True
    #: True when the store can remove messages after the copy (IMAP expunge, POP3 DELE, unlink).
    can_delete: bool = False

    def open_folder(self, path: FolderPath) -> FolderState:
        raise NotImplementedError

    def list_messages(
        self, path: FolderPath, skip: Container[str] = (), keys: bool = True
    ) -> Iterator[MessageRef]:
        """Describe the messages of an opened folder, leaving out ids in ``skip`` as cheaply as the
        protocol allows (the journal's done set: a rerun with nothing to do fetches no metadata).
        With ``keys`` False a store may leave MessageRef.key empty when computing it costs extra
        (IMAP: a header fetch per message); the engine then derives it from the fetched bytes."""
        raise NotImplementedError

    def fetch(
        self, path: FolderPath, refs: Sequence[MessageRef]
    ) -> Iterator[tuple[MessageRef, bytes | MessageError]]:
        """Yield each message's bytes, in the order of ``refs``, batching round trips and holding a
        bounded number of bytes. A message that cannot be read (gone, unparsable) is yielded with a
        MessageError saying why, and the engine records it as failed; anything else raises."""
        raise NotImplementedError

    def delete(self, path: FolderPath, ids: Sequence[str]) -> None:
        """Remove exactly these messages (already confirmed by the target and the journal)."""
        raise NotImplementedError

    def message_ids(self, path: FolderPath) -> set[str]:
        """The ids of every message of an opened folder, as cheaply as the protocol allows."""
        return set(self.flag_listing(path).flags)

    def flag_mark(self, path: FolderPath) -> str | None:
        """Where a flag listing of the folder starting now may start later (FlagListing.mark);
        None when the store cannot list changes only."""
        return None

    def flag_listing(self, path: FolderPath, since: str | None = None) -> FlagListing:
        """The flags of an opened folder's messages, for a later pass to compare with those it
        copied: every message, or with ``since`` (a ``FlagListing.mark`` of an earlier listing)
        those changed since, where the store can tell (IMAP CONDSTORE, RFC 7162)."""
        flags = {ref.id: ref.flags for ref in self.list_messages(path, keys=False)}
        return FlagListing(flags, complete=True)


class Target(Store):
    """Where messages go."""

    #: The character that separates hierarchy levels in this store, so that a source folder level
    #: holding it can be renamed; None when levels may hold any character.
    delimiter: str | None = None
    #: Largest message the target accepts (RFC 7889 APPENDLIMIT or a profile limit), when known.
    max_message_size: int | None = None
    #: Seconds an append cut off by a crash or a lost connection may still take to land: bytes a
    #: dead process had handed to the kernel reach a network server after it. 0 for local stores,
    #: whose writes are done or not when the process dies.
    late_append_window: float = 0.0
    #: True when appends on several connections to one folder go faster than on one (a server;
    #: not a file, whose lock lets one writer in at a time).
    concurrent_appends: bool = False
    #: How many fetched batches one append may gather when they are waiting (one durable commit
    #: for all). A server's commit is a round trip that pipelining hides; a local archive's is a
    #: handful of fsyncs (file, directory, journal) that a few megabytes of mail amortise.
    commit_group: int = 1

    def ensure_folder(self, path: FolderPath, special_use: str | None = None) -> None:
        """Create (and subscribe) the folder and its parents when missing; a server that can
        gives a folder it creates its RFC 6154 ``special_use`` (\\Sent, ...)."""
        raise NotImplementedError

    def index(self, path: FolderPath) -> Iterable[str]:
        """The identity keys (model.message_key) of the messages already in the folder; empty when
        it does not exist. Used only when the journal cannot say what is there."""
        raise NotImplementedError

    def append(
        self, path: FolderPath, items: Sequence[tuple[MessageRef, bytes]]
    ) -> list[AppendResult]:
        """Store the messages with their flags and dates, one result per item, in order. A result
        without error means the message is durably in the target."""
        raise NotImplementedError

    # -- later passes (README "A migration with a cutover"); a store without them keeps all --

    #: True when the flags of a stored message can be changed (IMAP STORE, a Maildir file's
    #: name), and stored messages removed and moved (what `sync` needs).
    can_update: bool = False

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` (as append() returned them) that are still in the folder: a copy
        removed or moved meanwhile, or from before a renumbering, is not."""
        raise NotImplementedError

    def ids_by_key(self, path: FolderPath) -> list[tuple[str, str]]:
        """(target id, identity key) of every message: for copies whose id the append did not
        tell (no UIDPLUS). Costs a header read per message; used only for those."""
        raise NotImplementedError

    def update_flags(self, path: FolderPath, changes: Sequence[FlagChange]) -> None:
        """Apply each change to its messages, in bulk (never a round trip per message)."""
        raise NotImplementedError

    def remove(self, path: FolderPath, ids: Sequence[str]) -> None:
        """Remove exactly these messages and no other (ids gone already are no error)."""
        raise NotImplementedError

    def move(self, path: FolderPath, ids: Sequence[str], to: FolderPath) -> list[str | None]:
        """Move these messages (present in ``path``) into ``to`` without uploading them again;
        their new ids in order (None where the store cannot tell)."""
        raise NotImplementedError

    def resume_point(self, path: FolderPath) -> str | None:
        """A token describing the folder's committed end (an mbox byte offset), saved by the journal
        with each committed batch; None when the store needs none."""
        return None

    def recover(self, path: FolderPath, point: str | None) -> None:
        """Undo a half-written append after a crash, given the last committed ``resume_point``."""


@dataclass(frozen=True)
class ServerAccess:
    """How to reach and log in to a server; shared by the IMAP and POP3 stores.

    ``secret`` is called at each login, so a password is read once per connection and never
    stored on the object (nor shown by its repr)."""

    host: str
    port: int
    user: str
    #: "implicit" (imaps/pop3s), "starttls" (required: refused when the server does not offer it),
    #: or "none" (plaintext, only when the user asked for it).
    tls: str
    ssl_context: ssl.SSLContext | None
    secret: Callable[[], str]
    timeout: float = 60.0
    #: How a server's reply names this account in errors: "imaps://alice@mail.example.org:993".
    label: str = ""
    #: How to log in: "password" (IMAP LOGIN; POP3 SASL PLAIN or USER/PASS), "plain" (SASL
    #: PLAIN), "login" (IMAP LOGIN), or "xoauth2" / "oauthbearer", when ``secret`` gives an
    #: OAuth2 access token.
    auth: str = "password"
