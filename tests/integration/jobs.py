"""Running migrator the way users do: as a separate process, with secrets in the environment."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def migrator_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "migrator", *args]


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIGRATOR_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    env.update(extra)
    return env


@dataclass
class Job:
    """One copy job between two endpoints, with its own journal under ``state``."""

    source: str
    target: str
    state: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    @classmethod
    def between(cls, src: Any, dst: Any, state: Path, *, scheme: str = "imaps") -> Job:
        """An IMAP-to-IMAP job between two test accounts (tests/integration/conftest.py)."""
        return cls(
            src.url(scheme) if hasattr(src, "url") else src,
            dst.url(scheme) if hasattr(dst, "url") else dst,
            state,
            env=base_env(
                MIGRATOR_SOURCE_PASSWORD=getattr(src, "password", ""),
                MIGRATOR_TARGET_PASSWORD=getattr(dst, "password", ""),
            ),
            args=[
                *(["--source-ca-file", str(src.server.ca_file)] if hasattr(src, "server") else []),
                *(["--target-ca-file", str(dst.server.ca_file)] if hasattr(dst, "server") else []),
            ],
        )

    def cmd(self, *extra: str, command: str = "copy") -> list[str]:
        return migrator_cmd(
            command, self.source, self.target, "--state", str(self.state), *self.args, *extra
        )

    def run(self, *extra: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.cmd(*extra),
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            **kw,
        )

    def run_json(self, *extra: str, expect: int = 0) -> dict[str, Any]:
        result = self.run("--json", *extra)
        assert result.returncode == expect, result.stderr
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.cmd(*extra),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )


def run_in_pty(cmd: list[str], env: dict[str, str], timeout: float = 120) -> bytes:
    """Run with stderr (and stdout) on a pseudo-terminal, as in a real terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    return out
