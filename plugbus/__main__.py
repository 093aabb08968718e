"""``python -m plugbus`` runs the ``plugbus`` command."""

import sys


def _run() -> int:
    # The CLI lives in plugbus.api; importing it only when the command runs keeps the rule that
    # nothing outside plugbus.api imports it at import time (pyproject.toml's import layers).
    from plugbus.api.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_run())
