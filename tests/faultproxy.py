"""A fault-injecting TCP proxy for the tests: migrator on one side, a private Dovecot on the other.

Loopback only (it listens on 127.0.0.1 and refuses an upstream that is not a loopback address),
bounded in time (every thread is a daemon, every socket has a short timeout, and a watchdog
closes everything at ``lifetime`` seconds), and it stops by itself. Typical use::

    with FaultProxy(server.imaps_port) as proxy:
        proxy.cut_every("down", 200_000)        # each connection dies after 200 kB from the server
        run migrator against 127.0.0.1:proxy.port

Faults, each one a rule that can fire a limited number of ``times`` (None: every time):

* ``cut_every(direction, nbytes)``: close both sides once a connection has carried ``nbytes``
  in that direction ("up": client to server, "down": server to client); exactly ``nbytes`` are
  forwarded first. A new connection starts counting from zero, so this cuts repeatedly.
* ``stall(direction, after, seconds)``: once ``after`` bytes went through, forward nothing more
  for ``seconds`` (the connection stays open, silent: what a hung server looks like).
* ``bye_on(pattern)``: when the client sends a command containing ``pattern``, do not forward
  it; answer ``* BYE ...`` and close, as a server shutting down does (plaintext only).
* ``reset_in_literal(direction, into)``: once an IMAP literal (``{n}`` / ``{n+}``) in that
  direction is ``into`` bytes in, reset the connection (SO_LINGER 0: a TCP RST, buffered data
  dropped) in the middle of the literal (plaintext only).
* ``refuse_for(seconds)``: close the listening socket, so new connections are refused, and
  listen again on the same port afterwards; connections already open are not touched.
* ``throttle(direction, rate)``: forward at most ``rate`` bytes a second per connection (slow
  links, so that a test can interrupt a copy in the middle).
* ``drop_all()``: close every open connection now (what a killed process's sockets carry no
  further).

TLS passes through untouched, so byte counts and cuts work on imaps/pop3s as well; the faults
that read the protocol (BYE, literals) need a plaintext upstream (Dovecot's no-STARTTLS ports,
``?tls=none`` on migrator's side). ``events`` records what was done, for the test's messages.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultProxy", "LiteralTracker"]

DIRECTIONS = ("up", "down")
_TICK = 0.25  # how often blocked threads look at the clock and the stop flag
_LITERAL_END = re.compile(rb"~?\{(\d{1,12})\+?\}\r\n$")


class LiteralTracker:
    """Follows an IMAP byte stream (either direction) well enough to know when it is inside a
    literal: a line ending in ``{n}`` or ``{n+}`` announces n bytes of literal data."""

    def __init__(self) -> None:
        self.remaining = 0  # bytes of literal still to come
        self.done = 0  # bytes of the current literal already seen
        self._line = b""  # the end of the current line (enough to see "{123+}\r\n")

    def feed(self, data: bytes, into: int | None = None) -> int | None:
        """Consume ``data``; with ``into``, stop at the first offset in ``data`` where the stream
        is ``into`` bytes inside a literal (not at its end) and return that offset."""
        pos = 0
        while pos < len(data):
            if self.remaining:
                take = min(self.remaining, len(data) - pos)
                if into is not None and self.done < into and self.done + take >= into:
                    step = into - self.done
                    if step < self.remaining:
                        self.remaining -= step
                        self.done += step
                        return pos + step
                self.remaining -= take
                self.done += take
                pos += take
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line = (self._line + data[pos:])[-40:]
                return None
            self._line = (self._line + data[pos : end + 1])[-40:]
            pos = end + 1
            match = _LITERAL_END.search(self._line)
            self._line = b""
            if match:
                self.remaining, self.done = int(match[1]), 0
        return None


@dataclass
class _Rule:
    kind: str  # "cut", "stall", "reset"
    direction: str
    after: int
    times: int | None
    seconds: float = 0.0

    def take(self) -> bool:
        """Use one firing; False when none is left."""
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass(eq=False)
class _Conn:
    n: int
    client: socket.socket
    server: socket.socket
    sent: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DIRECTIONS, 0))
    closed: threading.Event = field(default_factory=threading.Event)
    stalled: set[int] = field(default_factory=set)  # ids of stall rules fired on it


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        *,
        upstream_host: str = "127.0.0.1",
        lifetime: float = 600.0,
    ) -> None:
        if not ipaddress.ip_address(upstream_host).is_loopback:
            raise ValueError(f"FaultProxy only forwards to loopback, not {upstream_host}")
        self.upstream = (upstream_host, upstream_port)
        self.lifetime = lifetime
        self.deadline = time.monotonic() + lifetime
        self.listener: socket.socket | None = self._listen(0)
        self.port: int = self.listener.getsockname()[1]
        self.host = "127.0.0.1"
        self.forwarded = dict.fromkeys(DIRECTIONS, 0)
        self.connections = 0
        self.cuts = 0
        self.events: list[str] = []
        self._rules: list[_Rule] = []
        self._bye: list[tuple[bytes, bytes, list[int | None]]] = []
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._refusing_until = 0.0
        self._threads: list[threading.Thread] = []
        self._rates: dict[str, float] = {}

    # -- configuration -----------------------------------------------------------------------

    def cut_every(self, direction: str, nbytes: int, times: int | None = None) -> FaultProxy:
        self._rules.append(_Rule("cut", _check(direction), nbytes, times))
        return self

    def stall(
        self, direction: str, after: int, seconds: float, times: int | None = 1
    ) -> FaultProxy:
        self._rules.append(_Rule("stall", _check(direction), after, times, seconds))
        return self

    def reset_in_literal(
        self, direction: str = "down", into: int = 1000, times: int | None = 1
    ) -> FaultProxy:
        self._rules.append(_Rule("reset", _check(direction), into, times))
        return self

    def bye_on(
        self,
        pattern: bytes,
        times: int | None = 1,
        text: bytes = b"* BYE Server shutting down (fault injected)\r\n",
    ) -> FaultProxy:
        self._bye.append((pattern, text, [times]))
        return self

    def throttle(self, direction: str, rate: float | None) -> FaultProxy:
        with self._lock:
            if rate is None:
                self._rates.pop(_check(direction), None)
            else:
                self._rates[_check(direction)] = rate
        return self

    def clear(self) -> None:
        """Remove every rule (connections go on untouched)."""
        with self._lock:
            self._rules.clear()
            self._bye.clear()

    def refuse_for(self, seconds: float) -> None:
        """Refuse new connections for ``seconds`` (the port is closed), then accept again."""
        with self._lock:
            listener, self.listener = self.listener, None
            self._refusing_until = time.monotonic() + seconds
        _stop_listening(listener)
        self._log(f"refusing connections for {seconds:g}s")

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self._spawn(self._accept, "faultproxy-accept")
        self._spawn(self._watchdog, "faultproxy-watchdog")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            listener, self.listener = self.listener, None
        _stop_listening(listener)
        self.drop_all()
        for thread in list(self._threads):
            if thread is not threading.current_thread():
                thread.join(2 * _TICK + 1)

    def drop_all(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            self._close(conn)

    def _spawn(self, target, name: str, *args: object) -> None:  # type: ignore[no-untyped-def]
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _watchdog(self) -> None:
        while not self._stopping.wait(_TICK):
            if time.monotonic() > self.deadline:
                self._log(f"lifetime of {self.lifetime:g}s is over: closing")
                self.close()
                return

    def _log(self, text: str) -> None:
        with self._lock:
            self.events.append(text)

    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.settimeout(_TICK)
        return sock

    def _accept(self) -> None:
        while not self._stopping.is_set():
            listener = self.listener
            if listener is None:
                if self._refusing_until and time.monotonic() >= self._refusing_until:
                    try:
                        new = self._listen(self.port)
                    except OSError:
                        time.sleep(0.05)
                        continue
                    with self._lock:
                        self.listener, self._refusing_until = new, 0.0
                    self._log("accepting connections again")
                else:
                    time.sleep(0.02)
                continue
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if listener is self.listener and not self._stopping.is_set():
                    time.sleep(0.02)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError as exc:
                self._log(f"upstream unreachable: {exc}")
                client.close()
                continue
            for s in (client, server):
                s.settimeout(_TICK)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                conn = _Conn(self.connections, client, server)
                self._conns = [c for c in self._conns if not c.closed.is_set()]
                self._conns.append(conn)
            for direction in DIRECTIONS:
                self._spawn(self._pump, f"faultproxy-{conn.n}-{direction}", conn, direction)

    # -- the faults --------------------------------------------------------------------------

    def _close(self, conn: _Conn, reset: bool = False) -> None:
        if conn.closed.is_set():
            return
        conn.closed.set()
        for s in (conn.client, conn.server):
            if reset:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _cut(self, conn: _Conn, why: str, reset: bool = False) -> None:
        with self._lock:
            self.cuts += 1
            self.events.append(f"connection {conn.n}: {why}")
        self._close(conn, reset=reset)

    def _bye_match(self, data: bytes) -> bytes | None:
        with self._lock:
            for pattern, text, times in self._bye:
                if pattern in data and (times[0] is None or times[0] > 0):
                    if times[0] is not None:
                        times[0] -= 1
                    return text
        return None

    def _next_limit(self, conn: _Conn, direction: str, size: int) -> tuple[int, _Rule | None]:
        """How many bytes of the next ``size`` may go before a byte-count rule fires."""
        done = conn.sent[direction]
        best: tuple[int, _Rule | None] = (size, None)
        with self._lock:
            rules = [r for r in self._rules if r.direction == direction and r.kind != "reset"]
        for rule in rules:
            if rule.kind == "stall" and id(rule) in conn.stalled:
                continue
            if rule.times is not None and rule.times <= 0:
                continue
            room = max(rule.after - done, 0)
            if room < best[0] or (room == best[0] and best[1] is None):
                best = (room, rule)
        return best

    def _pump(self, conn: _Conn, direction: str) -> None:
        up = direction == "up"
        src, dst = (conn.client, conn.server) if up else (conn.server, conn.client)
        tracker = LiteralTracker()
        try:
            while not conn.closed.is_set() and not self._stopping.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    return
                if up and self._bye:
                    text = self._bye_match(data)
                    if text is not None:
                        with contextlib.suppress(OSError):
                            conn.client.sendall(text)
                        self._cut(conn, f"BYE instead of {data[:60]!r}")
                        return
                fed = False
                while data and not conn.closed.is_set():
                    data, fed = self._forward(conn, direction, dst, tracker, data, fed)
        finally:
            if conn.closed.is_set() or self._stopping.is_set():
                self._close(conn)

    def _forward(
        self,
        conn: _Conn,
        direction: str,
        dst: socket.socket,
        tracker: LiteralTracker,
        data: bytes,
        fed: bool,
    ) -> tuple[bytes, bool]:
        """Forward some of ``data`` applying the rules; return what is left to forward and
        whether the literal tracker has already seen it."""
        if not fed:
            with self._lock:
                resets = [
                    r
                    for r in self._rules
                    if r.kind == "reset" and r.direction == direction and r.times != 0
                ]
            at = tracker.feed(data, into=resets[0].after if resets else None)
            if at is not None:
                with self._lock:
                    fire = resets[0].take()
                self._send(conn, direction, dst, data[:at])
                if fire:
                    self._cut(conn, f"reset {tracker.done} bytes into a literal", reset=True)
                    return b"", True
                return data[at:], False
        limit, rule = self._next_limit(conn, direction, len(data))
        if rule is None:
            self._send(conn, direction, dst, data)
            return b"", True
        self._send(conn, direction, dst, data[:limit])
        with self._lock:
            fire = rule.take()
        if not fire:
            return data[limit:], True
        if rule.kind == "cut":
            self._cut(conn, f"cut after {conn.sent[direction]} bytes {direction}")
            return b"", True
        conn.stalled.add(id(rule))
        self._log(f"connection {conn.n}: stalled {direction} for {rule.seconds:g}s")
        end = time.monotonic() + rule.seconds
        while time.monotonic() < end and not conn.closed.is_set() and not self._stopping.is_set():
            time.sleep(min(_TICK, max(0.0, end - time.monotonic())))
        return data[limit:], True

    def _send(self, conn: _Conn, direction: str, dst: socket.socket, data: bytes) -> None:
        if not data:
            return
        view = memoryview(data)
        while view and not conn.closed.is_set():
            try:
                n = dst.send(view[:16384] if self._rates else view)
            except TimeoutError:
                if self._stopping.is_set():
                    return
                continue
            except OSError:
                self._close(conn)
                return
            view = view[n:]
            conn.sent[direction] += n
            with self._lock:
                self.forwarded[direction] += n
                rate = self._rates.get(direction)
            if rate:
                time.sleep(min(n / rate, 5.0))


def _stop_listening(listener: socket.socket | None) -> None:
    """Stop listening at once: shutdown() wakes a thread blocked in accept() (a bare close()
    would leave the port listening until that accept() returns)."""
    if listener is None:
        return
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        listener.close()


def _check(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'up' or 'down', not {direction!r}")
    return direction
