"""The one way a line reaches stderr: scrubbed of secrets, flushed at once."""

from __future__ import annotations

import sys


def err(text: str) -> None:
    from migrator.scrub import scrub

    sys.stderr.write(scrub(text.rstrip("\n")) + "\n")
    sys.stderr.flush()
