"""Event schemas: what a client may send, checked before any plugin sees it.

A plugin declares each event it accepts as a subclass of :class:`Event` and returns the class
from its ``plugbus_register_events`` hook. The :class:`EventRegistry` maps wire names to those
classes and turns raw payloads into validated instances, or into an :class:`InvalidPayload`
that says which field was wrong and why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidPayload, UnknownEvent


class Event(BaseModel):
    """Base class of every event payload schema.

    Subclasses set ``name`` (the Socket.IO event name, e.g. ``"send-message"``) and declare the
    payload's fields as a pydantic model. Unknown fields are refused, so a typo such as
    ``roomId`` is reported instead of silently ignored. ``ack`` may name a model describing
    what a successful ack carries (used for documentation; not enforced on the hot path).
    ``text_fields`` names the string fields that hold user-written text, which moderation
    plugins inspect (and may mask); other fields are left alone. ``room_field`` names the
    field holding the target room, for rules that work per room (slow mode). ``max_bytes``
    bounds the payload's size (its JSON text, binary attachments by their length) before it is
    validated; None leaves only the transport's ``server.max_message_bytes``. ``rest_scope`` is
    the API-key scope a caller of ``POST /events/{event}`` needs (``"publish"``, ``"read"``,
    ``"admin"``...); it defaults to ``"admin"`` so that an event nobody thought about is never
    open to every key.
    """

    model_config = ConfigDict(extra="forbid")

    name: ClassVar[str]
    ack: ClassVar[type[BaseModel] | None] = None
    text_fields: ClassVar[tuple[str, ...]] = ()
    room_field: ClassVar[str | None] = None
    max_bytes: ClassVar[int | None] = None
    rest_scope: ClassVar[str] = "admin"

    @property
    def event_name(self) -> str:
        """The wire name of this event (``type(self).name``)."""
        return type(self).name


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """An event the server sends to clients, declared for the exported event contract.

    Return it from ``plugbus_register_events`` beside your :class:`Event` classes so that
    ``GET /asyncapi.json`` and ``plugbus schema`` describe what clients will receive.
    Declaring is documentation only: emitting never checks it (the hot path stays lean).

    :ivar name: the Socket.IO event name, e.g. ``"receive-message"``.
    :ivar payload: the payload's type — ``str``, a pydantic model, a union of those...
    :ivar description: one sentence for client developers.
    """

    name: str
    payload: Any
    description: str = ""


def format_validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc": "a.b", "message": ..., "type": ...}]`` (input omitted)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(part) for part in err["loc"]) or "(payload)"
        out.append({"loc": loc, "message": err["msg"], "type": err["type"]})
    return out


class EventRegistry:
    """Wire name → :class:`Event` subclass, filled once at start-up from the plugins."""

    def __init__(self) -> None:
        self._events: dict[str, type[Event]] = {}
        self._owners: dict[str, str] = {}
        self._server_events: dict[str, ServerEvent] = {}
        self._server_owners: dict[str, str] = {}

    def register(self, event_cls: type[Event] | ServerEvent, owner: str) -> None:
        """Add an event for plugin ``owner``: an :class:`Event` subclass (client to server) or a
        :class:`ServerEvent` (server to client).

        :raises ValueError: not an :class:`Event` with a ``name`` nor a :class:`ServerEvent`, or
            another plugin already registered that client event name. (A server event declared
            by two plugins keeps the first declaration.)
        """
        if isinstance(event_cls, ServerEvent):
            # Several plugins may send the same event (a replacement greeter beside welcome, say);
            # the declaration is documentation, so the first one stands.
            if event_cls.name not in self._server_events:
                self._server_events[event_cls.name] = event_cls
                self._server_owners[event_cls.name] = owner
            return
        if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
            raise ValueError(f"plugin {owner!r} registered {event_cls!r}, which is not an Event subclass")
        name = getattr(event_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugin {owner!r} registered {event_cls.__name__} without a `name`")
        if name in self._events and self._events[name] is not event_cls:
            raise ValueError(
                f"event {name!r} is registered twice: by plugin {self._owners[name]!r} "
                f"and by plugin {owner!r}"
            )
        self._events[name] = event_cls
        self._owners[name] = owner

    def names(self) -> list[str]:
        """The registered event names, sorted."""
        return sorted(self._events)

    def owner(self, name: str) -> str:
        """The plugin that registered client event ``name``."""
        return self._owners[name]

    def server_events(self) -> list[tuple[str, ServerEvent]]:
        """Declared server-to-client events with their owners, sorted by name."""
        return [(self._server_owners[n], self._server_events[n]) for n in sorted(self._server_events)]

    def get(self, name: str) -> type[Event] | None:
        """The schema for ``name``, or None."""
        return self._events.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._events

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._events.values())

    def parse(self, name: Any, payload: Any) -> Event:
        """Validate ``payload`` against the schema registered for ``name``.

        :raises UnknownEvent: no schema is registered under ``name``.
        :raises InvalidPayload: the payload is not an object or does not fit the schema;
            ``details["errors"]`` lists each problem with its location.
        """
        event_cls = self._events.get(name) if isinstance(name, str) else None
        if event_cls is None:
            shown = shorten(name if isinstance(name, str) else repr(name))
            raise UnknownEvent(
                f"unknown event {shown!r}: no loaded plugin handles it",
                details={"event": shown, "known": self.names()},
            )
        if payload is None and not any(f.is_required() for f in event_cls.model_fields.values()):
            payload = {}  # an event with no required fields may be sent without a payload
        if not isinstance(payload, dict):
            raise InvalidPayload(
                f"invalid payload for {name!r}: expected a JSON object, got {_json_type(payload)}",
                details={"event": name, "errors": [
                    {"loc": "(payload)", "message": "expected an object", "type": "model_type"}
                ]},
            )
        lone = find_lone_surrogate(payload)
        if lone is not None:
            raise InvalidPayload(
                f"invalid payload for {name!r}: {lone}: {LONE_SURROGATE}",
                details={"event": name, "errors": [
                    {"loc": lone, "message": LONE_SURROGATE, "type": "string_unicode"}]},
            )
        limit = event_cls.max_bytes
        if limit is not None:
            size = payload_size(payload, limit)
            if size > limit:
                raise InvalidPayload(
                    f"payload of {name!r} is larger than its limit of {limit} bytes",
                    details={"event": name, "limit": limit, "errors": [
                        {"loc": "(payload)", "message": f"larger than {limit} bytes", "type": "too_large"}]},
                )
        try:
            return event_cls.model_validate(payload)
        except ValidationError as exc:
            errors = format_validation_errors(exc)
            summary = "; ".join(f"{e['loc']}: {e['message']}" for e in errors)
            raise InvalidPayload(
                f"invalid payload for {name!r}: {summary}", details={"event": name, "errors": errors}
            ) from None


#: Longest part of a client-chosen name (an unknown event's) echoed back in an error.
SHOWN_NAME_LIMIT = 64

LONE_SURROGATE = ("text contains a lone UTF-16 surrogate (such as \\ud800), which is not a "
                  "Unicode character; send valid UTF-8 text")

#: Any code point of the surrogate range: in a Python string decoded from JSON a valid
#: surrogate pair has already become one character, so whatever is left here is lone.
_SURROGATE = re.compile("[\ud800-\udfff]")


def shorten(text: str, limit: int = SHOWN_NAME_LIMIT) -> str:
    """``text`` cut to ``limit`` characters with a note of its full length, so that an error
    never echoes a huge client-chosen name back."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def find_lone_surrogate(value: Any) -> str | None:
    """The location (``"message.a.0"``, ``"(payload)"`` for the value itself) of the first
    string or key holding a lone surrogate, or None.

    JSON lets ``"\\ud800"`` through, and Python's decoders turn it into a string that cannot be
    encoded as UTF-8 again; refused here, it never reaches a plugin, a log or a reply. The walk
    keeps a link to each value's parent rather than its dotted path, so that a deeply nested
    payload costs one step per value, not one path string per level.
    """
    todo: list[tuple[Any, Any]] = [(value, None)]
    while todo:
        item, link = todo.pop()
        if isinstance(item, str):
            if not item.isascii() and _SURROGATE.search(item):
                return _location(link)
        elif isinstance(item, dict):
            for key, val in item.items():
                if isinstance(key, str) and not key.isascii() and _SURROGATE.search(key):
                    return _location((_SURROGATE.sub("\ufffd", key), link))
                todo.append((val, (key, link)))
        elif isinstance(item, list | tuple):
            todo.extend((val, (i, link)) for i, val in enumerate(item))
    return None


