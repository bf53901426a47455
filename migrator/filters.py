"""Which messages of a folder are selected: a pure predicate over MessageRef, and the parsers for
the values users type (--since 2023-01-01, --older-than 90d, --max-size 25M)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from migrator.model import MessageRef


@dataclass(frozen=True)
class MessageFilter:
    """Dates compare with INTERNALDATE. A message without a date is left out whenever a date
    bound is set: archiving with --delete-source must never act on a guess."""

    since: datetime | None = None
    before: datetime | None = None
    max_size: int | None = None

    def include(self, ref: MessageRef) -> bool:
        if self.max_size is not None and ref.size > self.max_size:
            return False
        if self.since is None and self.before is None:
            return True
        if ref.date is None:
            return False
        when = ref.date if ref.date.tzinfo else ref.date.replace(tzinfo=UTC)
        if self.since is not None and when < self.since:
            return False
        return not (self.before is not None and when >= self.before)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_AGE = re.compile(r"^\s*(\d+)\s*([hdwmy])\s*$", re.IGNORECASE)
_AGE_UNITS = {"h": 1 / 24, "d": 1, "w": 7, "m": 30, "y": 365}


def parse_size(text: str) -> int:
    """'25M', '1.5G', '512k', '1000' (bytes); binary multiples, as mail servers count them."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a size; write e.g. 25M, 512K or 1G")
    return int(float(m[1]) * _UNITS[m[2].lower()])


def parse_age(text: str) -> timedelta:
    """'90d', '12w', '6m' (30 days), '1y' (365 days), '36h'."""
    m = _AGE.match(text)
    if not m:
        raise ValueError(f"{text!r} is not an age; write e.g. 90d, 12w, 6m or 1y")
    return timedelta(days=int(m[1]) * _AGE_UNITS[m[2].lower()])


def parse_date(text: str) -> datetime:
    """'2023-01-31' (midnight UTC) or an ISO 8601 date-time (UTC unless it names a zone)."""
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            day = date.fromisoformat(text.strip())
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a date; write YYYY-MM-DD") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
