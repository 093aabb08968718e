"""The moderation rule contract: what a rule sees and what it reports.

The built-in moderation plugin runs a pipeline of :class:`ModerationRule` objects; any plugin
can add rules through the ``plugbus_moderation_rules`` hook. A rule only *finds* problems; what
to do about one — refuse the event, mask the offending text, or drop the event silently — is
the pipeline's decision, set per rule in config.yaml.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .context import EventContext
from .events import Event


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule.

    :ivar message: one sentence for the sender, e.g. ``"message contains a blocked word"``.
    :ivar field: the event field at fault, when there is one — or, for a string inside a text
        field (a list item, a nested model's field), its path: ``options.1``, ``answer.text``.
    :ivar spans: ``(start, end)`` character ranges of the offending text within ``field``;
        the ``mask`` action replaces them. Without spans a rule cannot mask, and ``mask``
        falls back to refusing.
    :ivar details: extra machine-readable facts (a limit, a retry delay...).
    """

    message: str
    field: str | None = None
    spans: tuple[tuple[int, int], ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class ModerationRule(Protocol):
    """A moderation rule.

    :ivar name: unique rule name; the key of its settings under the moderation plugin's
        ``rules`` (where it is switched on or off and given an action).
    """

    name: str

    def check(
        self, event: Event, ctx: EventContext
    ) -> Violation | Awaitable[Violation | None] | None:
        """Inspect one event (called once per event, before it is handled).

        :return: a :class:`Violation`, or None when the event is fine. May be async.
        """
        ...
