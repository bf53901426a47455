"""The floor: one ``UID FETCH 1:* (BODY.PEEK[])`` per folder over IMAPS, every body discarded.

Run as its own process (under ``/usr/bin/time -v``) so its wall time and peak RSS are measured like
every other peer's::

    MIGRATOR_SOURCE_PASSWORD=... python3 benchmarks/fetch_only.py HOST PORT USER CA_FILE
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.imapwire import Connection


def main(argv: list[str]) -> int:
    """Fetch and discard every body; print the message count (a check that it saw them all)."""
    host, port, user, ca_file = argv
    password = os.environ["MIGRATOR_SOURCE_PASSWORD"]
    count = 0
    with Connection(host, int(port), user, password, ca_file) as conn:
        for _name, wire in conn.list_folders():
            count += len(conn.fetch_all(wire, digest=False, meta=False))
    print(count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
