"""IMAP4rev1 store, source and target, on imapclient.

Round trips are what make IMAP copies slow, so everything here works in batches: one UID SEARCH
per folder to learn what exists, one UID FETCH per thousand messages for metadata, one UID FETCH
per few megabytes for bodies, and one MULTIAPPEND (RFC 3502, sent without waiting when the server
has LITERAL+) per batch of appends. APPENDUID (RFC 4315) gives the target UIDs back.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientError, LoginError
from imapclient.imapclient import seq_to_parenstr
from imapclient.response_parser import parse_fetch_response

from migrator.errors import ConnectError, FolderError, MessageError, StoreError
from migrator.model import (
    INBOX,
    NAMESPACE_FOLDERS,
    SPECIAL_USES,
    UNCOPIED_FLAGS,
    Folder,
    FolderPath,
    FolderState,
    MessageRef,
    message_key,
    to_crlf,
)
from migrator.oauth import sasl_initial
from migrator.ratelimit import LOGINS, parse_backoff
from migrator.scrub import ScrubFilter, remember, server_text
from migrator.stores.base import (
    LARGEST_MESSAGE,
    MIN_BYTES_PER_TIMEOUT,
    AppendResult,
    FlagChange,
    FlagListing,
    ServerAccess,
    Source,
    Target,
)

#: Where imapclient sends imaplib's protocol lines.
_PROTOCOL_LOG = logging.getLogger("imapclient.imaplib")
# Both log our own LOGIN / AUTHENTICATE lines and what the server echoes of them.
for _logger in (_PROTOCOL_LOG, logging.getLogger("imapclient.imapclient")):
    _logger.addFilter(ScrubFilter())

_KEY_HEADERS = "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"
_KEY_RESPONSE = b"BODY[HEADER.FIELDS (MESSAGE-ID DATE FROM TO SUBJECT)]"
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) ([0-9:,]+)\]", re.IGNORECASE)

#: Metadata FETCH batch: large enough to amortise the round trip, small enough for line limits.
#: A listing cut off by a flaky link keeps what it got (the engine goes on from there after
#: reconnecting), and the store asks for less at a time from then on, down to META_BATCH_MIN.
META_BATCH = 2000
META_BATCH_MIN = 100
#: Body FETCH / APPEND batch limits: bytes in flight per batch, and messages per command.
BODY_BATCH_BYTES = 2 * 1024 * 1024
BODY_BATCH_COUNT = 400
#: A body FETCH may bring this much more than the messages' RFC822.SIZE claimed (beyond twice
#: the claim) before the claims are taken for lies: the connection is dropped, what came whole
#: is kept, and from then on each message is fetched on its own.
FETCH_SLACK = 4 * 1024 * 1024
#: Untagged responses of one kind kept for one command (a LIST of 100,000 folders fits, a
#: metadata FETCH has 2 per message of META_BATCH); a
#: server that sends more (an endless "* OK" stream) loses the connection.
MAX_UNTAGGED = 100_000
#: Longest wait for the answer to LOGOUT when closing.
CLOSE_GRACE = 3.0


def uid_set(uids: Iterable[int]) -> str:
    """Compact RFC 3501 sequence set ("1:5,9,12:14"), keeping command lines short."""
    ordered = sorted(set(uids))
    if not ordered:
        raise ValueError("empty UID set")
    parts: list[str] = []
    start = prev = ordered[0]
    for uid in ordered[1:]:
        if uid == prev + 1:
            prev = uid
            continue
        parts.append(f"{start}:{prev}" if prev != start else str(start))
        start = prev = uid
    parts.append(f"{start}:{prev}" if prev != start else str(start))
    return ",".join(parts)


def expand_uid_set(text: str) -> list[int]:
    uids: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition(":")
        first, last = int(low), int(high or low)
        step = 1 if last >= first else -1
        uids.extend(range(first, last + step, step))
    return uids


def parse_appenduid(response: bytes) -> tuple[int, list[int]] | None:
    """(UIDVALIDITY, UIDs) from an APPEND completion; None when the server has no UIDPLUS."""
    m = _APPENDUID.search(response)
    if not m:
        return None
    return int(m[1]), expand_uid_set(m[2].decode())


def batches_by_size(
    refs: Sequence[MessageRef], max_bytes: int, max_count: int
) -> Iterator[list[MessageRef]]:
    """Split refs into runs whose total size stays under max_bytes (a bigger message goes alone)."""
    batch: list[MessageRef] = []
    total = 0
    for ref in refs:
        if batch and (total + ref.size > max_bytes or len(batch) >= max_count):
            yield batch
            batch, total = [], 0
        batch.append(ref)
        total += ref.size
    if batch:
        yield batch


#: imaplib's wording of a refusal, "LOGIN command error: NO [b'text']", once server_text has
#: decoded the list of bytes in it.
_IMAPLIB_REFUSAL = re.compile(r"\w+ command error: (\w+) (.*)", re.DOTALL)


def _text(data: Any) -> str:
    """A server's words as a message may repeat them (decoded, one line, secrets scrubbed), an
    imaplib refusal reduced to what the server said ("NO text")."""
    text = server_text(data)
    if refusal := _IMAPLIB_REFUSAL.fullmatch(text):
        text = f"{refusal[1]} {refusal[2]}"
    return text


class ImapStore(Source, Target):
    """One IMAP account. Not thread-safe: the engine gives each worker its own store."""

    can_delete = True
    late_append_window = 1.0
    concurrent_appends = True

    def __init__(
        self, access: ServerAccess, *, restore_seen: bool = False, gmail_ids: bool = False
    ) -> None:
        """``restore_seen``: the server sets \\Seen when a body is fetched even with BODY.PEEK
        (iCloud), so the flag is removed again from the messages that did not have it.
        ``gmail_ids``: when the server has X-GM-EXT-1, a message's id is its X-GM-MSGID, which
        stays the same in every label folder and across UIDVALIDITY changes."""
        self.access = access
        self.restore_seen = restore_seen
        self.gmail_ids = gmail_ids
        #: Gmail: folder name -> X-GM-MSGID -> UID, learnt by list_messages.
        self._gm_uids: dict[str, dict[str, int]] = {}
        #: One frozenset per distinct set of flags, shared by every message that has it, found
        #: by itself or by the raw FLAGS tuple of a FETCH answer.
        self._flag_sets: dict[Any, frozenset[str]] = {}
        self.label = access.label or f"imap://{access.user}@{access.host}:{access.port}"
        self._client: IMAPClient | None = None
        self._caps: frozenset[str] = frozenset()
        self._selected: tuple[str, bool] | None = None
        #: (name, UIDVALIDITY) of the folder last selected for changes (see _open_target).
        self._selected_validity: tuple[str, str] | None = None
        self._existing: set[FolderPath] = set()
        #: Target folders whose rights were found to allow APPEND (or could not be asked).
        self._insertable: set[FolderPath] = set()
        #: The personal namespace's prefix (RFC 2342): "INBOX." on Cyrus's and Courier's
        #: default configurations, "" on most others. Paths here never include it.
        self.prefix = ""
        #: Other users' and shared namespaces: (prefix, delimiter, "other" or "shared").
        self._namespaces: list[tuple[str, str | None, str]] = []
        #: Server names of the folders listed outside the personal namespace, by path.
        self._foreign: dict[FolderPath, str] = {}
        #: True once list_folders has filled _foreign.
        self._listed = False
        #: UIDs per metadata FETCH; shrinks after a connection lost mid-listing (kept across
        #: reconnects: the same store object reconnects).
        self._meta_batch = META_BATCH
        self.delimiter: str | None = None
        self.max_message_size: int | None = None
        #: Source id -> why the message cannot be copied, learnt while listing (a size or a
        #: keyword no journal or target can hold); fetch() fails these messages with the reason.
        self._unusable: dict[str, str] = {}
        #: The untagged FETCH answers read before a connection broke mid-FETCH.
        self._partial: list[Any] = []
        #: The server sent more than its RFC822.SIZEs claimed: fetch one message at a time.
        self._sizes_lie = False
        #: Filled at connect, for `check` and the report.
        self.greeting = ""
        self.tls_version: str | None = None

    # -- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        if self._client is not None:
            return
        a = self.access
        LOGINS.wait(f"{a.user}@{a.host}:{a.port}")
        try:
            client = IMAPClient(
                a.host,
                port=a.port,
                ssl=a.tls == "implicit",
                ssl_context=a.ssl_context,
                timeout=a.timeout,
            )
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(
                f"{self.label}: the server's certificate is not trusted ({exc.verify_message}); "
                "use --source-ca-file/--target-ca-file for a private CA"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectError(f"{self.label}: TLS handshake failed ({exc.reason})") from None
        except socket.gaierror:
            raise ConnectError(f"{self.label}: unknown host {a.host!r}; check the name") from None
        except TimeoutError:
            raise ConnectError(f"{self.label}: no answer within {a.timeout:g}s") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConnectError(f"{self.label}: cannot connect ({reason})") from None
        except (imaplib.IMAP4.error, IMAPClientError) as exc:
            raise ConnectError(f"{self.label}: bad greeting ({_text(str(exc))})") from None
        # imapclient sets imaplib's debug level to 5, which formats a repr of every response,
        # message bodies included, whether or not anything is logged: a copy of each body in CPU
        # time and memory. Level 4 (command and response lines, no literals) serves --debug.
        client._imap.debug = 4 if _PROTOCOL_LOG.isEnabledFor(logging.DEBUG) else 0
        _harden(client._imap, a.timeout)
        try:
            self.greeting = _text(client.welcome)
            if a.tls == "starttls":
                if not client.has_capability("STARTTLS"):
                    raise ConnectError(
                        f"{self.label}: the server does not offer STARTTLS; use imaps:// or, "
                        "on a trusted network only, ?tls=none"
                    )
                answers: list[tuple[str, Any]] = []
                imap = client._imap
                simple_command = imap._simple_command

                def answered(*args: Any) -> tuple[str, Any]:
                    # imaplib drops the server's words when STARTTLS is refused with NO.
                    answers.append(simple_command(*args))
                    return answers[-1]

                imap._simple_command = answered
                try:
                    client.starttls(a.ssl_context)
                except (imaplib.IMAP4.error, IMAPClientError) as exc:
                    if isinstance(exc, imaplib.IMAP4.abort):
                        raise
                    said = _text(str(exc))
                    if answers and answers[-1][0] != "OK":
                        said = f"{answers[-1][0]} {_text(answers[-1][1])}"
                    raise ConnectError(
                        f"{self.label}: the server refused STARTTLS ({said}), so the password "
                        "would travel in plaintext; use imaps:// or, on a trusted network only, "
                        "?tls=none"
                    ) from None
                except ssl.SSLCertVerificationError as exc:
                    raise ConnectError(
                        f"{self.label}: the server's certificate is not trusted "
                        f"({exc.verify_message}); use --source-ca-file/--target-ca-file"
                    ) from None
                finally:
                    del imap._simple_command  # the class's own again
            sock = client.socket()
            if isinstance(sock, ssl.SSLSocket):
                self.tls_version = sock.version()
            try:
                _login(client, a)
            except LoginError as exc:
                hint = "check the user name and password"
                if a.auth in ("xoauth2", "oauthbearer"):
                    hint = (
                        "the OAuth2 access token was refused: get a fresh one (check the "
                        "--*-oauth2-token-cmd, or run `migrator auth login PROFILE:USER` again)"
                    )
                said = _text(str(exc))
                raise ConnectError(
                    f"{self.label}: login failed, the server said '{said}'; {hint}"
                ) from None
            client.normalise_times = False
            self._caps = frozenset(c.decode().upper() for c in client.capabilities())
            self._client = client
            self._selected = None
            self._learn_namespace()
        except ConnectError:
            _quietly_close(client)
            raise
        except (OSError, imaplib.IMAP4.error, IMAPClientError) as exc:
            _quietly_close(client)
            raise ConnectError(
                f"{self.label}: connection lost during login ({_text(str(exc))})"
            ) from None

    def close(self) -> None:
        client, self._client = self._client, None
        self._selected = None
        if client is not None:
            _quietly_close(client)

    @property
    def capabilities(self) -> frozenset[str]:
        return self._caps

    #: The capabilities that change how we work, in the order `check` lists them.
    NOTABLE = (
        "IMAP4REV2",
        "UIDPLUS",
        "MULTIAPPEND",
        "LITERAL+",
        "SPECIAL-USE",
        "MOVE",
        "CONDSTORE",
        "APPENDLIMIT",
        "UTF8=ACCEPT",
        "NAMESPACE",
        "IDLE",
    )

    def describe(self) -> list[tuple[str, str]]:
        client = self._c
        sock = client.socket()
        subject = ""
        if isinstance(sock, ssl.SSLSocket):
            cert: dict[str, Any] = sock.getpeercert() or {}  # typeshed's union hides the shapes
            subject = ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
            names = ", ".join(str(v) for _, v in cert.get("subjectAltName", ()))
            if names:
                subject += f" (for {names})"
        notable = [
            c
            for c in self.NOTABLE
            if c in self._caps or any(x.startswith(c + "=") for x in self._caps)
        ]
        return [
            ("endpoint", self.label),
            ("greeting", re.sub(r"\[CAPABILITY [^]]*\] ?", "", self.greeting)),
            ("tls", self.tls_version or "none (plaintext)"),
            ("certificate", subject or "-"),
            ("capabilities", " ".join(notable) or "-"),
            ("missing", " ".join(c for c in self.NOTABLE[:5] if c not in notable) or "-"),
            ("delimiter", self.delimiter or "-"),
            ("personal namespace", repr(self.prefix) if self.prefix else "no prefix"),
            ("folders", str(len(self.list_folders()))),
        ]

    def _learn_namespace(self) -> None:
        limit = next((c for c in self._caps if c.startswith("APPENDLIMIT=")), None)
        if limit and limit.split("=", 1)[1].isdigit():
            self.max_message_size = int(limit.split("=", 1)[1])
        self.prefix, self._namespaces = "", []
        delim: Any = None
        spaces = None
        if "NAMESPACE" in self._caps:
            try:
                with self._talk("NAMESPACE"):
                    spaces = self._c.namespace()
            except StoreError as exc:
                if exc.transient:
                    raise
                # Refused or unreadable: take the server as one without namespaces (no prefix).
                _PROTOCOL_LOG.debug("NAMESPACE refused: %s", exc)
        if spaces is not None:
            for kind, entries in (
                ("personal", spaces.personal),
                ("other", spaces.other),
                ("shared", spaces.shared),
            ):
                for prefix, sep in entries or ():
                    prefix = prefix.decode() if isinstance(prefix, bytes) else str(prefix)
                    sep = sep.decode() if isinstance(sep, bytes) else sep
                    if kind != "personal":
                        self._namespaces.append((prefix, sep, kind))
                    elif delim is None:  # the first personal namespace is the user's own
                        self.prefix, delim = prefix, sep
        if delim is None:
            with self._talk("LIST"):
                listing = self._c.list_folders("", "")
            delim = listing[0][1] if listing else None
        self.delimiter = delim.decode() if isinstance(delim, bytes) else delim

    @property
    def _c(self) -> IMAPClient:
        if self._client is None:
            self.connect()
        assert self._client is not None
        return self._client

    @contextmanager
    def _talk(self, what: str) -> Iterator[None]:
        """Turn a lost connection into a transient StoreError (the engine reconnects and resumes),
        and a refusal into a StoreError that names the command."""
        try:
            yield
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
            self.close()
            reason = _text(str(exc)) or type(exc).__name__
            raise StoreError(
                f"{self.label}: connection lost during {what} ({reason})",
                transient=True,
                retry_after=parse_backoff(reason),
            ) from None
        except (imaplib.IMAP4.error, IMAPClientError) as exc:
            raise self._refused(what, _text(str(exc))) from None

    def _refused(self, what: str, said: str) -> StoreError:
        """A refusal; one that asks us to wait ("Suggested Backoff Time: N milliseconds",
        [UNAVAILABLE]) carries the pause, and the engine sleeps, reconnects and goes on."""
        wait = parse_backoff(said)
        if wait is not None:
            return StoreError(
                f"{self.label}: the server asked to wait {wait:g}s during {what} ({said})",
                retry_after=wait,
            )
        return StoreError(f"{self.label}: {what} refused: {said}")

    # -- folders ----------------------------------------------------------------------------

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
                typ, data = self._c._imap._simple_command(
                    "LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)"
                )
                _, data = self._c._imap._untagged_response(typ, data, "LIST")
                listing = self._c._proc_folder_list(data)
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
                self._c._imap.untagged_responses.pop("READ-ONLY", None)
                raise FolderError(
                    f"{self.label}: folder {name!r} is read-only for this user "
                    f"(the server said [READ-ONLY]{self._rights_note(name)}); "
                    "nothing was changed there"
                ) from None
            except (imaplib.IMAP4.error, IMAPClientError) as exc:
                if isinstance(exc, imaplib.IMAP4.abort):
                    raise
                raise FolderError(
                    f"{self.label}: cannot open folder {name!r}: {_text(str(exc))}"
                ) from None
        self._selected = (name, readonly)
        return info  # type: ignore[no-any-return]

    def _myrights(self, name: str) -> str | None:
        """The user's rights on a folder (RFC 4314 MYRIGHTS: "lrswipkxtecda"); "" when the
        server refuses to say (no rights there, or no such folder); None when it has no ACL
        extension or the answer is unreadable."""
        if "ACL" not in self._caps:
            return None
        try:
            typ, data = self._c._imap.myrights(self._c._normalise_folder(name))
        except (imaplib.IMAP4.error, IMAPClientError, OSError):
            return None
        if typ != "OK":
            return ""
        words = _text(data).split()
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

    # -- source -----------------------------------------------------------------------------

    def open_folder(self, path: FolderPath) -> FolderState:
        info = self._select(path, readonly=True)
        validity = "X-GM-MSGID" if self._gmail else info.get(b"UIDVALIDITY", 0)
        return FolderState(validity=str(validity), count=int(info.get(b"EXISTS", 0)))

    @property
    def _gmail(self) -> bool:
        return self.gmail_ids and "X-GM-EXT-1" in self._caps

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
        """UID FETCH with a compact UID set (imapclient's own fetch lists every UID, and long
        command lines are refused by some servers). ``allowed``: the literal bytes the answer
        may bring in all (see FETCH_SLACK)."""
        imap = self._c._imap
        tag = imap._command("UID", "FETCH", uids, items)
        imap._migrator_allowed = allowed  # type: ignore[union-attr]
        try:
            if imap.debug == 0:  # with --debug, imaplib logs each line itself
                read_fetch_answers(imap, tag)
            typ, data = imap._command_complete("FETCH", tag)
        except (imaplib.IMAP4.abort, OSError, EOFError) as exc:
            # What came whole before the connection broke (a BYE mid-FETCH): fetch() keeps it.
            self._partial = imap.untagged_responses.pop("FETCH", None) or []
            if isinstance(exc, _TooBig):
                if exc.single and exc.uid is not None:
                    self._unusable[exc.uid] = str(exc)
                elif exc.single and "," not in uids and ":" not in uids:
                    self._unusable[uids] = str(exc)
                else:
                    self._sizes_lie = True
            raise
        finally:
            imap._migrator_allowed = None  # type: ignore[union-attr]
        if typ != "OK":
            raise self._refused("FETCH", _text(data))
        typ, data = imap._untagged_response(typ, data, "FETCH")
        fast = parse_bodies(data) if "BODY.PEEK[]" in items else parse_meta(data)
        if fast is not None:
            return fast
        return parse_fetch_response(data, False, True)  # type: ignore[no-any-return]

    def _ref(self, uid: int, item: dict[bytes, Any], keys: bool = True) -> MessageRef:
        size = item.get(b"RFC822.SIZE", 0)
        raw = item.get(b"FLAGS", ())
        if not isinstance(size, int) or not 0 <= size <= LARGEST_MESSAGE:
            # Kept out of the journal and the batch sizes; fetch() fails the message.
            self._unusable[str(uid)] = (
                f"the server gave its size as {_text(str(size))[:40]} bytes (migrator copies "
                f"messages of up to {LARGEST_MESSAGE >> 20} MiB)"
            )
            size = 0
        flags = self._flag_sets.get(raw)
        if flags is None:
            try:
                kept = frozenset(f.decode() if isinstance(f, bytes) else str(f) for f in raw)
            except UnicodeDecodeError:
                bad = next(f for f in raw if isinstance(f, bytes) and not _is_utf8(f))
                self._unusable[str(uid)] = (
                    f"its keyword {_text(bad)!r} is not UTF-8, which no target can store as it is"
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
            and date.tzinfo is not (zone := _zone(offset))
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

    # -- target -----------------------------------------------------------------------------

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
                            f"{self.label}: cannot create folder {name!r}: {_text(str(exc))}"
                        ) from None
                try:
                    self._c.subscribe_folder(name)
                except (imaplib.IMAP4.error, IMAPClientError) as exc:
                    if isinstance(exc, imaplib.IMAP4.abort):
                        raise
                    # A subscription is a convenience for mail clients; a server that fails
                    # it (Cyrus under concurrent SUBSCRIBEs: "System I/O error") still has the
                    # folder, and the mail must go on.
                    _PROTOCOL_LOG.debug("SUBSCRIBE %r refused: %s", name, _text(str(exc)))
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
        imap = self._c._imap
        typ, _ = imap._simple_command("CREATE", self._c._normalise_folder(name), f"(USE ({use}))")
        return typ == "OK"

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
        """One APPEND command for all the items (RFC 3502 MULTIAPPEND when there are several),
        each message sent straight from its bytes: with LITERAL+ (RFC 7888) nothing waits for
        the server until the end, and no copy of a large message is made on its way out."""
        client = self._c
        imap = client._imap
        literal_plus = "LITERAL+" in self._caps
        tag = imap._new_tag()
        imap.send(tag + b" APPEND " + client._normalise_folder(name))
        for ref, body in items:
            data = to_crlf(body)
            head = b" " + seq_to_parenstr(sorted(ref.flags - UNCOPIED_FLAGS)).encode()
            if ref.date is not None:
                head += b' "' + datetime_to_INTERNALDATE(ref.date).encode() + b'"'
            if literal_plus:
                imap.send(head + b" {%d+}\r\n" % len(data))
                imap.send(data)
            else:
                imap.send(head)
                client._send_literal(tag, data, False)  # waits for the server's "+"
        imap.send(b"\r\n")
        typ, answer = imap._command_complete("APPEND", tag)
        return typ, answer

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
                return _append_results(_text_bytes(data), len(items))
            if parse_backoff(_text(data)) is not None:  # throttled: not the messages' fault
                raise self._refused(f"APPEND to {name!r}", _text(data))
            # MULTIAPPEND is all or nothing: find the message at fault one by one.
        results: list[AppendResult] = []
        for ref, body in items:
            with self._talk(f"APPEND to {name!r}"):
                typ, data = self._multiappend(name, [(ref, body)])
            if typ == "OK":
                results.extend(_append_results(_text_bytes(data), 1))
            elif parse_backoff(_text(data)) is not None:
                raise self._refused(f"APPEND to {name!r}", _text(data))
            else:
                results.append(AppendResult(error=f"the server said: {_text(data)}"))
        return results

    # -- later passes: flags, removals and moves of copies (migrator.converge) ----------------

    can_update = True

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
        return _uids_of(ids, self._open_target(path))

    def present_ids(self, path: FolderPath, ids: Sequence[str]) -> set[str]:
        """One UID SEARCH UID <set> a META_BATCH of ids: what the server still has of them."""
        validity = self._open_target(path)
        uids = _uids_of(ids, validity)
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
        name = self._c._normalise_folder(self._name(to))
        imap = self._c._imap
        for start in range(0, len(uids), META_BATCH):
            chunk = uids[start : start + META_BATCH]
            command = "MOVE" if "MOVE" in self._caps else "COPY"
            with self._talk(f"UID {command}"):
                imap.untagged_responses.pop("OK", None)
                typ, data = imap._simple_command("UID", command, uid_set(chunk), name)
                said = [*imap.untagged_responses.pop("OK", []), *(data or [])]
                imap.untagged_responses.pop("EXPUNGE", None)
            if typ != "OK":
                raise self._refused(f"UID {command}", _text(data))
            new.update(_copyuid(b" ".join(_text_bytes(d) for d in said)))
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


def _uids_of(ids: Iterable[str], validity: str | None) -> list[int]:
    """The UIDs of target ids ("UIDVALIDITY:UID") that belong to ``validity``."""
    uids = []
    for target_id in ids:
        known, _, uid = target_id.partition(":")
        if known == validity and uid.isdigit():
            uids.append(int(uid))
    return uids


_COPYUID = re.compile(rb"\[COPYUID (\d+) ([0-9:,]+) ([0-9:,]+)\]", re.IGNORECASE)


def _copyuid(response: bytes) -> dict[int, str]:
    """Source UID -> new target id ("UIDVALIDITY:UID") from COPYUID answers (RFC 4315)."""
    found: dict[int, str] = {}
    for m in _COPYUID.finditer(response):
        olds, news = expand_uid_set(m[2].decode()), expand_uid_set(m[3].decode())
        if len(olds) == len(news):
            found.update(
                (old, f"{m[1].decode()}:{new}") for old, new in zip(olds, news, strict=True)
            )
    return found


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


@lru_cache(maxsize=64)
def _zone(offset: timedelta) -> timezone:
    return timezone(offset)


_META_LINE = re.compile(rb"(\d+) \((.*)\)", re.DOTALL)
_META_ITEM = re.compile(
    rb'(UID|RFC822\.SIZE|FLAGS|INTERNALDATE|MODSEQ) (\d+|\([^()"]*\)|"[^"]*")(?: |\Z)'
)
_INTERNALDATE = re.compile(
    rb" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
#: The answer's usual shape, Dovecot's and most servers': the items in the order asked for.
_META_USUAL = re.compile(
    rb'(\d+) \(UID (\d+) RFC822\.SIZE (\d+) FLAGS \(([^()"]*)\) INTERNALDATE "([^"]*)"\)'
)
#: Time zones by their text in INTERNALDATE (sign, hours, minutes): one object per zone.
_ZONES: dict[tuple[Any, ...], timezone] = {}
_MONTHS = {
    name: n for n, name in enumerate(b"jan feb mar apr may jun jul aug sep oct nov dec".split(), 1)
}


def parse_meta(data: Sequence[Any]) -> dict[int, dict[bytes, Any]] | None:
    """The usual answer to a listing's UID FETCH (UID RFC822.SIZE FLAGS INTERNALDATE) by UID,
    as imapclient's parse_fetch_response gives it, about ten times faster: a 200,000-message
    mailbox is listed in seconds. None for any other shape (literals, other items), which the
    caller leaves to imapclient."""
    found: dict[int, dict[bytes, Any]] = {}
    for line in data:
        usual = _META_USUAL.fullmatch(line) if isinstance(line, bytes) else None
        if usual is not None and (date := _internaldate(usual[5])) is not None:
            found[int(usual[2])] = {
                b"SEQ": int(usual[1]),
                b"RFC822.SIZE": int(usual[3]),
                b"FLAGS": tuple(usual[4].split()),
                b"INTERNALDATE": date,
            }
            continue
        if not isinstance(line, bytes) or (whole := _META_LINE.fullmatch(line)) is None:
            return None
        item: dict[bytes, Any] = {b"SEQ": int(whole[1])}
        text, pos = whole[2], 0
        while pos < len(text):
            part = _META_ITEM.match(text, pos)
            if part is None:
                return None
            name, value = part[1], part[2]
            if name == b"FLAGS":
                item[name] = tuple(value[1:-1].split())
            elif name == b"INTERNALDATE":
                date = _internaldate(value[1:-1])
                if date is None:
                    return None
                item[name] = date
            elif name == b"MODSEQ":  # sent with FLAGS once CONDSTORE is on (RFC 7162)
                if not value[1:-1].isdigit():
                    return None
                item[name] = (int(value[1:-1]),)  # as imapclient gives it
            elif value[:1].isdigit():
                item[name] = int(value)
            else:
                return None
            pos = part.end()
        uid = item.pop(b"UID", None)
        if uid is None:
            return None
        found[uid] = item
    return found


#: An untagged FETCH response's first line: message number, the rest (imaplib's "data"), and
#: the size of the literal that follows, if any.
_FETCH_LINE = re.compile(rb"\* (\d+) FETCH (.*?(?:\{(\d+)\})?)\r\n")
_LITERAL_END = re.compile(rb"\{(\d+)\}\Z")
#: Bytes looked at before taking a response line as one read_fetch_answers() can parse.
_PEEK = 256


def read_fetch_answers(imap: imaplib.IMAP4, tag: Any) -> None:
    """Read the answers to the FETCH command ``tag`` up to its tagged completion, storing them as
    imaplib's response loop does, for its ``_command_complete`` to return.

    imaplib spends about as long on each response as on the bytes of a small message (a repr of
    every line for its debug log, four regex matches, its bookkeeping). Here an untagged FETCH
    whose first line lies whole in the read buffer is parsed with one match, its literals read
    straight from the buffered socket; anything else (the tagged completion, EXISTS, BYE, a line
    not yet buffered) is left to imaplib, one response at a time, so nothing is read twice."""
    file = imap.file
    peek = getattr(file, "peek", None)
    pending = imap.tagged_commands
    while pending.get(tag) is None:
        head: bytes = peek(_PEEK) if peek is not None else b""
        end = head.find(b"\r\n") if head[:2] == b"* " else -1
        line = _FETCH_LINE.fullmatch(head, 0, end + 2) if end > 0 else None
        if line is None:
            imap._check_bye()
            imap._get_response()
            continue
        file.read(end + 2)
        data, size = line[1] + b" " + line[2], line[3]
        while size is not None:
            uid = _UID_IN.search(data)
            literal = _read_literal(imap, int(size), uid[1].decode() if uid else None)
            imap._append_untagged("FETCH", (data, literal))
            data = imap._get_line()  # the rest of the response, maybe ending in another literal
            more = _LITERAL_END.search(data)
            size = more[1] if more else None
        imap._append_untagged("FETCH", data)


_BODY_HEAD = re.compile(rb"(\d+) \(UID (\d+) BODY\[\] \{\d+\}")


def parse_bodies(data: Sequence[Any]) -> dict[int, dict[bytes, Any]] | None:
    """The usual answer to UID FETCH (BODY.PEEK[]), ``* N FETCH (UID U BODY[] {size}`` and the
    message, by UID, as parse_fetch_response gives it without lexing each response in Python;
    None for any other shape (an unsolicited FLAGS update, items in another order)."""
    found: dict[int, dict[bytes, Any]] = {}
    closing = False
    for part in data:
        if closing:
            if part != b")":
                return None
            closing = False
            continue
        if not isinstance(part, tuple) or len(part) != 2:
            return None
        head = _BODY_HEAD.fullmatch(part[0])
        if head is None:
            return None
        found[int(head[2])] = {b"SEQ": int(head[1]), b"BODY[]": part[1]}
        closing = True
    return None if closing else found


def complete_bodies(data: Sequence[Any]) -> dict[int, bytes]:
    """UID -> body of the ``* N FETCH (UID U BODY[] {size}`` answers that arrived whole (their
    closing parenthesis read) before a FETCH broke off; anything else is left out."""
    found: dict[int, bytes] = {}
    for part, after in zip(data, [*data[1:], None], strict=False):
        if not isinstance(part, tuple) or len(part) != 2 or after != b")":
            continue
        head = _BODY_HEAD.fullmatch(part[0])
        if head is not None and isinstance(part[1], bytes):
            found[int(head[2])] = part[1]
    return found


def _internaldate(text: bytes) -> datetime | None:
    parts = _INTERNALDATE.fullmatch(text)
    month = _MONTHS.get(parts[2].lower()) if parts else None
    if parts is None or month is None:
        return None
    zone = _ZONES.get(written := parts.group(7, 8, 9))
    if zone is None:
        minutes = int(parts[8]) * 60 + int(parts[9])
        zone = _ZONES.setdefault(
            written, _zone(timedelta(minutes=-minutes if parts[7] == b"-" else minutes))
        )
    try:
        return datetime(
            int(parts[3]),
            month,
            int(parts[1]),
            int(parts[4]),
            int(parts[5]),
            int(parts[6]),
            tzinfo=zone,
        )
    except ValueError:
        return None


def _text_bytes(data: Any) -> bytes:
    if isinstance(data, list | tuple):
        return b" ".join(d if isinstance(d, bytes) else str(d).encode() for d in data)
    return data if isinstance(data, bytes) else str(data).encode()


def _append_results(response: bytes, count: int) -> list[AppendResult]:
    parsed = parse_appenduid(response)
    if parsed is None or len(parsed[1]) != count:
        return [AppendResult() for _ in range(count)]
    validity, uids = parsed
    return [AppendResult(target_id=f"{validity}:{uid}") for uid in uids]


def _login(client: IMAPClient, access: ServerAccess) -> None:
    """LOGIN, SASL PLAIN, or XOAUTH2 / OAUTHBEARER with an access token from ``secret`` (called
    at every login, so a token command runs again at each reconnect). LoginError on refusal."""
    secret = access.secret()
    remember(secret, access.user, access.host, access.port)
    if access.auth in ("xoauth2", "oauthbearer"):
        initial = sasl_initial(access.auth, access.user, secret, access.host, access.port)
        answered: list[bytes] = []

        def respond(challenge: bytes) -> str:
            # A second challenge is the server's error report (JSON): answer it empty, as
            # RFC 7628 asks, and the server ends the exchange with NO.
            answered.append(challenge)
            return initial if len(answered) == 1 else ""

        try:
            client._command_and_check("authenticate", access.auth.upper(), respond)
        except IMAPClientError as exc:
            raise LoginError(str(exc)) from None
    elif access.auth == "plain":
        client.plain_login(access.user, secret)
    else:
        if (access.user + secret).isascii():
            client.login(access.user, secret)
        elif client.has_capability("AUTH=PLAIN"):
            # LOGIN's quoted strings are ASCII (imaplib refuses anything else); SASL PLAIN
            # carries UTF-8 (RFC 4616), so a password such as "Grüße€" still logs in.
            client.plain_login(access.user, secret)
        else:
            raise LoginError(
                "the user name or password has non-ASCII characters, which LOGIN cannot carry, "
                "and the server offers no AUTHENTICATE PLAIN"
            )


def _quietly_close(client: IMAPClient) -> None:
    """LOGOUT, waiting for its answer at most CLOSE_GRACE seconds (a server that keeps talking
    or trickles cannot hold the run: the socket is shut down under the read)."""
    watchdog = threading.Timer(CLOSE_GRACE, _shutdown, (client,))
    watchdog.daemon = True
    watchdog.start()
    try:
        client.logout()
    except Exception:
        _shutdown(client)
    finally:
        watchdog.cancel()


def _shutdown(client: IMAPClient) -> None:
    with contextlib.suppress(Exception):
        client.socket().shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(Exception):
        client.shutdown()


# -- bounds on what a server can make us hold or wait for (issue 19) ---------------------------


class _TooBig(imaplib.IMAP4.abort):
    """A literal larger than the run takes: the connection is dropped before anything of that
    size is allocated. ``single``: the one message alone is too big (it fails); otherwise the
    FETCH brought more than its messages' sizes claimed."""

    def __init__(self, text: str, uid: str | None, single: bool) -> None:
        super().__init__(text)
        self.uid = uid
        self.single = single


_UID_IN = re.compile(rb"UID (\d+)")


def _deadline(imap: Any, size: int) -> float:
    timeout: float = getattr(imap, "_migrator_timeout", 60.0)
    return time.monotonic() + timeout * (1 + size / MIN_BYTES_PER_TIMEOUT)


def _read_literal(imap: Any, size: int, uid: str | None = None) -> bytes:
    """``size`` bytes of a literal, refused before any allocation when larger than the run takes
    (LARGEST_MESSAGE, or what is left of the FETCH's allowance), and read within
    _deadline(size) however the server spaces them."""
    allowed: int | None = getattr(imap, "_migrator_allowed", None)
    if size > LARGEST_MESSAGE or (allowed is not None and size > allowed):
        single = size > LARGEST_MESSAGE
        what = (
            f"more than the largest message migrator copies ({LARGEST_MESSAGE >> 20} MiB)"
            if single
            else "more than the messages' sizes claimed"
        )
        raise _TooBig(f"the server announced a message of {size} bytes, {what}", uid, single)
    if allowed is not None:
        imap._migrator_allowed = allowed - size
    deadline = _deadline(imap, size)
    file = imap.file
    parts: list[bytes] = []
    remaining = size
    while remaining:
        chunk = file.read1(min(remaining, 1 << 20))
        if not chunk:
            raise imap.abort("socket error: EOF")
        parts.append(chunk)
        remaining -= len(chunk)
        if remaining and time.monotonic() > deadline:
            raise imap.abort(f"the server sent {size - remaining} of {size} bytes too slowly")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_line(imap: Any) -> bytes:
    """One line, at most imaplib's _MAXLINE, read within _deadline() however slowly it comes."""
    limit: int = getattr(imaplib, "_MAXLINE", 1_000_000)
    file = imap.file
    ahead = file.peek(1)
    end = ahead.find(b"\n")
    if 0 <= end < limit:  # the usual case: the whole line is in the buffer already
        return file.read(end + 1)  # type: ignore[no-any-return]
    started = time.monotonic()
    parts: list[bytes] = []
    total = 0
    while True:
        ahead = file.peek(1)
        if not ahead:
            break
        end = ahead.find(b"\n")
        take = len(ahead) if end < 0 else end + 1
        parts.append(file.read(min(take, limit + 1 - total)))
        total += len(parts[-1])
        if end >= 0 or total > limit:
            break
        if time.monotonic() > started + getattr(imap, "_migrator_timeout", 60.0) * (
            1 + total / MIN_BYTES_PER_TIMEOUT
        ):
            raise imap.abort("the server sent a line too slowly")
    if total > limit:
        raise imap.abort(f"the server sent a line longer than {limit} bytes")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _harden(imap: Any, timeout: float | None) -> None:
    """Bound what this imaplib connection holds and waits for, whatever the server sends: its
    literals (_read_literal), its lines (_read_line), and the untagged responses kept for one
    command (MAX_UNTAGGED). Installed on the instance; imaplib's own reads go through it."""
    imap._migrator_timeout = timeout or 60.0
    imap._migrator_allowed = None  # literal bytes a body FETCH may still bring (see _fetch)
    imap.read = lambda size: _read_literal(imap, size)
    imap.readline = lambda: _read_line(imap)
    append = imap._append_untagged

    def bounded_append(typ: str, dat: Any) -> None:
        kept = imap.untagged_responses.get(typ)
        if kept is not None and len(kept) >= MAX_UNTAGGED:
            raise imap.abort(
                f"the server sent more than {MAX_UNTAGGED} untagged {typ} responses to one command"
            )
        append(typ, dat)

    imap._append_untagged = bounded_append
