"""Limits in action, on fake time: the token bucket, daily budgets, backoff parsing, size
failures that remember their limit; and the engine honouring each of them over memory stores."""

from __future__ import annotations

import time

import pytest

from migrator.checkpoint import Journal
from migrator.engine import CopyOptions, Engine
from migrator.errors import StoreError
from migrator.ratelimit import (
    DAY,
    DEFAULT_BACKOFF,
    ByteBudgets,
    DailyBudget,
    TokenBucket,
    is_final_refusal,
    is_size_refusal,
    parse_backoff,
    recorded_limit,
    size_reason,
)
from tests.unit.memstore import MemoryStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_bucket_allows_a_burst_then_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(1000, clock=clock)
    for _ in range(10):
        bucket.take(100, clock.sleep)
    assert clock.slept == []  # one second's worth at once
    bucket.take(500, clock.sleep)
    assert clock.slept == [pytest.approx(0.5)]
    clock.now += 10  # idle time refills, up to the burst only
    bucket.take(1000, clock.sleep)
    bucket.take(1000, clock.sleep)
    assert clock.slept[-1] == pytest.approx(1.0)


def test_a_request_bigger_than_the_bucket_waits_its_cost():
    clock = FakeClock()
    bucket = TokenBucket(100, clock=clock)
    bucket.take(1000, clock.sleep)
    assert clock.slept == [pytest.approx(9.0)]


def test_the_average_rate_holds_over_many_takes():
    clock = FakeClock()
    bucket = TokenBucket(50_000, clock=clock)
    start = clock.now
    for _ in range(200):
        bucket.take(10_000, clock.sleep)
    assert (clock.now - start) == pytest.approx(200 * 10_000 / 50_000 - 1, rel=0.01)


def test_a_bad_rate_is_refused():
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_a_daily_budget_counts_earlier_runs_of_the_last_day():
    now = 10 * DAY
    history = [(now - 2 * DAY, 400), (now - 3600, 300), (now - 60, 200)]
    budget = DailyBudget(1000, "upload to gmail:a", history, now)
    assert budget.used == 500 and budget.remaining == 500
    assert budget.fits(500) and not budget.fits(501)
    assert budget.rerun_after() == now - 3600 + DAY
    message = budget.spent_message()
    assert "upload to gmail:a" in message and "run the same command again after" in message
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(now - 3600 + DAY)) in message


