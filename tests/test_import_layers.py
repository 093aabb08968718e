"""The import layers hold, and the check that holds them fails when someone breaks one.

The rules are import-linter contracts in pyproject.toml (``[tool.importlinter]``); scripts/test.sh
runs ``lint-imports`` before the suite. Here the same check runs on the checkout, then on copies
of the package into which one forbidden import has been written: each copy must break exactly
the contract for its rule, naming the import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

CONTRACTS = [
    c["name"]
    for c in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "importlinter"
    ]["contracts"]
]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    # lint-imports puts its working directory first on sys.path, so `plugbus` (and the custom
    # contract in tests/import_layers.py) resolve to the tree under `root`, not the checkout
    # the virtualenv installed in editable mode.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_checkout_keeps_every_contract() -> None:
    proc = lint_imports(ROOT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    for name in CONTRACTS:
        assert f"{name} KEPT" in output, output
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in output, output


# (file to edit, line to add, the contract it must break, what the report must name); every
# other contract stays kept unless ALSO_BROKEN names it.
BREAKS = {
    "core imports a web framework": (
        "plugbus/core/ids.py",
        "import fastapi",
        "core knows nothing of HTTP, of the doors or of the plugins",
        "plugbus.core.ids -> fastapi",
    ),
    "core imports a built-in plugin": (
        "plugbus/core/config.py",
        "from plugbus.plugins import welcome",
        "core knows nothing of HTTP, of the doors or of the plugins",
        "plugbus.core.config -> plugbus.plugins.welcome",
    ),
    "a core import inside a function still counts": (
        "plugbus/core/ids.py",
        "def _f():\n    import socketio",
        "core knows nothing of HTTP, of the doors or of the plugins",
        "plugbus.core.ids -> socketio",
    ),
    "a plugin imports plugbus.core": (
        "plugbus/plugins/welcome.py",
        "from plugbus.core.errors import NotFound",
        "built-in plugins reach plugbus only through the author surface",
        "plugbus.plugins.welcome -> plugbus.core.errors",
    ),
    "a plugin imports the Socket.IO server": (
        "plugbus/plugins/moderation/text.py",
        "import socketio",
        "built-in plugins reach plugbus only through the author surface",
        "plugbus.plugins.moderation.text -> socketio",
    ),
    "a plugin imports another": (
        "plugbus/plugins/relay.py",
        "from plugbus.plugins import rooms",
        "no built-in plugin imports another",
        "plugbus.plugins.relay -> plugbus.plugins.rooms",
    ),
    "the REST door imports a plugin": (
        "plugbus/api/rest_door.py",
        "from plugbus.plugins.moderation import store",
        "the doors reach the built-in plugins only through hooks",
        "plugbus.api.rest_door -> plugbus.plugins.moderation.store",
    ),
    "the author surface imports the app": (
        "plugbus/__init__.py",
        "from plugbus.api.app import create_app",
        "the author surface does not import plugbus.api",
        "plugbus -> plugbus.api.app",
    ),
    "core's modules import each other in a circle": (
        "plugbus/core/errors.py",
        "from plugbus.core import bus",
        "core's modules import each other without a circle",
        ".errors -> .bus",
    ),
    "the test kit imports plugbus.api at import time": (
        "plugbus/testing/client.py",
        "from plugbus.api import wire_json",
        "the CLI entry and the test kit import plugbus.api only inside functions",
        "plugbus.testing.client -> plugbus.api.wire_json",
    ),
    "the CLI entry imports the CLI at import time": (
        "plugbus/__main__.py",
        "from plugbus.api.cli import main",
        "the CLI entry and the test kit import plugbus.api only inside functions",
        "plugbus.__main__ -> plugbus.api.cli",
    ),
}

#: A plugin imported by core is then imported, through core, by everything that imports core.
ALSO_BROKEN = {
    "core imports a built-in plugin": {
        "the doors reach the built-in plugins only through hooks",
        "no built-in plugin imports another",
    },
}


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_forbidden_import_breaks_its_contract(case: str, tmp_path: Path) -> None:
    path, line, contract, shown = BREAKS[case]
    assert contract in CONTRACTS, f"no contract named {contract!r} in pyproject.toml"
    shutil.copytree(
        ROOT / "plugbus",
        tmp_path / "plugbus",
        ignore=shutil.ignore_patterns("__pycache__", "static"),
    )
    (tmp_path / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "import_layers.py", tmp_path / "tests")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    target = tmp_path / path
    target.write_text(target.read_text(encoding="utf-8") + "\n" + line + "\n", encoding="utf-8")

    proc = lint_imports(tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output
    assert f"{contract} BROKEN" in output, output
    for other in CONTRACTS:
        if other != contract and other not in ALSO_BROKEN.get(case, ()):
            assert f"{other} KEPT" in output, f"{case}: {other!r} broke as well\n{output}"
    assert shown in output, output