def _location(link: Any) -> str:
    parts: list[str] = []
    while link is not None:
        key, link = link
        parts.append(str(key))
    if not parts:
        return "(payload)"
    parts.reverse()
    if len(parts) > 8:  # a deeply nested payload: its first and last steps say enough
        parts = [*parts[:4], f"...({len(parts) - 7} more)", *parts[-3:]]
    return shorten(".".join(parts), 200)


def payload_size(value: Any, stop: int) -> int:
    """The size of ``value`` as JSON text (binary data by its length), counted until it passes
    ``stop`` — so an oversized payload costs no more than the limit to refuse."""
    size = 0
    todo = [value]
    while todo and size <= stop:
        item = todo.pop()
        if isinstance(item, str):
            size += len(item.encode()) + 2
        elif isinstance(item, bytes | bytearray):
            size += len(item)
        elif isinstance(item, dict):
            size += 2
            for key, val in item.items():
                size += len(str(key).encode()) + 4
                todo.append(val)
        elif isinstance(item, list | tuple):
            size += 2 + len(item)
            todo.extend(item)
        else:
            size += len(str(item))
    return size


def _json_type(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    return {str: "a string", bool: "a boolean", int: "a number", float: "a number",
            list: "an array", bytes: "binary data"}.get(type(value), type(value).__name__)
