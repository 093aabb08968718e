"""Small third-party-style plugins for the in-process hook-semantics tests.

Each module imports only from ``plugbus`` (plus the standard library and pydantic), as an
installed plugin would, and is loaded by dotted path through ``plugins.modules``.
"""
