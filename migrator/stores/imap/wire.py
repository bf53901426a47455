"""The IMAP wire layer: every use of imaplib's and imapclient's private members, in one place.

imapclient speaks IMAP well but has no call for a few things a fast, bounded copy needs: a UID
FETCH with a compact UID set whose answers are read without imaplib's per-line overhead, one
MULTIAPPEND that streams each message from its bytes, LIST with RETURN (SPECIAL-USE), CREATE
with USE, MYRIGHTS, UID MOVE with its COPYUID, the server's words when STARTTLS is refused, and
bounds on what a server can make a connection hold or wait for. These functions do those
things on an IMAPClient; the stores call nothing private themselves. Below it, the socket
level both IMAP and POP3 read through is migrator/stores/tls.py.

RELIED_ON lists each private member used here (tests/unit/test_imap_wire.py checks it against
the installed imaplib and imapclient, so that an upgrade that drops or reshapes one fails
loudly, by name, instead of mid-copy).
"""

from __future__ import annotations

import imaplib
import io
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from imapclient.datetime_util import datetime_to_INTERNALDATE
from imapclient.exceptions import IMAPClientError
from imapclient.imapclient import seq_to_parenstr
from imapclient.response_parser import parse_fetch_response

from migrator.scrub import ScrubFilter
from migrator.stores.base import LARGEST_MESSAGE, MIN_BYTES_PER_TIMEOUT

#: Where imapclient sends imaplib's protocol lines.
PROTOCOL_LOG = logging.getLogger("imapclient.imaplib")
# Both log our own LOGIN / AUTHENTICATE lines and what the server echoes of them.
for _logger in (PROTOCOL_LOG, logging.getLogger("imapclient.imapclient")):
    _logger.addFilter(ScrubFilter())

#: Untagged responses of one kind kept for one command (a LIST of 100,000 folders fits, a
#: metadata FETCH has 2 per message of META_BATCH); a
#: server that sends more (an endless "* OK" stream) loses the connection.
MAX_UNTAGGED = 100_000
#: The read deadline's base, in seconds, for a connection opened without a timeout.
DEFAULT_TIMEOUT = 60.0
#: The most bytes of a literal read from the socket at once.
LITERAL_CHUNK = 1 << 20
#: imaplib's debug level for --debug: command and response lines, no literals (level 5, which
#: imapclient sets, formats a repr of every response, message bodies included, logged or not).
PROTOCOL_DEBUG_LEVEL = 4


@dataclass(frozen=True)
class Member:
    """A private (or undocumented) member of imaplib or imapclient that this module uses.

    ``params``: a callable's leading parameters by name, as inspect.signature gives them on
    ``owner`` (``self`` included); None for a data attribute, checked on a live connection to
    be an instance of ``kind``."""

    owner: str
    name: str
    params: tuple[str, ...] | None = None
    kind: type | None = None


RELIED_ON: tuple[Member, ...] = (
    Member("imapclient.IMAPClient", "_imap", kind=imaplib.IMAP4),
    Member("imapclient.IMAPClient", "_command_and_check", ("self", "command")),
    Member("imapclient.IMAPClient", "_proc_folder_list", ("self", "folder_data")),
    Member("imapclient.IMAPClient", "_normalise_folder", ("self", "folder_name")),
    Member("imapclient.IMAPClient", "_send_literal", ("self", "tag", "item", "has_literal_plus")),
    Member("imapclient.IMAPClient", "starttls", ("self", "ssl_context")),
    Member("imapclient.imapclient", "seq_to_parenstr", ("items",)),
    Member("imapclient.datetime_util", "datetime_to_INTERNALDATE", ("dt",)),
    Member(
        "imapclient.response_parser",
        "parse_fetch_response",
        ("text", "normalise_times", "uid_is_key"),
    ),
    Member("imaplib", "_MAXLINE", kind=int),
    Member("imaplib.IMAP4", "_simple_command", ("self", "name")),
    Member("imaplib.IMAP4", "_untagged_response", ("self", "typ", "dat", "name")),
    Member("imaplib.IMAP4", "_command", ("self", "name")),
    Member("imaplib.IMAP4", "_command_complete", ("self", "name", "tag")),
    Member("imaplib.IMAP4", "_new_tag", ("self",)),
    Member("imaplib.IMAP4", "_check_bye", ("self",)),
    Member("imaplib.IMAP4", "_get_response", ("self",)),
    Member("imaplib.IMAP4", "_get_line", ("self",)),
    Member("imaplib.IMAP4", "_append_untagged", ("self", "typ", "dat")),
    # Replaced on the instance: imaplib's own reads of lines and literals go through them.
    Member("imaplib.IMAP4", "read", ("self", "size")),
    Member("imaplib.IMAP4", "readline", ("self",)),
    Member("imaplib.IMAP4", "send", ("self", "data")),
    Member("imaplib.IMAP4", "myrights", ("self", "mailbox")),
    Member("imaplib.IMAP4", "tagged_commands", kind=dict),
    Member("imaplib.IMAP4", "untagged_responses", kind=dict),
    Member("imaplib.IMAP4", "debug", kind=int),
    # Read with peek and read1 (read_fetch_answers, read_literal).
    Member("imaplib.IMAP4", "file", kind=io.BufferedReader),
)


