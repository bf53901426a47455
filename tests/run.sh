#!/usr/bin/env bash
# THE test command:  bash tests/run.sh [pytest arguments]
#
# Idempotent, from any directory, on a fresh Debian 12 or Ubuntu machine:
#   1. installs Dovecot 2.3 (imapd, pop3d) and openssl from Debian if missing, and stops/disables
#      a system dovecot service only if this install started it (the tests run their own private
#      servers on free high ports of 127.0.0.1, see tests/dovecot.py);
#   2. makes the checkout's own virtual environment, .venv/ (git-ignored), and installs the package
#      with its `test` extra there: the machine's Python is never changed. The environment is
#      reused while pyproject.toml and the interpreter stay the same, and made anew otherwise;
#   3. checks the package with ruff and mypy, then runs pytest; "no tests collected" (5) is a
#      failure.
#
# MIGRATOR_TEST_PYTHON names the interpreter to build the environment from (default: python3),
# e.g. MIGRATOR_TEST_PYTHON=python3.13; each interpreter gets its own environment (.venv-3.13).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo -n "$@"; fi
}

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        as_root apt-get update -q
        apt_updated=yes
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
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

install_dovecot() {
    echo "tests/run.sh: installing Dovecot 2.3 from Debian (dovecot-core dovecot-imapd dovecot-pop3d)"
    local was_running=no
    if system_dovecot_running; then was_running=yes; fi
    apt_install dovecot-core dovecot-imapd dovecot-pop3d openssl
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
}

# Cyrus IMAP 3.6 for the server matrix (tests/cyrus.py; see its docstring). Debian's cyrus-imapd,
# the package holding imapd, conflicts with dovecot-imapd (both provide imap-server): it is NEVER
# installed. cyrus-common (master, ctl_cyrusdb), cyrus-admin and sasl2-bin are, without
# recommends and with removals forbidden; imapd is unpacked from its .deb, of the same version,
# into MIGRATOR_CYRUS_CACHE (default /var/cache/migrator-tests), where tests/cyrus.py finds it.
# No system service is started: a policy-rc.d refuses starts during the install when none is
# there, and what the packages enabled is disabled again.
ensure_cyrus() {
    local cache=${MIGRATOR_CYRUS_CACHE:-/var/cache/migrator-tests}
    if ! [ -x /usr/sbin/cyrmaster ] || ! command -v saslpasswd2 >/dev/null 2>&1 ||
        ! [ -x /usr/lib/cyrus/bin/ctl_cyrusdb ]; then
        echo "tests/run.sh: installing cyrus-common cyrus-admin sasl2-bin (never cyrus-imapd)"
        if [ "$apt_updated" = no ]; then as_root apt-get update -q; apt_updated=yes; fi
        if as_root apt-get -s install --no-install-recommends cyrus-common cyrus-admin sasl2-bin |
            grep '^Remv'; then
            echo "tests/run.sh: installing Cyrus would remove the packages above: stopping" >&2
            exit 2
        fi
        local policy=/usr/sbin/policy-rc.d made_policy=no
        if ! [ -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
            as_root chmod 0755 "$policy"
            made_policy=yes
        fi
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            --no-remove cyrus-common cyrus-admin sasl2-bin || { [ "$made_policy" = no ] ||
            as_root rm -f "$policy"; exit 2; }
        if [ "$made_policy" = yes ]; then as_root rm -f "$policy"; fi
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            as_root systemctl disable --now cyrus-imapd.service exim4.service >/dev/null 2>&1 || true
        fi
    fi
    local version
    version=$(dpkg-query -W -f='${Version}' cyrus-common)
    local dir="$cache/cyrus-imapd-$version"
    if ! [ -x "$dir/x/usr/lib/cyrus/bin/imapd" ]; then
        echo "tests/run.sh: unpacking imapd from cyrus-imapd $version into $dir (not installed)"
        as_root rm -rf "$dir"
        as_root mkdir -p "$dir"
        (cd "$dir" && as_root apt-get download -q "cyrus-imapd=$version" 2>&1 |
            grep -v 'unsandboxed' || true)
        if ! ls "$dir"/cyrus-imapd_*.deb >/dev/null 2>&1; then
            echo "tests/run.sh: could not download cyrus-imapd=$version (apt-get download)" >&2
            exit 2
        fi
        as_root dpkg-deb -x "$dir"/cyrus-imapd_*.deb "$dir/x"
        as_root chmod 0755 "$cache" "$dir"
    fi
}

if dovecot_missing; then install_dovecot; fi
dovecot --version >/dev/null
ensure_cyrus

# -- the checkout's own virtual environment ------------------------------------------------------
python=${MIGRATOR_TEST_PYTHON:-python3}
command -v "$python" >/dev/null || { echo "tests/run.sh: no $python on PATH" >&2; exit 2; }
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -n "${MIGRATOR_TEST_PYTHON:-}" ]; then venv=".venv-$version"; else venv=".venv"; fi

# What the environment was built from: the interpreter and the package's declared dependencies.
stamp_of() {
    { "$python" -c 'import sys; print(sys.executable, sys.version)'; cat pyproject.toml; } |
        sha256sum | cut -d' ' -f1
}
stamp=$(stamp_of)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.migrator-stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "tests/run.sh: making $venv from $python ($version) and installing .[test] into it"
    rm -rf "$venv"
    if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv's pip bootstrap apart (python3-venv / python3.X-venv).
        rm -rf "$venv"
        apt_install "python$version-venv" || apt_install python3-venv
        "$python" -m venv "$venv"
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$stamp" >"$venv/.migrator-stamp"
fi
# Nothing from outside the environment: no user site-packages, no PYTHONPATH from the caller.
export PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME
export PATH="$PWD/$venv/bin:$PATH"

# -- static checks, then the suite ---------------------------------------------------------------
"$venv/bin/python" -m ruff check --quiet migrator tests benchmarks
"$venv/bin/python" -m ruff format --check --quiet migrator tests benchmarks
"$venv/bin/python" -m mypy --no-error-summary migrator

rc=0
"$venv/bin/python" -m pytest -q "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    echo "tests/run.sh: pytest collected no tests: failing" >&2
    exit 1
fi
exit "$rc"
