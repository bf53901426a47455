"""migrator.heap: freed message bodies go back to the system (glibc), seen in a fresh process.

The scenario calls glibc's malloc and free itself rather than making Python objects: how
CPython's own allocator places bytes objects differs between 3.11, 3.12 and 3.13 (pymalloc
arenas, small-object thresholds), and the property under test is glibc's, on every Python the
package claims.
"""

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
import ctypes, os, sys
from migrator import heap

libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def block(size):
    pointer = libc.malloc(size)
    ctypes.memset(pointer, 1, size)  # resident, not only reserved
    return pointer

if "configure" in sys.argv:
    heap.configure()
libc.free(block(8 << 20))  # a large message freed: glibc now takes bigger blocks from the heap
size = int(sys.argv[1])
base = rss()
bodies, spacers = [], []
for n in range(30_000_000 // size):
    bodies.append(block(size))
    spacers.append(block(1000))
for pointer in bodies:
    libc.free(pointer)
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
