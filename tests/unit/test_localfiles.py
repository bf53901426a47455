"""Byte helpers shared by the mbox and Maildir stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from migrator.stores import localfiles
from migrator.stores.localfiles import to_lf, write_parts
from tests.unit.archive_helpers import spliced

line_bytes = spliced([b"a", b"\r", b"\n", b"\r\n", b"From ", b"\r\r\n"])


@given(line_bytes | st.binary())
def test_to_lf_turns_exactly_each_crlf_into_lf(data: bytes) -> None:
    assert to_lf(data) == b"\n".join(data.split(b"\r\n"))


def test_to_lf_keeps_bare_crs() -> None:
    assert to_lf(b"a\r\nb\rc\r\r\nd\n\r") == b"a\nb\rc\r\nd\n\r"


@given(
    st.lists(st.binary(max_size=300), max_size=40),
    st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=20),
)
def test_write_parts_writes_every_byte_in_order_despite_short_writes(
    parts: list[bytes], limits: list[int]
) -> None:
    """The kernel may take less than asked; what it leaves is written next, in order."""
    real = os.writev
    calls = iter(limits * 1000)

    def short_writev(fd: int, buffers: list[bytes]) -> int:
        # Take at most `limit` bytes of what was offered, as a full pipe or a signal would.
        wanted = b"".join(bytes(b) for b in buffers)[: next(calls)]
        return real(fd, [wanted])

    read_end, write_end = os.pipe()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(localfiles.os, "writev", short_writev)
            expected = b"".join(parts)  # at most 12 kB: the pipe holds it all
            write_parts(write_end, parts)
        os.close(write_end)
        write_end = -1
        got = b""
        while chunk := os.read(read_end, 65536):
            got += chunk
        assert got == expected
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


def test_write_parts_to_a_file(tmp_path: Path) -> None:
    parts = [b"x" * n for n in (0, 1, 5000, 0, 70000)] * 600  # more parts than one writev takes
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        write_parts(fd, parts)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"".join(parts)
