"""Limits in action: a token bucket on the message stream, daily byte budgets, size limits that
a failure remembers, and a server's request to wait ("Suggested Backoff Time: N milliseconds").

Pure logic over an injectable clock and sleep, so that tests run on fake time. Standard library
only.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

#: Pause when a server says "try later" without saying for how long.
DEFAULT_BACKOFF = 30.0
#: Longest pause honoured at once; a server asking for more is asked again after this.
MAX_BACKOFF = 900.0
#: The window of a daily budget.
DAY = 86400.0


class TokenBucket:
    """``rate`` units per second on average, bursts of up to ``burst`` units (one second's worth
    by default). A request larger than the bucket is let through after the time it costs, so a
    big message is never refused, only paid for. Thread-safe: every worker shares one bucket."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("the rate must be positive")
        self.rate = float(rate)
        self.capacity = float(burst if burst is not None else rate)
        self._clock = clock
        self._tokens = self.capacity
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self, amount: float) -> float:
        """Take ``amount`` now (going into debt if need be); return the seconds to wait before
        using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= amount
            return max(0.0, -self._tokens / self.rate)

    def take(self, amount: float, wait: Callable[[float], object] = time.sleep) -> None:
        """Block until ``amount`` may be used. ``wait`` sleeps (pass ``stop_event.wait`` to be
        woken by a stop)."""
        delay = self.reserve(amount)
        if delay > 0:
            wait(delay)


@dataclass
class DailyBudget:
    """Bytes a provider lets through in any 24 hours (Gmail: 500 MB up, 2,500 MB down by IMAP).

    ``history`` is what earlier runs moved, as (start time, bytes); what they moved in the last
    24 hours counts against this run. Bytes are reserved before a message is fetched, so a run
    stops before it would go over, never after."""

    limit: int
    #: What the budget is, for the message: "download from gmail:alice@gmail.com".
    label: str
    history: Sequence[tuple[float, int]] = ()
    now: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        since = self.now - DAY
        self._window = [(t, n) for t, n in self.history if t > since and n > 0]
        self.used = sum(n for _, n in self._window)
        self.reserved = 0

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used - self.reserved)

    def fits(self, size: int) -> bool:
        return self.used + self.reserved + size <= self.limit

    def rerun_after(self) -> float:
        """When a rerun finds budget again: 24 hours after the oldest use still counted (this
        run's own start when nothing older is)."""
        starts = [t for t, _ in self._window] + [self.now]
        return min(starts) + DAY

    def spent_message(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.rerun_after()))
        return (
            f"the daily {self.label} budget of {_human(self.limit)} is spent "
            f"({_human(self.used + self.reserved)} in the last 24 hours); what was copied is "
            f"recorded: run the same command again after {when}"
        )


class ByteBudgets:
    """Several daily budgets (the source's download and the target's upload) spent together."""

    def __init__(self, budgets: Iterable[DailyBudget]) -> None:
        self.budgets = list(budgets)
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.budgets)

    def reserve(self, size: int) -> DailyBudget | None:
        """Reserve ``size`` bytes in every budget; None when they fit, else the budget that is
        spent (and nothing is reserved)."""
        with self._lock:
            for budget in self.budgets:
                if not budget.fits(size):
                    return budget
            for budget in self.budgets:
                budget.reserved += size
            return None


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


# -- a server asking us to wait ---------------------------------------------------------------

_SUGGESTED = re.compile(
    r"Suggested\s+Backoff\s+Time:\s*(\d+)\s*(milliseconds|ms|seconds|s)\b", re.I
)
_TRY_LATER = re.compile(
    r"\[(UNAVAILABLE|THROTTLED|INUSE|SYS/TEMP|IN-USE|LOGIN-DELAY)\]"
    r"|\bServer Unavailable\. 15\b"  # Exchange's transient "NO Server Unavailable. 15"
    r"|\btry (again )?later\b|\bplease retry\b|\brequest is throttled\b",
    re.I,
)