# -- session ------------------------------------------------------------------------------------


def prepare(client: IMAPClient, timeout: float | None) -> None:
    """Set a new connection up for a copy: imaplib's debug formatting only under --debug, and
    bounds on what the server can make it hold or wait for (see _harden)."""
    imap = client._imap
    imap.debug = PROTOCOL_DEBUG_LEVEL if PROTOCOL_LOG.isEnabledFor(logging.DEBUG) else 0
    _harden(imap, timeout)


def starttls(client: IMAPClient, context: ssl.SSLContext | None) -> tuple[str, Any] | None:
    """STARTTLS. None once TLS is on; on a refusal, the server's answer (status, words), or
    ("", imapclient's text) when the server said nothing usable. imaplib drops the server's
    words when STARTTLS is refused with NO, so its command is watched here. A lost connection
    (imaplib.IMAP4.abort) and a failed handshake (ssl.SSLError) are raised."""
    answers: list[tuple[str, Any]] = []
    imap = client._imap
    simple_command = imap._simple_command

    def answered(*args: Any) -> tuple[str, Any]:
        answers.append(simple_command(*args))
        return answers[-1]

    imap._simple_command = answered
    try:
        client.starttls(context)
    except (imaplib.IMAP4.error, IMAPClientError) as exc:
        if isinstance(exc, imaplib.IMAP4.abort):
            raise
        if answers and answers[-1][0] != "OK":
            return answers[-1]
        return "", str(exc)
    finally:
        del imap._simple_command  # the class's own again
    return None


def authenticate(client: IMAPClient, mechanism: str, respond: Callable[[bytes], str]) -> None:
    """AUTHENTICATE ``mechanism``, ``respond`` answering each challenge (imapclient's public
    oauth2_login cannot answer a second challenge, the server's error report); IMAPClientError
    on refusal."""
    client._command_and_check("authenticate", mechanism, respond)


# -- folders ------------------------------------------------------------------------------------


def list_special_use(client: IMAPClient) -> list[tuple[Any, Any, Any]]:
    """LIST "" "*" RETURN (SPECIAL-USE) (RFC 6154), as imapclient's list_folders gives it."""
    imap = client._imap
    typ, data = imap._simple_command("LIST", '""', '"*"', "RETURN", "(SPECIAL-USE)")
    _, data = imap._untagged_response(typ, data, "LIST")
    return client._proc_folder_list(data)


def create_special(client: IMAPClient, name: str, use: str) -> bool:
    """CREATE name (USE (use)) (RFC 6154); False when the server refuses it."""
    imap = client._imap
    typ, _ = imap._simple_command("CREATE", client._normalise_folder(name), f"(USE ({use}))")
    return typ == "OK"


def myrights(client: IMAPClient, name: str) -> tuple[str, Any]:
    """MYRIGHTS (RFC 4314): imaplib's status and answer."""
    return client._imap.myrights(client._normalise_folder(name))


def forget_read_only(client: IMAPClient) -> None:
    """Drop the [READ-ONLY] a SELECT answered: imaplib refuses every later command while it is
    kept (it takes the folder for one that turned read-only under it)."""
    client._imap.untagged_responses.pop("READ-ONLY", None)


# -- messages -----------------------------------------------------------------------------------


def uid_fetch(
    client: IMAPClient, uids: str, items: str, allowed: int = LARGEST_MESSAGE
) -> tuple[str, list[Any]]:
    """UID FETCH ``uids`` (a compact set: imapclient's own fetch lists every UID, and some
    servers refuse long command lines). On OK, ("OK", the untagged FETCH answers as imaplib
    keeps them); otherwise the completion's status and words. ``allowed``: the literal bytes
    the answer may bring in all; more raises LiteralTooBig. After a lost connection,
    fetched_so_far() gives what came."""
    imap = client._imap
    tag = imap._command("UID", "FETCH", uids, items)
    imap._migrator_allowed = allowed
    try:
        if imap.debug == 0:  # with --debug, imaplib logs each line itself
            read_fetch_answers(imap, tag)
        typ, data = imap._command_complete("FETCH", tag)
    finally:
        imap._migrator_allowed = None
    if typ != "OK":
        return typ, data
    return imap._untagged_response(typ, data, "FETCH")


def fetched_so_far(client: IMAPClient) -> list[Any]:
    """The untagged FETCH answers read before a UID FETCH broke off (a BYE mid-FETCH)."""
    return client._imap.untagged_responses.pop("FETCH", None) or []


def parse_fetch(data: list[Any]) -> dict[int, dict[bytes, Any]]:
    """FETCH answers by UID, parsed by imapclient (for the shapes parse_meta and parse_bodies
    leave to it), dates as the server wrote them."""
    return parse_fetch_response(data, False, True)


