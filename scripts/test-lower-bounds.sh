#!/usr/bin/env bash
# Test plugbus on the lowest versions pyproject.toml allows, as a plugin author's project
# would get them: a fresh venv (.venv-lower) with every `>=` floor of plugbus's dependencies
# and of its `testing` extra installed exactly, then plugbus itself, then the plugin template
# (examples/plugin-template) and its own tests — a real server, the in-process app, the hook
# recorder — and `plugbus config check` on the shipped config.
#   scripts/test-lower-bounds.sh
# Not part of scripts/test.sh (it downloads the older versions); .ci/run runs it after the suite,
# and run it yourself when a range changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV=.venv-lower
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" 2>&1 | { grep -v '^WARNING: Location' || true; }
# every `name>=X` of the dependencies and the testing extra, pinned to X (markers kept)
"$VENV/bin/python" - > "$VENV/lower.txt" <<'PY'
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["testing"]:
    spec, _, marker = requirement.partition(";")
    match = re.match(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*.*?>=\s*([^,\s]+)", spec)
    if match:
        print(f"{match.group(1)}=={match.group(2)}" + (f"; {marker.strip()}" if marker else ""))
PY
echo "lower bounds:"; sed 's/^/  /' "$VENV/lower.txt"
quiet() { grep -v '^WARNING: Location' || true; }
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$VENV/lower.txt" 2>&1 | quiet
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$VENV/lower.txt" ".[testing]" 2>&1 | quiet
# from a copy: building in place would leave plugbus_echo.egg-info in the checkout, where the
# suite's own tests would find the template's entry point beside the module they load
template="$(mktemp -d)"
cp -r examples/plugin-template/. "$template/"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "$template" 2>&1 | quiet
rm -rf "$template"
echo "installed:"; "$VENV/bin/python" -m pip freeze | grep -iE "^($(sed 's/[=;].*//' "$VENV/lower.txt" | paste -sd'|'))==" | sed 's/^/  /'
"$VENV/bin/plugbus" config check config.yaml
# From a directory outside the checkout, so that the installed plugbus is the one imported.
run="$(mktemp -d)"
cp -r examples/plugin-template/tests "$run/tests"
cp examples/plugin-template/pyproject.toml "$run/"
(cd "$run" && env -u PYTHONPATH "$OLDPWD/$VENV/bin/python" -m pytest -p no:cacheprovider -q tests)
rm -rf "$run"
