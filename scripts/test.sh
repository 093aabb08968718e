#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   scripts/test.sh [pytest args...]
# Creates .venv (Python >= 3.11) when missing, installs plugbus with its test extras (pinned in
# pyproject.toml) and runs pytest. Under CI=true a missing component is an error, never a skip.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test]" 2>&1 | grep -v '^WARNING: Location' || true
.venv/bin/python -c "import plugbus, pytest, socketio, httpx, aiohttp" || {
  echo "scripts/test.sh: the test environment is incomplete (see pip's output above)" >&2
  exit 1
}

exec .venv/bin/python -m pytest "$@"
