"""migrator.heap: freed message bodies go back to the system (glibc), seen in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from migrator import heap

pytestmark = pytest.mark.skipif(not heap.configure(), reason="needs glibc's malloc")

#: Bodies are freed with a small live block after each one, so the heap cannot simply shrink
#: from its top: what comes back to the system must come from the middle.
SCENARIO = """
import os, sys
from migrator import heap

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

if "configure" in sys.argv:
    heap.configure()
big = b"x" * (8 << 20)  # a large message freed: glibc now takes bigger blocks from the heap
del big
size = int(sys.argv[1])
base = rss()
bodies, spacers = [], []
for n in range(30_000_000 // size):
    bodies.append(b"y" * size)
    spacers.append(b"z" * 200)
del bodies
if "trim" in sys.argv:
    heap.trim()
print(rss() - base)
"""


def retained(size: int, *steps: str) -> int:
    """Bytes still resident after holding ~30 MB of bodies of ``size`` bytes and freeing them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(size), *steps],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=60,
    )
    return int(out.stdout)


MB = 1 << 20


def test_large_bodies_go_back_once_the_threshold_is_fixed() -> None:
    assert retained(400 * 1024) > 8 * MB  # what a long run did before
    assert retained(400 * 1024, "configure") < 4 * MB


def test_trim_gives_back_what_small_bodies_left() -> None:
    assert retained(100 * 1024, "configure") > 8 * MB
    assert retained(100 * 1024, "configure", "trim") < 4 * MB