def test_budgets_reserve_together_or_not_at_all():
    down = DailyBudget(1000, "download", (), 0.0)
    up = DailyBudget(500, "upload", (), 0.0)
    both = ByteBudgets([down, up])
    assert both.reserve(400) is None
    assert both.reserve(200) is up  # the upload budget has only 100 left
    assert (down.reserved, up.reserved) == (400, 400)
    assert both.reserve(100) is None and up.remaining == 0


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("NO Request is throttled. Suggested Backoff Time: 1500 milliseconds", 1.5),
        ("BAD User is throttled. Suggested Backoff Time: 299720 milliseconds", 299.72),
        ("NO [UNAVAILABLE] Temporary failure", DEFAULT_BACKOFF),
        ("NO [INUSE] Mailbox in use", DEFAULT_BACKOFF),
        ("-ERR [SYS/TEMP] try again later", DEFAULT_BACKOFF),
        ("NO Server Unavailable. 15", DEFAULT_BACKOFF),
        ("NO Suggested Backoff Time: 99999999 milliseconds", 900.0),
        ("NO [LIMIT] Mail size is larger than the maximum size allowed", None),
        ("NO [AUTHENTICATIONFAILED] Authentication failed.", None),
        ("BAD Command Argument Error. 11", None),
    ],
)
def test_backoff_is_read_from_what_the_server_says(text, seconds):
    assert parse_backoff(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_a_size_failure_remembers_its_limit():
    reason = size_reason(20_000, "the target's APPENDLIMIT")
    assert recorded_limit(reason) == 20_000
    assert recorded_limit(f"{reason}: the server said NO [TOOBIG]") == 20_000
    assert recorded_limit("the server said: NO refused") is None
    assert recorded_limit(None) is None
    assert is_size_refusal("NO [TOOBIG] Message too big")
    assert is_size_refusal("NO [LIMIT] Mail size is larger than the maximum size allowed")
    assert not is_size_refusal("NO [OVERQUOTA] Quota exceeded")


# -- the engine honouring them -----------------------------------------------------------------


def message(i: int, size: int = 0) -> bytes:
    return (
        f"Message-ID: <r{i}@example.org>\r\nSubject: {i}\r\n\r\n".encode() + b"x" * size + b"\r\n"
    )


def engine(src, dst, journal, **options):
    options.setdefault("retry_delay", 0.0)
    options.setdefault("batch_count", 2)
    return Engine(lambda: src, lambda: dst, journal, CopyOptions(**options))


class ThrottlingTarget(MemoryStore):
    """Answers the first ``times`` appends as Microsoft 365 does when it throttles."""

    def __init__(self, times: int, wait_ms: int) -> None:
        super().__init__(label="dst")
        self.times = times
        self.wait_ms = wait_ms

    def append(self, path, items):
        if self.times:
            self.times -= 1
            raise StoreError(
                f"dst: the server asked to wait (Suggested Backoff Time: {self.wait_ms} ms)",
                retry_after=self.wait_ms / 1000,
            )
        return super().append(path, items)


def test_the_engine_waits_as_asked_reconnects_and_finishes():
    src = MemoryStore(label="src")
    for i in range(6):
        src.add(("INBOX",), message(i))
    dst = ThrottlingTarget(times=3, wait_ms=50)
    journal = Journal.in_memory()
    started = time.monotonic()
    summary = engine(src, dst, journal, retries=0).run()  # waits do not use up --retries
    assert time.monotonic() - started >= 0.15
    assert summary.ok and summary.total("copied") == 6
    assert sorted(dst.bodies(("INBOX",))) == sorted(src.bodies(("INBOX",)))
    assert sum("waiting 0.05s as asked" in n for n in summary.notices) == 3
    assert dst.connects >= 3


def test_a_server_that_never_stops_throttling_ends_the_run_with_a_clear_error():
    src = MemoryStore(label="src")
    src.add(("INBOX",), message(1))
    dst = ThrottlingTarget(times=100, wait_ms=1)
    with pytest.raises(StoreError, match="still asked to wait after 3 waits"):
        engine(src, dst, Journal.in_memory(), max_throttles=3).run()


def test_a_spent_daily_budget_stops_cleanly_and_says_when_to_rerun(tmp_path):
    src = MemoryStore(label="src")
    for i in range(10):
        src.add(("INBOX",), message(i, 1000))
    dst = MemoryStore(label="dst")
    size = len(message(0, 1000))
    budgets = ByteBudgets([DailyBudget(4 * size + 10, "upload to dst", (), time.time())])
    journal = Journal.open(tmp_path / "j.sqlite")
    summary = engine(src, dst, journal, budgets=budgets).run()
    assert summary.total("copied") == 4 and not summary.interrupted and not summary.ok
    assert summary.stopped and "daily upload to dst budget" in summary.stopped
    assert "run the same command again after" in summary.stopped
    journal.close()
    # the next day: the rest, nothing twice
    journal = Journal.open(tmp_path / "j.sqlite")
    summary = engine(src, dst, journal).run()
    journal.close()
    assert summary.ok and summary.total("copied") == 6
    assert sorted(dst.bodies(("INBOX",))) == sorted(src.bodies(("INBOX",)))


def test_a_rate_limit_slows_the_stream():
    src = MemoryStore(label="src")
    for i in range(8):
        src.add(("INBOX",), message(i, 10_000))
    dst = MemoryStore(label="dst")
    started = time.monotonic()
    summary = engine(src, dst, Journal.in_memory(), byte_rate=TokenBucket(100_000)).run()
    assert summary.ok
    # 80 kB at 100 kB/s with a one-second burst: quick; twice the data must wait
    assert time.monotonic() - started < 0.5
    for i in range(8, 24):
        src.add(("INBOX",), message(i, 10_000))
    started = time.monotonic()
    engine(src, dst, Journal.in_memory(), byte_rate=TokenBucket(100_000)).run()
    assert time.monotonic() - started >= 0.5


def test_too_big_messages_fail_once_and_are_not_retried_until_the_limit_changes(tmp_path):
    src = MemoryStore(label="src")
    for i in range(6):
        src.add(("INBOX",), message(i, 5000 if i % 2 else 10))
    dst = MemoryStore(label="dst")
    dst.max_message_size = 2000
    path = tmp_path / "j.sqlite"

    def run():
        journal = Journal.open(path)
        try:
            return engine(src, dst, journal).run()
        finally:
            journal.close()

    first = run()
    assert first.total("copied") == 3 and first.total("failed") == 3
    reasons = [r for f in first.folders for _, r in f.failures]
    assert all("larger than the target accepts (2000 bytes" in r for r in reasons)
    second = run()
    assert second.total("copied") == 0 and second.total("failed") == 3
    assert any("not retried: the target's limit is still 2000 bytes" in n for n in second.notices)
    journal = Journal.in_memory(path)
    assert {f.attempts for f in journal.failures()} == {1}  # no second attempt recorded
    journal.close()
    dst.max_message_size = 100_000  # the limit changed: now they go
    third = run()
    assert third.ok and third.total("copied") == 3
    assert len(dst.bodies(("INBOX",))) == 6


def test_a_profile_limit_below_appendlimit_wins_and_says_so():
    src = MemoryStore(label="src")
    src.add(("INBOX",), message(1, 3000))
    dst = MemoryStore(label="dst")
    dst.max_message_size = 10_000
    summary = engine(
        src, dst, Journal.in_memory(), size_limit=1000, size_limit_origin="profile outlook"
    ).run()
    (reason,) = [r for f in summary.folders for _, r in f.failures]
    assert reason == "larger than the target accepts (1000 bytes, profile outlook)"


def test_the_login_gate_lets_a_burst_through_then_spaces_logins_per_account():
    from migrator.ratelimit import LoginGate

    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    gate = LoginGate(limit=3, window=60.0, clock=lambda: now[0], sleep=sleep)
    assert [gate.wait("a@h:1") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert gate.wait("b@h:1") == 0.0  # another account has its own count
    waited = gate.wait("a@h:1")  # the fourth in the window waits for the first to age out
    assert 59.5 <= waited <= 60.0 and now[0] >= 60.0
    logins = [now[0]]
    for _ in range(10):
        gate.wait("a@h:1")
        logins.append(now[0])
    # never more than 3 in any 60 s
    assert all(b - a >= 60.0 - 1e-9 for a, b in zip(logins, logins[3:], strict=False))


@pytest.mark.parametrize(
    ("reason", "final"),
    [
        ("the server said: Message contains invalid header", True),  # Cyrus
        ("the server said: Message contains NUL characters", True),
        ("the server said: Message contains non-ASCII characters in headers", True),
        ("the server said: Over quota", True),  # Cyrus
        ("the server said: [OVERQUOTA] Quota exceeded (mailbox for user is full)", True),
        ("the server said: [TOOBIG] Message too large", True),
        ("the server said: Permission denied", True),  # Cyrus, no i right
        ("larger than the target accepts (1000 bytes, the target's APPENDLIMIT)", True),
        ("connection lost during APPEND (socket error: EOF)", False),
        ("the server asked to wait 2s during APPEND ([UNAVAILABLE] Suggested Backoff Time)", False),
        ("the message vanished from the source", False),
    ],
)
def test_final_refusals_are_told_from_failures_a_rerun_may_fix(reason, final):
    assert is_final_refusal(reason) is final
