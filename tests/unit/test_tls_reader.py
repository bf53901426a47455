"""The TLS sockets of make_ssl_context: their binary files read TLS records directly (no SocketIO
in between) and must give the same bytes, lines and end of stream as the socket's own files."""

from __future__ import annotations

import io
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from migrator.endpoints import make_ssl_context
from migrator.stores.tls import BufferedTlsSocket


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    ca = trustme.CA()
    ca_file = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    return ca_file, server


@contextmanager
def served(
    tls: tuple[Path, ssl.SSLContext], records: list[bytes], close_notify: bool = True
) -> Iterator[ssl.SSLSocket]:
    """A client TLS socket from make_ssl_context, connected to a thread that sends ``records``
    (one TLS record each) and then closes, with or without close_notify."""
    ca_file, server_context = tls
    ours, theirs = socket.socketpair()

    def serve() -> None:
        with server_context.wrap_socket(theirs, server_side=True) as conn:
            for record in records:
                conn.sendall(record)
            if close_notify:
                # unwrap() sends close_notify, then waits for the client's, which never comes.
                with suppress(OSError):
                    conn.unwrap()
            else:
                socket.socket(fileno=conn.detach()).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = make_ssl_context(ca_file, insecure=False).wrap_socket(
        ours, server_hostname="localhost"
    )
    try:
        client.settimeout(10)
        yield client
    finally:
        client.close()
        thread.join(10)


def test_contexts_make_buffered_tls_sockets(tls: tuple[Path, ssl.SSLContext]) -> None:
    with served(tls, [b"* OK ready\r\n"]) as client:
        assert isinstance(client, BufferedTlsSocket)
        file = client.makefile("rb")
        assert isinstance(file, io.BufferedReader)
        assert file.readline() == b"* OK ready\r\n"
        assert file.read(10) == b""


@settings(max_examples=25, deadline=None)
@given(
    records=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
    reads=st.lists(st.integers(min_value=-1, max_value=5000), max_size=12),
    close_notify=st.booleans(),
)
def test_reads_return_the_bytes_sent(
    tls: tuple[Path, ssl.SSLContext], records: list[bytes], reads: list[int], close_notify: bool
) -> None:
    """Reads of any size, line reads (-1 in ``reads``) and peeks, across record boundaries,
    give back exactly the bytes sent, then the end of the stream."""
    sent = b"".join(records)
    with served(tls, records, close_notify) as client:
        file = client.makefile("rb", buffering=512)
        got = b""
        for n in reads:
            assert sent[len(got) :].startswith(file.peek(1)[:1])
            got += file.readline() if n < 0 else file.read(n)
        got += file.read()
        assert got == sent
        assert file.read(1) == b""


def test_text_and_unbuffered_files_still_work(tls: tuple[Path, ssl.SSLContext]) -> None:
    with served(tls, [b"first line\r\n", b"second"]) as client:
        with client.makefile("rb", buffering=0) as raw:
            assert not isinstance(raw, io.BufferedReader)
            buffer = bytearray(100)
            count = raw.readinto(buffer)
            assert buffer[:count] == b"first line\r\n"
        with client.makefile("r", encoding="ascii", newline="") as text:
            assert text.read() == "second"
