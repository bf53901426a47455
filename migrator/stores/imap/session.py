"""The IMAP session under ImapStore: connecting (TLS, STARTTLS, login), capabilities, the
personal namespace, and how a lost connection or a refusal becomes a StoreError."""

from __future__ import annotations

import contextlib
import imaplib
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError, LoginError

from migrator.errors import ConnectError, StoreError
from migrator.model import FolderPath
from migrator.oauth import sasl_initial
from migrator.ratelimit import LOGINS, parse_backoff
from migrator.scrub import remember
from migrator.stores.base import ServerAccess, Source, Target
from migrator.stores.imap import wire
from migrator.stores.imap.parse import server_words

#: Metadata FETCH batch: large enough to amortise the round trip, small enough for line limits.
#: A listing cut off by a flaky link keeps what it got (the engine goes on from there after
#: reconnecting), and the store asks for less at a time from then on, down to META_BATCH_MIN.
META_BATCH = 2000
META_BATCH_MIN = 100
#: Longest wait for the answer to LOGOUT when closing.
CLOSE_GRACE = 3.0


class ImapSession(Source, Target):
    """One IMAP account's connection and what it learnt at login; the folder, reading and
    writing layers of ImapStore build on it. Not thread-safe."""

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
        client = self._open()
        wire.prepare(client, a.timeout)
        try:
            self.greeting = server_words(client.welcome)
            if a.tls == "starttls":
                self._starttls(client)
            sock = client.socket()
            if isinstance(sock, ssl.SSLSocket):
                self.tls_version = sock.version()
            self._log_in(client)
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
                f"{self.label}: connection lost during login ({server_words(str(exc))})"
            ) from None

    def _open(self) -> IMAPClient:
        """The TCP (and TLS) connection and the greeting; ConnectError in plain words."""
        a = self.access
        try:
            return IMAPClient(
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
            raise ConnectError(f"{self.label}: bad greeting ({server_words(str(exc))})") from None

    def _starttls(self, client: IMAPClient) -> None:
        """STARTTLS, or a ConnectError: the password never travels in plaintext by surprise."""
        if not client.has_capability("STARTTLS"):
            raise ConnectError(
                f"{self.label}: the server does not offer STARTTLS; use imaps:// or, "
                "on a trusted network only, ?tls=none"
            )
        try:
            refused = wire.starttls(client, self.access.ssl_context)
        except ssl.SSLCertVerificationError as exc:
            raise ConnectError(
                f"{self.label}: the server's certificate is not trusted "
                f"({exc.verify_message}); use --source-ca-file/--target-ca-file"
            ) from None
        if refused is not None:
            status, words = refused
            said = f"{status} {server_words(words)}" if status else server_words(words)
            raise ConnectError(
                f"{self.label}: the server refused STARTTLS ({said}), so the password "
                "would travel in plaintext; use imaps:// or, on a trusted network only, "
                "?tls=none"
            )

    def _log_in(self, client: IMAPClient) -> None:
        """_login, a refusal told as what to check."""
        try:
            _login(client, self.access)
        except LoginError as exc:
            hint = "check the user name and password"
            if self.access.auth in ("xoauth2", "oauthbearer"):
                hint = (
                    "the OAuth2 access token was refused: get a fresh one (check the "
                    "--*-oauth2-token-cmd, or run `migrator auth login PROFILE:USER` again)"
                )
            said = server_words(str(exc))
            raise ConnectError(
                f"{self.label}: login failed, the server said '{said}'; {hint}"
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
    #: The first of them, each missing one making a copy slower or less exact: `check` names
    #: those the server lacks.
    WANTED = NOTABLE[:5]

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
            ("missing", " ".join(c for c in self.WANTED if c not in notable) or "-"),
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
                wire.PROTOCOL_LOG.debug("NAMESPACE refused: %s", exc)
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
            reason = server_words(str(exc)) or type(exc).__name__
            raise StoreError(
                f"{self.label}: connection lost during {what} ({reason})",
                transient=True,
                retry_after=parse_backoff(reason),
            ) from None
        except (imaplib.IMAP4.error, IMAPClientError) as exc:
            raise self._refused(what, server_words(str(exc))) from None

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

    @property
    def _gmail(self) -> bool:
        return self.gmail_ids and "X-GM-EXT-1" in self._caps


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
            wire.authenticate(client, access.auth.upper(), respond)
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
