"""Plugins loaded by dotted path (``plugins.modules``) in the tests; they import only plugbus."""
