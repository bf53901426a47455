#!/usr/bin/env bash
# THE test command:  bash tests/run.sh [pytest arguments]
#
# Idempotent, from any directory, on a fresh Debian 12 machine:
#   1. installs Dovecot 2.3 (imapd, pop3d) and openssl from Debian if missing, and stops/disables
#      a system dovecot service only if this install started it (the tests run their own private
#      servers on free high ports of 127.0.0.1, see tests/dovecot.py);
#   2. installs the project with its test extra (skip with MIGRATOR_TEST_NO_INSTALL=1);
#   3. runs pytest; its exit code is ours, except that "no tests collected" (5) is a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

dovecot_missing() {
    { command -v dovecot || [ -x /usr/sbin/dovecot ]; } >/dev/null 2>&1 || return 0
    { command -v doveadm || [ -x /usr/bin/doveadm ]; } >/dev/null 2>&1 || return 0
    [ -x /usr/lib/dovecot/imap ] && [ -x /usr/lib/dovecot/pop3 ] || return 0
    return 1
}

system_dovecot_running() {
    local pid
    pid=$(cat /run/dovecot/master.pid 2>/dev/null || true)
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

if dovecot_missing; then
    echo "tests/run.sh: installing Dovecot 2.3 from Debian (dovecot-core dovecot-imapd dovecot-pop3d)"
    was_running=no
    if system_dovecot_running; then was_running=yes; fi
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        dovecot-core dovecot-imapd dovecot-pop3d openssl
    if [ "$was_running" = no ]; then
        # The package may have started the system service (143/993/110/995): stop exactly that one.
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            as_root systemctl stop dovecot.service dovecot.socket >/dev/null 2>&1 || true
            as_root systemctl disable dovecot.service dovecot.socket >/dev/null 2>&1 || true
        else
            as_root update-rc.d dovecot disable >/dev/null 2>&1 || true
        fi
        if system_dovecot_running; then
            as_root doveadm -c /etc/dovecot/dovecot.conf stop >/dev/null 2>&1 ||
                as_root kill "$(cat /run/dovecot/master.pid)" || true
        fi
    fi
fi
dovecot --version >/dev/null

if [ "${MIGRATOR_TEST_NO_INSTALL:-0}" != 1 ]; then
    # A Debian-managed interpreter (PEP 668) refuses pip unless told; a venv or pyenv does not.
    if python3 - <<'EOF'
import sys, sysconfig, pathlib
managed = pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists()
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
EOF
    then
        export PIP_BREAK_SYSTEM_PACKAGES=1
    fi
    python3 -m pip install -q -e '.[test]'
fi

rc=0
python3 -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
