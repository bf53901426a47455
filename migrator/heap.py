"""Keep the process's memory to the bytes in flight (glibc's malloc; a no-op elsewhere).

glibc serves a large block with its own mapping and unmaps it when freed, but every such free
raises the size that counts as large (up to 32 MB). After a few 2 MB batches, message bodies
come from the heap instead, and a heap keeps most of the pages freed in its middle: the peak
then follows every body the run has ever held at once, not the bytes in flight. Fixing the
threshold keeps each body above it in a mapping of its own that goes back to the system when
freed; ``trim`` hands back the free heap pages the small ones left, before a very large message.
"""

from __future__ import annotations

import ctypes
from typing import Any

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
#: Bodies of at least this many bytes get a mapping of their own.
MMAP_THRESHOLD = 256 * 1024

_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            lib: Any = ctypes.CDLL(None)  # the C library this process already runs on
        except OSError:
            lib = False
        if lib and not (hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim")):
            lib = False
        _libc = lib
    return _libc or None


def configure() -> bool:
    """Fix the mmap threshold for this process; True when the C library took it."""
    lib = _glibc()
    return bool(lib and lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)


def trim() -> None:
    """Give the heap's free pages back to the system."""
    lib = _glibc()
    if lib:
        lib.malloc_trim(0)
