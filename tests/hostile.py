"""Hostile input for migrator, built by the tests: messages that break the usual assumptions, the
standard library's own email test messages, and folder names that break naive code.

Pure python, no pytest. Messages are bytes exactly as they are to be stored (line endings
included: a case named "bare LF" really has bare LFs); ``Case.date`` gives each one a distinct
INTERNALDATE.
"""

from __future__ import annotations

import base64
import os
import random
import sysconfig
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = [
    "FOLDER_NAMES",
    "Case",
    "FolderCase",
    "hostile_messages",
    "stdlib_email_dir",
    "stdlib_messages",
    "table",
]

CRLF = b"\r\n"
BIG_ATTACHMENT = 40 * 1024 * 1024


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    date: datetime


def _msg(*header: str, body: bytes = b"plain body\r\n", eol: bytes = CRLF) -> bytes:
    head = eol.join(h.encode("utf-8") for h in header)
    return head + eol + eol + body


def _date(n: int) -> datetime:
    return datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC) + timedelta(minutes=n)


def hostile_messages(big: bool = True) -> list[Case]:
    """The hostile corpus: each message one way of breaking what a copier assumes."""
    rng = random.Random("hostile")
    cases: list[tuple[str, bytes]] = [
        (
            "bare LF line endings",
            b"Subject: bare LF\nMessage-ID: <bare-lf@hostile.example>\n\nline one\nline two\n",
        ),
        (
            "bare CR inside lines",
            b"Subject: bare CR\r\nMessage-ID: <bare-cr@hostile.example>\r\n\r\n"
            b"one\rtwo\r\nthree\r\r\n",
        ),
        (
            "mixed CRLF / LF",
            b"Subject: mixed\r\nMessage-ID: <mixed@hostile.example>\n\r\nbody\nmore\r\n",
        ),
        (
            "NUL bytes",
            b"Subject: NUL\r\nMessage-ID: <nul@hostile.example>\r\n\r\nbefore\x00after\x00\r\n",
        ),
        (
            "8-bit headers (UTF-8 and Latin-1)",
            "Subject: Grüße aus Köln – 日本語 🙂\r\nFrom: Jörg Müller <jorg@hostile.example>\r\n"
            "Message-ID: <8bit@hostile.example>\r\n".encode()
            + b"X-Latin1: caf\xe9 cr\xe8me\r\n\r\nbody \xff\xfe\r\n",
        ),
        ("no Message-ID", _msg("Subject: no id", "From: a@hostile.example")),
        (
            "duplicate Message-ID, body A",
            _msg("Subject: dup", "Message-ID: <dup@hostile.example>", body=b"first body\r\n"),
        ),
        (
            "duplicate Message-ID, body B (other size)",
            _msg("Subject: dup", "Message-ID: <dup@hostile.example>", body=b"second, longer\r\n"),
        ),
        (
            "duplicate Message-ID, body C (same size as A)",
            _msg("Subject: dup", "Message-ID: <dup@hostile.example>", body=b"other body\r\n"),
        ),
        (
            "headers only, no blank line",
            b"Subject: headers only\r\nMessage-ID: <hdr-only@hostile.example>\r\n",
        ),
        (
            "headers only, no final newline",
            b"Subject: no newline\r\nMessage-ID: <no-nl@hostile.example>",
        ),
        (
            "empty body",
            _msg("Subject: empty body", "Message-ID: <empty@hostile.example>", body=b""),
        ),
        (
            "2,000-line header",
            _msg(
                "Subject: long header",
                "Message-ID: <long-header@hostile.example>",
                *(f"X-Filler-{n}: {'x' * rng.randrange(10, 70)}" for n in range(2000)),
            ),
        ),
        (
            "broken MIME (no closing boundary, bad base64, wrong CTE)",
            _msg(
                "Subject: broken MIME",
                "Message-ID: <broken-mime@hostile.example>",
                "MIME-Version: 1.0",
                'Content-Type: multipart/mixed; boundary="XYZ"',
                body=b"--XYZ\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n"
                b"\r\nthis is not base64 !!!\r\n--XYZ\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n--XY\r\n",
            ),
        ),
        (
            "From_ lines in the body",
            _msg(
                "Subject: From lines",
                "Message-ID: <from-lines@hostile.example>",
                body=b"From here\r\nFrom nobody@example.com Mon Jan  1 00:00:00 2001\r\n"
                b">From quoted\r\n>>From twice\r\nFrom\r\n",
            ),
        ),
        (
            "invalid dates",
            _msg(
                "Subject: bad dates",
                "Message-ID: <bad-dates@hostile.example>",
                "Date: Sun, 31 Feb 2023 25:61:61 +9999",
                "Received: from x by y; not a date at all",
            ),
        ),
        ("no header at all", b"\r\njust a body, no header\r\n"),
        (
            "very long line (100 kB, no newline)",
            _msg(
                "Subject: long line", "Message-ID: <long-line@hostile.example>", body=b"y" * 100_000
            ),
        ),
    ]
    if big:
        payload = base64.encodebytes(os.urandom(BIG_ATTACHMENT * 3 // 4)).replace(b"\n", CRLF)
        cases.append(
            (
                "40 MB attachment",
                _msg(
                    "Subject: big",
                    "Message-ID: <big@hostile.example>",
                    "MIME-Version: 1.0",
                    'Content-Type: multipart/mixed; boundary="B"',
                    body=b"--B\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--B\r\n"
                    b"Content-Type: application/octet-stream\r\n"
                    b"Content-Transfer-Encoding: base64\r\n\r\n" + payload + b"--B--\r\n",
                ),
            )
        )
    return [Case(name, data, _date(n)) for n, (name, data) in enumerate(cases)]


def stdlib_email_dir() -> Path | None:
    """Lib/test/test_email/data of this Python, when the install has its test suite."""
    for base in (sysconfig.get_paths()["stdlib"], os.path.dirname(os.__file__)):
        path = Path(base, "test", "test_email", "data")
        if path.is_dir() and any(path.glob("msg_*.txt")):
            return path
    return None


def stdlib_messages() -> list[Case]:
    """The standard library's own email test messages (LF line endings, as shipped)."""
    folder = stdlib_email_dir()
    if folder is None:
        return []
    return [
        Case(f"stdlib {path.name}", path.read_bytes(), _date(500 + n))
        for n, path in enumerate(sorted(folder.glob("msg_*.txt")))
    ]


@dataclass(frozen=True)
class FolderCase:
    kind: str
    name: str  # '/'-separated, as on the source server


FOLDER_NAMES: tuple[FolderCase, ...] = (
    FolderCase("Latin", "Ünïcødé Façade"),
    FolderCase("Cyrillic", "Входящие/Архив"),
    FolderCase("Greek", "Ελληνικά"),
    FolderCase("Arabic", "البريد الوارد"),
    FolderCase("Hebrew", "דואר נכנס"),
    FolderCase("CJK", "日本語/中文/한국어"),
    FolderCase("Devanagari", "हिन्दी"),
    FolderCase("emoji", "📧 Mail 🎉"),
    FolderCase("'&' (modified UTF-7 shift)", "Dev & Ops"),
    FolderCase("looks like modified UTF-7", "&Jjo-"),
    FolderCase("'~' inside", "a~b"),
    FolderCase("'~' leading", "~tilde"),
    FolderCase("target delimiter '.' inside", "Projects/v1.2"),
    FolderCase("backslash", "back\\slash"),
    FolderCase("IMAP wildcards", "a%b*c"),
    FolderCase("double quote", 'say "hi"'),
    FolderCase("leading space", " lead"),
    FolderCase("trailing space", "trail "),
    FolderCase("'inbox' in lower case, child", "inbox/lower"),
    FolderCase("'Inbox' in mixed case, child", "Inbox/Mixed"),
    FolderCase("folder and sub-folder of the same name", "Same/Same"),
    FolderCase("three levels of the same name", "Same/Same/Same"),
)


def table(head: list[str], rows: list[list[str]]) -> str:
    """A plain text table (Unicode-width naive: for test output)."""
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)
