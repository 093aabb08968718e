"""A module plugin that writes one log line while it handles its event, as a plugin would."""

import logging
from typing import ClassVar

from plugbus import Event, EventContext, hookimpl

log = logging.getLogger("fixture.log_line")


class Note(Event):
    """``log-note {text}``: logged by the plugin at info level."""

    name: ClassVar[str] = "log-note"
    text: str


@hookimpl
def plugbus_register_events():
    """The ``log-note`` event."""
    return [Note]


@hookimpl
def plugbus_handle_event(event: Event, ctx: EventContext):
    """Log the note (plain logging: the structured fields come from the context)."""
    if isinstance(event, Note):
        log.info("note: %s", event.text)
        return {"logged": True}
    return None
