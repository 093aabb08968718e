#!/usr/bin/env bash
# Install plugbus into .venv (when needed) and serve it with the embedded default config.
#   scripts/serve.sh [plugbus serve args...]     e.g. --config my.yaml --port 8000
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt . 2>&1 | grep -v '^WARNING: Location' || true
exec .venv/bin/plugbus serve "$@"
