"""Forked writers in tests, waited for with a bound.

A child forked from a process with threads (a server fixture's, a pool's) can deadlock on a lock
another thread held at the fork (Python 3.12+ warns about it); an unbounded ``waitpid`` would
then hang the suite. Here the parent gives up, kills the child and fails the test instead."""

from __future__ import annotations

import os
import signal
import time

#: Long enough for any forked writer in the suite (they write a few messages); a child still
#: alive after it is stuck.
CHILD_SECONDS = 60.0


def wait_for_child(pid: int, seconds: float = CHILD_SECONDS) -> int:
    """The child's wait status once it ends; killed and an AssertionError after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} still running after {seconds:.0f} s: killed")
        time.sleep(0.01)
