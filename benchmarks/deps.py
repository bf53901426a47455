"""What the benchmark needs from the machine, checked up front; nothing is installed here.

Each requirement names the Debian packages that provide it, so a missing one is reported with the
exact ``apt-get install`` line to run, and the peers that need it are skipped with that note.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAPSYNC = REPO.parent / "shared" / "tools" / "imapsync" / "imapsync"
TIME = "/usr/bin/time"

#: imapsync's Perl dependencies, as ../shared/tools/README.md lists them (Debian 12 packages).
IMAPSYNC_PACKAGES = [
    "libauthen-ntlm-perl",
    "libcgi-pm-perl",
    "libcrypt-openssl-rsa-perl",
    "libdata-uniqid-perl",
    "libdigest-hmac-perl",
    "libencode-imaputf7-perl",
    "libfile-copy-recursive-perl",
    "libfile-tail-perl",
    "libio-socket-inet6-perl",
    "libio-socket-ssl-perl",
    "libio-tee-perl",
    "libhtml-parser-perl",
    "libjson-webtoken-perl",
    "libmail-imapclient-perl",
    "libparse-recdescent-perl",
    "libproc-processtable-perl",
    "libmodule-scandeps-perl",
    "libreadonly-perl",
    "libregexp-common-perl",
    "libsys-meminfo-perl",
    "libterm-readkey-perl",
    "libunicode-string-perl",
    "liburi-perl",
    "libwww-perl",
]
DOVECOT_PACKAGES = ["dovecot-core", "dovecot-imapd", "dovecot-pop3d"]


@dataclass
class Check:
    """The outcome of one requirement: ok, or what is missing and how to get it."""

    name: str
    ok: bool
    detail: str = ""  # version found, or what is wrong
    packages: list[str] = field(default_factory=list)  # Debian packages to install
    pip: list[str] = field(default_factory=list)  # PyPI packages to install

    def remedy(self) -> str:
        """The exact command(s) that would fix it."""
        lines = []
        if self.packages:
            lines.append(
                "apt-get update && apt-get install -y --no-install-recommends "
                + " ".join(self.packages)
            )
        if self.pip:
            lines.append(f"{sys.executable} -m pip install " + " ".join(self.pip))
        return "\n".join(lines)


def _missing_debs(packages: list[str]) -> list[str] | None:
    """The packages dpkg does not have installed; None when there is no dpkg to ask."""
    if shutil.which("dpkg-query") is None:
        return None
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", *packages],
        capture_output=True,
        text=True,
        timeout=60,
    )
    installed = {line.split()[0] for line in res.stdout.splitlines() if line.split()[1:2] == ["ii"]}
    return [p for p in packages if p not in installed]


def _run(argv: list[str], timeout: float = 60) -> tuple[int, str]:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return res.returncode, (res.stdout + res.stderr).strip()


def check_dovecot() -> Check:
    """Two private Dovecot 2.3 servers are the whole set-up: without them nothing runs."""
    if os.geteuid() != 0:
        return Check("dovecot", False, "must run as root (Dovecot switches to the mail uid)")
    missing = _missing_debs(DOVECOT_PACKAGES) or []
    try:
        from tests.dovecot import check_dovecot as probe

        version = ".".join(map(str, probe()))
    except Exception as exc:  # DovecotUnavailable, or tests/ not importable
        return Check("dovecot", False, str(exc), missing or DOVECOT_PACKAGES)
    if missing:
        return Check("dovecot", False, f"{version}, but {' '.join(missing)} missing", missing)
    return Check("dovecot", True, version)


def check_time() -> Check:
    """GNU time gives every peer's peak RSS ("Maximum resident set size")."""
    if os.access(TIME, os.X_OK):
        return Check("/usr/bin/time", True, "GNU time")
    return Check("/usr/bin/time", False, "not installed", ["time"])


def check_trustme() -> Check:
    """tests/dovecot.py makes the throw-away CA with trustme."""
    if importlib.util.find_spec("trustme") is not None:
        return Check("trustme", True, "python module")
    return Check("trustme", False, "python module missing", pip=["trustme"])


def check_imapsync(path: Path) -> Check:
    """The upstream script plus its Perl modules from Debian."""
    if not path.is_file():
        return Check("imapsync", False, f"{path} not found (pass --imapsync PATH)")
    missing = _missing_debs(IMAPSYNC_PACKAGES)
    if missing:
        return Check("imapsync", False, "Perl modules missing", missing)
    rc, out = _run(["perl", str(path), "--version", "--nodockercontext", "--nolog"])
    if rc != 0:
        return Check("imapsync", False, out.splitlines()[-1] if out else f"exit {rc}", [])
    return Check("imapsync", True, out.splitlines()[-1])


def check_mbsync() -> Check:
    """mbsync comes from Debian's isync."""
    exe = shutil.which("mbsync")
    if exe is None:
        return Check("mbsync", False, "not installed", ["isync"])
    rc, out = _run([exe, "--version"])
    return Check("mbsync", rc == 0, out.split()[-1] if out else f"exit {rc}")


def check_migrator() -> Check:
    """The tool under test, run from this checkout (``python3 -m migrator``)."""
    rc, out = _run([sys.executable, "-m", "migrator", "--version"])
    if rc != 0:
        return Check("migrator", False, out.splitlines()[-1] if out else f"exit {rc}")
    return Check("migrator", True, out.split()[-1])


def check_store(module: str) -> Check:
    """An optional migrator store (mbox, pop3) exists in this checkout."""
    path = REPO / "migrator" / "stores" / f"{module}.py"
    if path.exists():
        return Check(f"migrator {module} store", True, str(path.relative_to(REPO)))
    return Check(f"migrator {module} store", False, f"{path.relative_to(REPO)} does not exist")


def check_all(imapsync: Path) -> dict[str, Check]:
    """Every check, by the name the peers refer to."""
    checks: dict[str, Callable[[], Check]] = {
        "dovecot": check_dovecot,
        "time": check_time,
        "trustme": check_trustme,
        "imapsync": lambda: check_imapsync(imapsync),
        "mbsync": check_mbsync,
        "migrator": check_migrator,
        "mbox": lambda: check_store("mbox"),
        "pop3": lambda: check_store("pop3"),
    }
    return {name: fn() for name, fn in checks.items()}