def append(
    client: IMAPClient,
    name: str,
    messages: Iterable[tuple[Sequence[str], datetime | None, bytes]],
    literal_plus: bool,
) -> tuple[str, list[Any]]:
    """One APPEND command for all ``messages`` (flags, date, CRLF bytes; RFC 3502 MULTIAPPEND
    when there are several), each sent straight from its bytes: with LITERAL+ (RFC 7888)
    nothing waits for the server until the end, and no copy of a large message is made on its
    way out. The completion's status and words."""
    imap = client._imap
    tag = imap._new_tag()
    imap.send(tag + b" APPEND " + client._normalise_folder(name))
    for flags, date, data in messages:
        head = b" " + seq_to_parenstr(flags).encode()
        if date is not None:
            head += b' "' + datetime_to_INTERNALDATE(date).encode() + b'"'
        if literal_plus:
            imap.send(head + b" {%d+}\r\n" % len(data))
            imap.send(data)
        else:
            imap.send(head)
            client._send_literal(tag, data, False)  # waits for the server's "+"
    imap.send(b"\r\n")
    return imap._command_complete("APPEND", tag)


def uid_copy(client: IMAPClient, command: str, uids: str, to: str) -> tuple[str, Any, list[Any]]:
    """UID MOVE (RFC 6851) or UID COPY of ``uids`` to folder ``to``: the completion's status
    and words, and every answer that may carry COPYUID (RFC 4315: the untagged OK that MOVE
    sends, or the completion). The EXPUNGEs a MOVE brings are dropped."""
    imap = client._imap
    imap.untagged_responses.pop("OK", None)
    typ, data = imap._simple_command("UID", command, uids, client._normalise_folder(to))
    said = [*imap.untagged_responses.pop("OK", []), *(data or [])]
    imap.untagged_responses.pop("EXPUNGE", None)
    return typ, data, said


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
            literal = read_literal(imap, int(size), uid[1].decode() if uid else None)
            imap._append_untagged("FETCH", (data, literal))
            data = imap._get_line()  # the rest of the response, maybe ending in another literal
            more = _LITERAL_END.search(data)
            size = more[1] if more else None
        imap._append_untagged("FETCH", data)


class LiteralTooBig(imaplib.IMAP4.abort):
    """A literal larger than the run takes: the connection is dropped before anything of that
    size is allocated. ``single``: the one message alone is too big (it fails); otherwise the
    FETCH brought more than its messages' sizes claimed."""

    def __init__(self, text: str, uid: str | None, single: bool) -> None:
        super().__init__(text)
        self.uid = uid
        self.single = single


_UID_IN = re.compile(rb"UID (\d+)")


def _deadline(imap: Any, size: int) -> float:
    timeout: float = getattr(imap, "_migrator_timeout", DEFAULT_TIMEOUT)
    return time.monotonic() + timeout * (1 + size / MIN_BYTES_PER_TIMEOUT)


def read_literal(imap: Any, size: int, uid: str | None = None) -> bytes:
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
        raise LiteralTooBig(f"the server announced a message of {size} bytes, {what}", uid, single)
    if allowed is not None:
        imap._migrator_allowed = allowed - size
    deadline = _deadline(imap, size)
    file = imap.file
    parts: list[bytes] = []
    remaining = size
    while remaining:
        chunk = file.read1(min(remaining, LITERAL_CHUNK))
        if not chunk:
            raise imap.abort("socket error: EOF")
        parts.append(chunk)
        remaining -= len(chunk)
        if remaining and time.monotonic() > deadline:
            raise imap.abort(f"the server sent {size - remaining} of {size} bytes too slowly")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_line(imap: Any) -> bytes:
    """One line, at most imaplib's _MAXLINE, read within _deadline() however slowly it comes."""
    limit: int = getattr(imaplib, "_MAXLINE", 1_000_000)  # its value since Python 3.5
    file = imap.file
    ahead = file.peek(1)
    end = ahead.find(b"\n")
    if 0 <= end < limit:  # the usual case: the whole line is in the buffer already
        return file.read(end + 1)
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
        if time.monotonic() > started + getattr(imap, "_migrator_timeout", DEFAULT_TIMEOUT) * (
            1 + total / MIN_BYTES_PER_TIMEOUT
        ):
            raise imap.abort("the server sent a line too slowly")
    if total > limit:
        raise imap.abort(f"the server sent a line longer than {limit} bytes")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _harden(imap: Any, timeout: float | None) -> None:
    """Bound what this imaplib connection holds and waits for, whatever the server sends: its
    literals (read_literal), its lines (_read_line), and the untagged responses kept for one
    command (MAX_UNTAGGED). Installed on the instance; imaplib's own reads go through it."""
    imap._migrator_timeout = timeout or DEFAULT_TIMEOUT
    imap._migrator_allowed = None  # literal bytes a body FETCH may still bring (see uid_fetch)
    imap.read = lambda size: read_literal(imap, size)
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
