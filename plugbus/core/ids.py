"""Unique ids for messages, cheap enough for the per-event path."""

from __future__ import annotations

import itertools
import os


def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count(1)


_prefix = ""
_counter = itertools.count(1)
_reseed()
os.register_at_fork(after_in_child=_reseed)  # a forked worker must not repeat its parent's ids


def new_id() -> str:
    """A new id of 32 lowercase hex digits, unique across processes and nodes.

    64 random bits drawn when the process starts (again in a forked child), then a 64-bit
    counter: one string format per id instead of ``uuid4``'s read from the OS's random source.
    Ids are unique, not secret — sequential within a process.
    """
    return f"{_prefix}{next(_counter):016x}"
