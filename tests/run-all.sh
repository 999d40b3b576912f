#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine, then run it.
#   - Debian packages (only those missing): DCMTK, dicom3tools, Orthanc, Chromium (the OHIF
#     viewer test drives it headless; npm's puppeteer-core downloads no browser of its own)
#   - a virtual environment at .venv with dicom-node installed editable plus test extras
# Extra arguments are passed to pytest (e.g. tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v /usr/bin/storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v /usr/bin/dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v /usr/sbin/Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need_apt+=(orthanc-dicomweb)
[ -e /usr/share/java/pixelmed.jar ] || need_apt+=(pixelmed-apps)
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
command -v /usr/bin/openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v pg_ctlcluster >/dev/null 2>&1 || need_apt+=(postgresql)
# The .venv below: a minimal Debian has no python3, and Debian's python3 has no venv module
# without python3-venv (a python3 from elsewhere, pyenv say, brings its own).
if [ ! -x .venv/bin/python ] && ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    need_apt+=(python3 python3-venv)
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ((${#need_apt[@]})); then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
# PostgreSQL: the tests create a fresh database per test as user postgres on
# 127.0.0.1:5432 without a password. A cluster this script had to install gets a trust
# line for that user on loopback only; an existing cluster is left as it is, and started
# if it is down (the outage test stops and starts it).
shopt -s nullglob
clusters=(/etc/postgresql/*/main)
shopt -u nullglob
pg_version=$(printf '%s\n' "${clusters[@]}" | awk -F/ '{print $4}' | sort -V | tail -1)
if [ -z "$pg_version" ]; then
    echo "no PostgreSQL cluster 'main' under /etc/postgresql (Debian's postgresql package makes one)" >&2
    exit 1
fi
if ((${#need_apt[@]})) && [[ " ${need_apt[*]} " == *" postgresql "* ]]; then
    $SUDO sed -i '1i host all postgres 127.0.0.1/32 trust' "/etc/postgresql/$pg_version/main/pg_hba.conf"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$pg_version" main reload 2>/dev/null || true
fi
$SUDO pg_ctlcluster --skip-systemctl-redirect "$pg_version" main status >/dev/null 2>&1 \
    || $SUDO pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start

# The viewer tests run OHIF's parsers (dcmjs 0.52, @cornerstonejs 5) under Node.js: they
# need Node 20 or later. Debian 12's own nodejs is 18, under which dcmjs does not even load
# ("Named export 'constants' not found"); Debian 13 has 20. Say so now, not after 20 minutes.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
    echo "Node.js 20 or later is needed for the viewer tests; found $(node --version 2>/dev/null || echo none)" \
         "(Debian 12's nodejs is 18: install Node 20 from Debian 13 or NodeSource)" >&2
    exit 1
fi

# Orthanc's Debian package starts a system service on port 4242/8042; the tests start
# their own instances on free loopback ports and do not need it.

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"

# pytest exits 5 when it collects no test; with `set -e` that fails this script too.
exec .venv/bin/python -m pytest "$@"
