"""Medians over rounds, the side-by-side table, and the ratios issue 7 asks for.

Everything is derived from the raw runs, which are kept in the JSON as measured, so a reader can
recompute any figure.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Run:
    """One timed command: a peer's full copy or its rerun, in one round."""

    peer: str
    round: int
    phase: str  # "full" or "rerun"
    seconds: float
    max_rss_kb: int | None
    exit_code: int | None
    timed_out: bool = False
    equal: bool | None = None  # full copy: did the target equal the source afterwards
    compared: str = ""
    check_seconds: float | None = None  # how long checking the target took (not timed above)
    load_before: float | None = None  # 1-minute load average as the command started
    load_after: float | None = None  # ... and as it ended: other work on the machine skews figures
    problems: list[str] = field(default_factory=list)
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Summary:
    """One table row: medians over the rounds of one peer."""

    peer: str
    label: str
    messages: int
    rounds: int
    full_s: float | None
    msgs_per_s: float | None
    rss_mb: float | None
    rerun_s: float | None
    equal: bool
    failed_runs: int
    compared: str
    vs_imapsync: float | None = None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[Run], labels: dict[str, str], messages: dict[str, int]) -> list[Summary]:
    """Medians of the successful runs of each peer, in the order the peers were listed."""
    rows = []
    for peer, label in labels.items():
        full = [r for r in runs if r.peer == peer and r.phase == "full"]
        rerun = [r for r in runs if r.peer == peer and r.phase == "rerun"]
        if not full:
            continue
        # Only copies that worked count towards speed, and only reruns after such a copy.
        good = [r for r in full if r.ok and r.equal]
        good_rounds = {r.round for r in good}
        rerun = [r for r in rerun if r.round in good_rounds and r.ok and not r.problems]
        full_s = _median([r.seconds for r in good])
        rss = _median([r.max_rss_kb / 1024 for r in good if r.max_rss_kb is not None])
        n = messages[peer]
        rows.append(
            Summary(
                peer=peer,
                label=label,
                messages=n,
                rounds=len(full),
                full_s=full_s,
                msgs_per_s=n / full_s if full_s else None,
                rss_mb=rss,
                rerun_s=_median([r.seconds for r in rerun]),
                equal=all(r.ok and r.equal for r in full),
                failed_runs=sum(not (r.ok and r.equal) for r in full),
                compared=full[0].compared,
            )
        )
    base = next((r for r in rows if r.peer == "imapsync" and r.msgs_per_s), None)
    for row in rows:
        if base is not None and row.msgs_per_s:
            row.vs_imapsync = row.msgs_per_s / base.msgs_per_s  # type: ignore[operator]
    return rows


def _fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def table(rows: list[Summary]) -> str:
    """The side-by-side table, as Markdown (it reads fine on a terminal too)."""
    head = (
        "| peer | msgs | full copy s | msgs/s | peak RSS MB | rerun s | x vs imapsync | equal |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    )
    lines = []
    for r in rows:
        equal = "yes" if r.equal else "no"
        if r.failed_runs:
            equal += f" ({r.failed_runs} failed)"
        lines.append(
            f"| {r.label} | {r.messages:,} | {_fmt(r.full_s)} | {_fmt(r.msgs_per_s, 0)} | "
            f"{_fmt(r.rss_mb, 0)} | {_fmt(r.rerun_s, 2)} | {_fmt(r.vs_imapsync, 2, 'x')} | "
            f"{equal} |"
        )
    return head + "\n".join(lines) + "\n"


@dataclass
class Ratio:
    """One of issue 7's acceptance figures: the measured value and whether it meets the bar."""

    what: str
    value: float | None
    unit: str
    target: str
    met: bool | None

    def line(self) -> str:
        value = _fmt(self.value, 2, self.unit)
        if self.value is None:
            return f"- {self.what}: not measured"
        if self.met is None:
            return f"- {self.what}: {value}"
        verdict = "meets" if self.met else "MISSES"
        return f"- {self.what}: {value} (target {self.target}) — {verdict}"


def ratios(
    rows: list[Summary], largest_mb: float, help_s: float | None, messages: int
) -> list[Ratio]:
    """The migrator-specific figures of issue 7, each against its bar."""
    by = {r.peer: r for r in rows}

    def rate(peer: str) -> float | None:
        row = by.get(peer)
        return row.msgs_per_s if row else None

    def div(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    mig = by.get("migrator")
    out = []
    v = div(rate("migrator"), rate("imapsync"))
    out.append(
        Ratio("IMAP->IMAP msgs/s vs imapsync", v, "x", ">= 4x", None if v is None else v >= 4)
    )
    v = div(rate("migrator"), rate("doveadm-imapc"))
    out.append(
        Ratio("IMAP->IMAP msgs/s vs doveadm backup over imapc", v, "x", "> 1x", _ge(v, 1, True))
    )
    v = div(rate("migrator"), rate("doveadm-files"))
    out.append(
        Ratio("IMAP->IMAP msgs/s vs doveadm backup from files (the floor)", v, "x", "report", None)
    )
    rerun = mig.rerun_s if mig else None
    out.append(Ratio("no-op rerun", rerun, " s", "< 1 s", None if rerun is None else rerun < 1))
    imapsync_rerun = by["imapsync"].rerun_s if "imapsync" in by else None
    v = div(imapsync_rerun, rerun)
    out.append(Ratio("no-op rerun speed vs imapsync's", v, "x", ">= 5x", _ge(v, 5)))
    rss = mig.rss_mb if mig else None
    out.append(Ratio(f"peak RSS, {messages:,}-message copy", rss, " MB", "< 100 MB", _lt(rss, 100)))
    bar = largest_mb + 100
    out.append(
        Ratio(
            "peak RSS vs largest message + 100 MB",
            rss,
            " MB",
            f"<= {bar:.0f} MB",
            _lt(rss, bar, True),
        )
    )
    v = div(rate("migrator-mbox"), rate("fetch-only"))
    out.append(
        Ratio("IMAP->mbox msgs/s vs one FETCH of every body", v, "x", ">= 0.5x", _ge(v, 0.5))
    )
    v = div(rate("migrator-pop3"), rate("migrator"))
    out.append(Ratio("POP3->IMAP msgs/s vs IMAP->IMAP msgs/s", v, "x", ">= 0.5x", _ge(v, 0.5)))
    out.append(Ratio("`migrator --help`", help_s, " s", "< 0.3 s", _lt(help_s, 0.3)))
    return out


def _ge(v: float | None, bar: float, strict: bool = False) -> bool | None:
    if v is None:
        return None
    return v > bar if strict else v >= bar


def _lt(v: float | None, bar: float, inclusive: bool = False) -> bool | None:
    if v is None:
        return None
    return v <= bar if inclusive else v < bar
