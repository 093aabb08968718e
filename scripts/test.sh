#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   scripts/test.sh [pytest args...]        (two pytest-xdist workers per core)
# Creates .venv (Python >= 3.11) when missing, installs plugbus with its test extras at the exact
# versions of constraints.txt (pyproject.toml declares ranges) and runs pytest. Under CI=true a
# missing component is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"

apt_updated=""
# Install Debian packages that are missing; we run as root on the project's machines.
apt_install() {
  if [ -z "$apt_updated" ]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import plugbus, pytest, socketio, httpx, aiohttp, playwright, hypothesis, schemathesis" || {
  echo "scripts/test.sh: the test environment is incomplete (see pip's output above)" >&2
  exit 1
}

# The official JavaScript client for the interop tests (Node >= 20 and npm from Debian when missing).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  apt_install nodejs npm
fi
if [ ! -d tests/interop/node_modules/socket.io-client ] \
   || [ tests/interop/package-lock.json -nt tests/interop/node_modules/.package-lock.json ]; then
  (cd tests/interop && npm ci --no-audit --no-fund --loglevel=error)
fi

# Node's socket.io server, for the benchmark's smoke test (bench/).
if [ ! -d bench/servers/node/node_modules/socket.io ] \
   || [ bench/servers/node/package-lock.json -nt bench/servers/node/node_modules/.package-lock.json ]; then
  (cd bench/servers/node && npm ci --no-audit --no-fund --loglevel=error)
fi

# A real browser for the chat page tests: Debian's chromium (Playwright drives it; no download).
if [ ! -x /usr/bin/chromium ]; then
  apt_install chromium
fi
# A real Redis for the multi-node tests (each test starts its own on a free port).
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
# Redis Sentinel for the failover tests (tests/test_redis_ha.py).
if ! command -v redis-sentinel >/dev/null 2>&1; then
  apt_install redis-sentinel
fi

# Lint, format, types and import layers first: cheap, and a failure here is a failure of the run. Skipped only
# when pytest is asked for a subset (arguments given) and PLUGBUS_LINT is not 1.
if [ "$#" -eq 0 ] || [ "${PLUGBUS_LINT:-}" = "1" ]; then
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  .venv/bin/mypy
  .venv/bin/lint-imports --no-logo
fi

# Two workers per core (pytest-xdist; PLUGBUS_TEST_WORKERS=0 runs in this process): most tests
# spend their time waiting on servers, clients and timers, so two per core fill the waits
# (measured on 2 cores: 4 workers 3:09, 2 workers 4:02, 6 workers 3:27). A module's tests stay
# on one worker so that its shared servers start once; pytest's own -n or --dist given later win.
exec .venv/bin/python -m pytest -n "${PLUGBUS_TEST_WORKERS:-$((2 * $(nproc)))}" --dist loadscope "$@"
