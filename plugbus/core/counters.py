"""Counters a plugin keeps for the node's metrics (``bus.counter``): plain integers that the
metrics exporter reads when it is scraped, so that counting costs a plugin one dict update and
core needs no metrics library.

Each counter is exposed as ``plugbus_<name>_total`` with the help text and labels it was made
with. Label values must come from a bounded set (a rule name, an action, an outcome — never a
room, a connection id or a user id); as a guard, a counter keeps at most
:data:`MAX_SERIES` label sets and counts the rest under ``(other)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: what a counter's name and label names look like (Prometheus' rules, lower case)
NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
#: the most label sets one counter keeps before it counts new ones under ``(other)``
MAX_SERIES = 200
OTHER = "(other)"
#: names plugbus's own metrics use (``plugbus_<name>``), which no plugin counter may take
RESERVED = frozenset(
    {
        "connections",
        "sessions",
        "handshakes",
        "wire_refusals",
        "events",
        "deliveries",
        "delivered_bytes",
        "rest_request_seconds",
        "hook_seconds",
        "phase",
        "redis_seconds",
        "redis_errors",
        "recovered_sessions",
        "replayed_packets",
    }
)


class PluginCounter:
    """One plugin counter: ``counter.inc(*label_values)`` adds one (or ``amount``).

    :ivar name: the name it was made with (exposed as ``plugbus_<name>_total``).
    :ivar help: its help text.
    :ivar labels: its label names.
    :ivar values: label values -> count (read by the metrics exporter).
    """

    __slots__ = ("help", "labels", "name", "values")

    def __init__(self, name: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help
        self.labels = labels
        self.values: dict[tuple[str, ...], int] = {}

    def inc(self, *values: str, amount: int = 1) -> None:
        """Add ``amount`` (≥ 0) to the count of these label values, one per label name.

        :raises ValueError: not one value per label, or a negative amount.
        """
        counts = self.values
        if values in counts and amount >= 0:  # the common case: one lookup, one store
            counts[values] += amount
            return
        if len(values) != len(self.labels) or amount < 0:
            raise ValueError(
                f"counter {self.name!r} takes {len(self.labels)} label values "
                f"({', '.join(self.labels) or 'none'}) and a non-negative amount"
            )
        if len(counts) >= MAX_SERIES:  # an unbounded label value: stop making series
            values = (OTHER,) * len(values)
        counts[values] = counts.get(values, 0) + amount


class Counters:
    """Every plugin counter of one node, by name."""

    def __init__(self) -> None:
        self.by_name: dict[str, PluginCounter] = {}

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> PluginCounter:
        """The counter ``name``, made on first use; asking again with the same labels gives
        the same counter.

        :raises ValueError: a bad or reserved name, bad label names, no help text, or a name
            already made with other labels.
        """
        labels = tuple(labels)
        if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED:
            raise ValueError(
                f"counter name {name!r}: lower-case letters, digits and _, starting with a "
                f"letter, and none of plugbus's own ({', '.join(sorted(RESERVED))})"
            )
        if name.endswith("_total"):
            raise ValueError(f"counter name {name!r}: leave out _total, the exporter adds it")
        bad = [label for label in labels if not NAME.fullmatch(label) or label == "le"]
        if bad or len(set(labels)) != len(labels):
            raise ValueError(f"counter {name!r}: bad or repeated label names {labels!r}")
        if not help or not isinstance(help, str):
            raise ValueError(f"counter {name!r} needs a help text")
        existing = self.by_name.get(name)
        if existing is not None:
            if existing.labels != labels:
                raise ValueError(
                    f"counter {name!r} exists with labels {existing.labels!r}, not {labels!r}"
                )
            return existing
        counter = self.by_name[name] = PluginCounter(name, help, labels)
        return counter
