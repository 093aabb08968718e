"""``python -m plugbus`` runs the ``plugbus`` command."""

import sys

from plugbus.api.cli import main

sys.exit(main())
