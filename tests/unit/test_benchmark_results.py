"""benchmarks/run.py: a run stopped early never overwrites the last complete table."""

from __future__ import annotations

from pathlib import Path

from benchmarks.run import write_results


def test_interrupted_run_writes_beside_the_latest_table(tmp_path: Path) -> None:
    write_results(tmp_path, {"runs": [1]}, "complete\n")
    stem = write_results(tmp_path, {"runs": [], "interrupted": "signal 15"}, "partial\n")
    assert stem == tmp_path / "interrupted"
    assert (tmp_path / "latest.md").read_text() == "complete\n"
    assert (tmp_path / "interrupted.md").read_text() == "partial\n"
    assert '"interrupted": "signal 15"' in (tmp_path / "interrupted.json").read_text()
