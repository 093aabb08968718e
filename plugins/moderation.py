"""moderation: refuses messages that are too long or contain a blocked word.

It inspects the ``text_fields`` of every event, whichever plugin registered it and whichever
door it came through.
"""

from __future__ import annotations

import re

from pydantic import Field

from plugbus import Event, EventContext, MessageRejected, Plugin, PluginSettings, hookimpl


class ModerationSettings(PluginSettings):
    """Settings of the moderation plugin."""

    max_length: int = Field(2000, ge=0, description="Most characters in a text field; 0 = no limit.")
    blocked_words: list[str] = Field(
        default_factory=list, description="Words refused anywhere in a text field (whole words, any case)."
    )


class ModerationPlugin(Plugin):
    """Vetoes events whose text breaks a rule, saying which rule and which field."""

    Settings = ModerationSettings
    settings: ModerationSettings

    def __init__(self, settings: ModerationSettings) -> None:
        super().__init__(settings)
        words = [w.strip() for w in settings.blocked_words if w.strip()]
        # One compiled pattern for all words: one scan per text, however many words there are.
        self._blocked = (
            re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, words)) + r")(?!\w)", re.IGNORECASE)
            if words else None
        )

    @hookimpl
    def plugbus_moderate(self, event: Event, ctx: EventContext) -> None:
        """Raise :class:`MessageRejected` for the first text field that breaks a rule."""
        limit = self.settings.max_length
        for field in type(event).text_fields:
            text = getattr(event, field, None)
            if not isinstance(text, str):
                continue
            if limit and len(text) > limit:
                raise MessageRejected(
                    f"{field} is {len(text)} characters long; the limit is {limit}",
                    details={"rule": "max_length", "field": field, "limit": limit, "length": len(text)},
                )
            if self._blocked is not None:
                found = self._blocked.search(text)
                if found:
                    raise MessageRejected(
                        f"{field} contains a blocked word",
                        details={"rule": "blocked_words", "field": field, "word": found.group(0)},
                    )
