"""migrator.ui: the text building blocks (widths, tables, sizes, durations) and the line
reporter's split between stderr and the log file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.engine import FolderStats
from migrator.folders import FolderPlan
from migrator.model import Folder
from migrator.ui.progress import LineReporter, QuietReporter, make_reporter
from migrator.ui.text import WIDTH, duration, fit, human_bytes, plural, shorten, table, width

#: Folder names as servers send them: ASCII, accents, combining marks, wide CJK, emoji.
names = st.text(
    alphabet=st.sampled_from("abcXYZ /._-éü\u0301\u0308日本語メール📧"), min_size=1, max_size=120
)


@given(names, st.integers(min_value=2, max_value=80))
def test_fit_never_takes_more_columns_than_given(text: str, columns: int) -> None:
    cut = fit(text, columns)
    assert width(cut) <= columns
    assert cut == text if width(text) <= columns else cut.endswith("…")


def test_width_counts_terminal_columns() -> None:
    assert width("abc") == 3 and width("日本") == 4 and width("e\u0301") == 1


@given(st.lists(st.tuples(names, names), min_size=1, max_size=8))
def test_a_table_of_long_names_and_short_numbers_fits_the_terminal(
    pairs: list[tuple[str, str]],
) -> None:
    rows = [[a, b, "12345", "1.5 MB"] for a, b in pairs]
    text = table(["source folder", "target folder", "copied", "size"], rows, text_columns=2)
    assert all(width(line) <= WIDTH for line in text.splitlines())
    assert len(text.splitlines()) == 2 + len(rows)


def test_a_total_row_is_ruled_off_and_numbers_align_right() -> None:
    text = table(["folder", "n"], [["INBOX", "7"], ["Sent", "12"], ["total", "19"]], total=True)
    assert text.splitlines() == [
        "folder   n",
        "------  --",
        "INBOX    7",
        "Sent    12",
        "------  --",
        "total   19",
    ]


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KB"),
        (1536, "1.5 KB"),
        (320019, "312.5 KB"),
        (5 * 1024**3, "5.0 GB"),
        (2 * 1024**5, "2048.0 TB"),
    ],
)
def test_human_bytes(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0.04, "0.0s"), (59.94, "59.9s"), (60, "1m00s"), (187, "3m07s"), (7500, "2h05m")],
)
def test_duration(seconds: float, shown: str) -> None:
    assert duration(seconds) == shown


def test_plural_and_shorten() -> None:
    assert [plural(n, "folder") for n in (0, 1, 2)] == ["0 folders", "1 folder", "2 folders"]
    assert shorten("Archive/2019", 20) == "Archive/2019"
    assert shorten("Archive/2019/Projects/Big", 20) == "Archive/2019/Projec…"


def stats() -> FolderStats:
    plan = FolderPlan(Folder(("INBOX",)), ("Archive",))
    return FolderStats(plan, copied=3, failed=1, bytes=2048, failures=[("7", "too big")])


def test_a_finished_folder_is_one_line_on_stderr_its_failures_only_in_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    reporter = LineReporter(log)
    reporter.folder_finished(stats())
    reporter.notice("renamed a folder")
    reporter.close()
    assert capsys.readouterr().err.splitlines() == [
        "INBOX -> Archive: 3 copied, 0 skipped, 1 failed, 2.0 KB",
        "migrator: renamed a folder",
    ]
    logged = [line.split(" ", 1)[1] for line in log.read_text().splitlines()]
    assert logged[1] == "failed: INBOX #7: too big" and len(logged) == 3
    assert log.stat().st_mode & 0o777 == 0o600


def test_quiet_prints_nothing_and_a_pipe_gets_lines(capsys: pytest.CaptureFixture[str]) -> None:
    quiet = make_reporter(quiet=True, json_output=False, log_file=None, term="xterm")
    assert isinstance(quiet, QuietReporter)
    quiet.folder_finished(stats())
    # Under pytest stderr is not a terminal: lines, whatever $TERM says.
    lines = make_reporter(quiet=False, json_output=False, log_file=None, term="xterm")
    assert type(lines) is LineReporter
    assert capsys.readouterr().err == ""
