"""Flow control: how much one worker fetches or appends per round trip (``Pace``), and how many
message bytes all workers together hold between fetching and appending (``InFlight``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Literal

from migrator import heap
from migrator.errors import MessageError
from migrator.model import MessageRef

#: The first append of a worker (it grows from there, see Pace).
FIRST_APPEND_BYTES = 256 * 1024
#: A chunk cut off by a lost connection makes the next ones this many times smaller: a link that
#: breaks every few hundred kB gets chunks that fit between two breaks within a retry or two.
SHRINK_FACTOR = 8
#: Each chunk that goes through lets the next one grow this many times, back to the ceiling.
GROW_FACTOR = 2
#: How often a thread waiting for room in flight looks whether it was cancelled: short enough
#: that a stop is seen at once, long enough to cost nothing.
POLL_SECONDS = 0.2

#: Which size a Pace keeps: per fetch from the source, or per append to the target.
Direction = Literal["fetch", "append"]


class Pace:
    """How much one worker fetches or appends per round trip. A connection that drops in the
    middle of a chunk makes the next chunks an eighth of the size, each success lets them grow back
    (double): a link that breaks every few hundred kB still moves mail, where a fixed 8 MB batch
    would fail the same way at every reconnect."""

    def __init__(self, ceiling: int, floor: int, append_ceiling: int | None = None) -> None:
        self.ceilings = {"fetch": ceiling, "append": append_ceiling or ceiling}
        self.floor = min(floor, ceiling)
        self.fetch = ceiling
        # Appends start small and double: the first batch measures the target's rate (see
        # plan.reconcile) and leaves little in doubt should the run die in it.
        self.append = min(ceiling, max(self.floor, FIRST_APPEND_BYTES))

    def shrink(self, which: Direction, tried: int) -> None:
        current = min(getattr(self, which), max(tried, 1))
        setattr(self, which, max(self.floor, current // SHRINK_FACTOR))

    def grow(self, which: Direction) -> None:
        setattr(self, which, min(self.ceilings[which], getattr(self, which) * GROW_FACTOR))


def chunk(refs: Sequence[MessageRef], start: int, limit: int) -> list[MessageRef]:
    """refs[start:] up to ``limit`` bytes (at least one message)."""
    end, total = start, 0
    while end < len(refs) and (end == start or total + refs[end].size <= limit):
        total += refs[end].size
        end += 1
    return list(refs[start:end])


class InFlight:
    """Bounds the message bytes held between fetching and appending, across all workers, so that
    memory follows the bytes in flight and not the number or size of messages: a reader waits
    before fetching while others' bytes would take the total over ``limit``. A message larger
    than the limit is fetched alone, once nothing else is held, so it is held once at most."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def share(self) -> Share:
        return Share(self)


class Share:
    """One folder stream's part of the bytes in flight; what it still holds when it ends (a
    stop, a lost connection) goes back to the pool."""

    def __init__(self, pool: InFlight) -> None:
        self.pool = pool
        self.held = 0

    def acquire(self, nbytes: int, *cancel: threading.Event, besides: int = 0) -> bool:
        """Wait for room for ``nbytes`` (or until no more than ``besides`` bytes are held)."""
        pool = self.pool
        with pool.cond:
            while pool.used > besides and pool.used + nbytes > pool.limit:
                if any(event.is_set() for event in cancel):
                    return False
                pool.cond.wait(POLL_SECONDS)
            pool.used += nbytes
            self.held += nbytes
        if nbytes > pool.limit:
            heap.trim()  # nothing else is held: what the small ones left goes back first
        return True

    def release(self, nbytes: int) -> None:
        pool = self.pool
        with pool.cond:
            nbytes = min(nbytes, self.held)
            self.held -= nbytes
            pool.used -= nbytes
            pool.cond.notify_all()

    def close(self) -> None:
        self.release(self.held)


def held(ref: MessageRef, data: bytes | MessageError) -> int:
    """The bytes in flight a fetched message counts for: its claimed size, or what came when
    that is more (see pipeline.Stream.read)."""
    return max(ref.size, len(data)) if isinstance(data, bytes) else ref.size
