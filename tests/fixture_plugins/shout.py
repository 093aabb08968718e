"""A module plugin (no settings): upper-cases room messages and adds a ``shout`` event."""

from typing import ClassVar

from plugbus import Event, EventContext, hookimpl

__version__ = "0.0.1"


class Shout(Event):
    """Shout a word back."""

    name: ClassVar[str] = "shout"
    text_fields = ("word",)
    word: str


@hookimpl
def plugbus_register_events():
    """The ``shout`` event."""
    return [Shout]


@hookimpl(trylast=True)
def plugbus_moderate(event: Event, ctx: EventContext):
    """Upper-case every text field of every event (a transforming moderation)."""
    changes = {
        f: getattr(event, f).upper()
        for f in type(event).text_fields
        if isinstance(getattr(event, f), str)
    }
    return event.model_copy(update=changes) if changes else None


@hookimpl
def plugbus_handle_event(event: Event, ctx: EventContext):
    """Answer ``shout`` with the (moderated) word."""
    if isinstance(event, Shout):
        return {"shouted": event.word, "origin": str(ctx.origin)}
    return None
