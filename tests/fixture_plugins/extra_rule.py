"""A module plugin adding a moderation rule: ``no_shouting`` refuses ALL-CAPS text.

Its switch and action come from the moderation plugin's settings like a built-in rule's::

    plugins:
      modules: {extra_rule: "fixture_plugins.extra_rule"}
      settings:
        moderation:
          rules:
            no_shouting: {enabled: true, action: mask}

It also stands in for an authentication plugin, so the tests can ban and mute by user id: a
client that connects with ``auth={"user_id": ...}`` gets that identity.
"""

import re

from plugbus import Bus, Connection, Event, EventContext, Identity, Violation, hookimpl

__version__ = "0.0.1"

_SHOUTED_WORD = re.compile(r"[^\W\d_]{2,}")  # runs of two or more letters


class NoShouting:
    """Text with at least four letters, none of them lower case: each word is a span."""

    name = "no_shouting"

    def check(self, event: Event, ctx: EventContext) -> Violation | None:
        for field in type(event).text_fields:
            text = getattr(event, field, None)
            if not isinstance(text, str):
                continue
            letters = [c for c in text if c.isalpha()]
            if len(letters) >= 4 and not any(c.islower() for c in letters):
                spans = tuple(m.span() for m in _SHOUTED_WORD.finditer(text))
                return Violation(
                    f"{field} is in capitals; please do not shout", field=field, spans=spans
                )
        return None


@hookimpl
def plugbus_moderation_rules(bus: Bus):
    """Add ``no_shouting`` to the moderation pipeline."""
    return [NoShouting()]


@hookimpl
def plugbus_connect(connection: Connection):
    """Trust the handshake's ``user_id`` (a test stand-in for real authentication)."""
    if isinstance(connection.auth, dict) and isinstance(connection.auth.get("user_id"), str):
        connection.identity = Identity(user_id=connection.auth["user_id"])
