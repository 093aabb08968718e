"""pytest plugin for plugbus plugin authors (registered through the ``pytest11`` entry point).

Placeholder while the test kit is written; it defines no fixtures yet.
"""