def parse_backoff(text: str) -> float | None:
    """Seconds a server asks us to wait before trying again, or None when its answer is not a
    "try later". Microsoft: "Request is throttled. Suggested Backoff Time: 12000 milliseconds";
    RFC 5530's [UNAVAILABLE] and [INUSE], and the like, without a figure: DEFAULT_BACKOFF."""
    if m := _SUGGESTED.search(text):
        value = float(m[1])
        seconds = value / 1000 if m[2].lower() in ("milliseconds", "ms") else value
        return min(seconds, MAX_BACKOFF)
    if _TRY_LATER.search(text):
        return DEFAULT_BACKOFF
    return None


# -- size limits, remembered with the failure ---------------------------------------------------

_SIZE_REASON = re.compile(r"larger than the target accepts \((\d+) bytes")
_SIZE_REFUSAL = re.compile(
    r"\[TOOBIG\]|\[LIMIT\][^\n]*\bsize\b|\btoo (large|big)\b|\bsize (limit|exceeds)\b"
    r"|\bexceeds? the (maximum|max|size)",
    re.I,
)


def size_reason(limit: int, origin: str) -> str:
    """The failure recorded for a message over the target's limit; the limit is written in it so
    that a rerun can tell whether it changed."""
    return f"larger than the target accepts ({limit} bytes, {origin})"


def recorded_limit(reason: str | None) -> int | None:
    """The limit a size failure was recorded under, or None for any other failure."""
    m = _SIZE_REASON.search(reason or "")
    return int(m[1]) if m else None


#: What servers say when they refuse a message for good: its content (Cyrus: "Message contains
#: invalid header", "... NUL characters", "... non-ASCII characters in headers"; [PARSE]), its size
#: ([TOOBIG], over the APPENDLIMIT), the account's room ([OVERQUOTA], Cyrus's "Over quota"), or
#: the user's rights ([NOPERM], "Permission denied"): a rerun changes none of them.
_FINAL_REFUSAL = re.compile(
    r"invalid|malformed|\bNUL\b|non-ASCII|\[PARSE\]|\bover quota\b|\[OVERQUOTA\]|quota exceeded"
    r"|larger than the target accepts|permission denied|\[NOPERM\]",
    re.IGNORECASE,
)


def is_final_refusal(reason: str) -> bool:
    """True when a message's failure is one a rerun cannot fix (the server refused the message
    itself, or has no room for it), False when it may (a lost connection, a throttled server,
    a message that vanished meanwhile)."""
    return bool(_FINAL_REFUSAL.search(reason)) or is_size_refusal(reason)


def is_size_refusal(text: str) -> bool:
    """True when a target's refusal says the message is too big ([TOOBIG], Dovecot's [LIMIT] ...
    size, "too large")."""
    return bool(_SIZE_REFUSAL.search(text))


#: Logins one account may make in LOGIN_WINDOW seconds, whatever the retries say. Providers lock
#: an account after a burst of logins (Gmail, Microsoft 365 and Dovecot's auth penalty react to
#: a few dozen a minute); a normal run makes one per worker and side, a flaky link a few more a
#: minute, so only a reconnect storm ever waits here.
LOGINS_PER_WINDOW = 20
LOGIN_WINDOW = 60.0


class LoginGate:
    """At most ``limit`` logins per account in any ``window`` seconds: ``wait(account)`` returns
    once one more is allowed (sleeping in short steps, so an interrupt is noticed) and counts it.
    Thread-safe; one gate for the whole process (``LOGINS``), shared by every store."""

    def __init__(
        self,
        limit: int = LOGINS_PER_WINDOW,
        window: float = LOGIN_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit, self.window = limit, window
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()
        self._logins: dict[str, list[float]] = {}

    def wait(self, account: str) -> float:
        """Block until ``account`` may log in again; the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                recent = [t for t in self._logins.get(account, []) if now - t < self.window]
                if len(recent) < self.limit:
                    recent.append(now)
                    self._logins[account] = recent
                    return waited
                pause = recent[0] + self.window - now
            step = min(pause, 0.5)
            self._sleep(step)
            waited += step


LOGINS = LoginGate()
