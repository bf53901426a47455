"""Where migrator's time goes: a text summary of a py-spy speedscope profile.

``run.py --profile DIR`` records each migrator full copy with ``py-spy record --idle --threads
--format speedscope`` (a profiled run is slower: its figures are not for the table).  This prints,
per thread, the leaf frames that hold the most samples (self time: where the thread actually is,
waiting in ``recv`` included) and migrator's own functions by inclusive time::

    python3 benchmarks/profile.py DIR/migrator-r1.speedscope.json [--top 15]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path


def _frame_name(frame: dict) -> str:
    file = frame.get("file") or ""
    short = file.split("site-packages/")[-1].split("/lib/python3")[-1]
    if "/migrator/" in file:
        short = "migrator/" + file.split("/migrator/", 1)[1]
    line = frame.get("line")
    return f"{frame.get('name', '?')} ({short}{f':{line}' if line else ''})"


def summarise(path: Path, top: int = 15) -> str:
    """Per thread: samples, top self frames, top migrator frames by inclusive samples."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    out: list[str] = []
    for prof in data["profiles"]:
        samples, weights = prof["samples"], prof.get("weights") or [1] * len(prof["samples"])
        total = sum(weights)
        if not total:
            continue
        leaf: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for stack, w in zip(samples, weights, strict=True):
            if not stack:
                continue
            leaf[_frame_name(frames[stack[-1]])] += w
            seen = set()
            for idx in stack:
                name = _frame_name(frames[idx])
                if "(migrator/" in name and name not in seen:
                    seen.add(name)
                    inclusive[name] += w
        unit = prof.get("unit", "samples")
        out.append(f"== {prof.get('name', 'thread')}: {total:,.1f} {unit}")
        out.append("  self (where the thread is):")
        out += [f"    {n / total:6.1%}  {name}" for name, n in leaf.most_common(top)]
        out.append("  migrator functions, inclusive:")
        out += [f"    {n / total:6.1%}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("profile", type=Path)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    print(summarise(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
