"""The bound on waiting for a forked test writer (tests/children.py)."""

import os
import time

import pytest

from tests.children import wait_for_child


def test_a_child_that_ends_gives_its_status() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(7)
    status = wait_for_child(pid, seconds=10)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7


def test_a_stuck_child_is_killed_and_the_test_fails_in_time() -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child: stuck, as on a lock held at the fork
        time.sleep(30)
        os._exit(0)
    started = time.monotonic()
    with pytest.raises(AssertionError, match="still running"):
        wait_for_child(pid, seconds=0.3)
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):  # reaped: nothing is left behind
        os.waitpid(pid, os.WNOHANG)
