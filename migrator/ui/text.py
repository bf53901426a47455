"""The building blocks of what the user reads: sizes, counts and durations in words, and text
tables that fit a terminal. Pure functions, no migrator imports (library code may use them)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

#: The classic terminal's columns: tables fit in it, and bars use it on a terminal that reports
#: no size.
WIDTH = 80
#: A table's text column is never cut below this many columns to make the table fit.
MIN_TEXT_COLUMN = 12


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    """'1 account', '2 accounts'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def duration(seconds: float) -> str:
    """'4.2s' under a minute, then '3m07s', then '2h05m'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def shorten(text: str, length: int) -> str:
    """At most ``length`` characters, the last one an ellipsis when cut (a bar's label; tqdm
    pads it itself)."""
    return text if len(text) <= length else text[: length - 1] + "…"


def width(text: str) -> int:
    """Columns a string takes in a terminal (wide CJK counts two, combining marks none)."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def fit(text: str, columns: int) -> str:
    """At most ``columns`` terminal columns, the last one an ellipsis when cut."""
    if width(text) <= columns:
        return text
    out = ""
    for c in text:
        if width(out + c) > columns - 1:
            break
        out += c
    return out + "…"


def table(
    head: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1, total: bool = False
) -> str:
    """Left-aligned text columns first, right-aligned numbers after; the text columns shrink to
    keep the table within WIDTH columns. With ``total``, the last row is a total, ruled off."""
    widths = [max(width(r[i]) for r in [head, *rows]) for i in range(len(head))]
    over = sum(widths) + 2 * (len(widths) - 1) - WIDTH
    for i in range(text_columns):
        if over <= 0:
            break
        cut = min(over, max(0, widths[i] - MIN_TEXT_COLUMN))
        widths[i] -= cut
        over -= cut

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            cell = fit(cell, widths[i])
            pad = " " * (widths[i] - width(cell))
            out.append(cell + pad if i < text_columns else pad + cell)
        return "  ".join(out).rstrip()

    rule = line(["-" * w for w in widths])
    body = [line(r) for r in rows]
    if total:
        body.insert(len(body) - 1, rule)
    return "\n".join([line(head), rule, *body])
