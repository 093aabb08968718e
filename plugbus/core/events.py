"""Event schemas: what a client may send, checked before any plugin sees it.

A plugin declares each event it accepts as a subclass of :class:`Event` and returns the class
from its ``plugbus_register_events`` hook. The :class:`EventRegistry` maps wire names to those
classes and turns raw payloads into validated instances, or into an :class:`InvalidPayload`
that says which field was wrong and why.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import orjson
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
    ``history`` says whether what handling it delivers is kept in room history and replayed to
    recovering clients (``ctx.history`` starts from it; False for ephemeral events such as
    typing indicators).

    Socket.IO features:

    * ``namespace`` — the namespace (or a tuple of namespaces) the event is accepted on; None,
      the default, is the default namespace (the first of ``server.namespaces``). Naming a
      namespace the server does not serve stops start-up. The same name may be registered
      in two namespaces, by one class or by two.
    * ``positional`` — field names, in order, when clients send the event with positional
      arguments (``socket.emit("chat", user, text)``): argument *i* is field *i*. One name
      takes a single non-object payload (``socket.emit("shout", "hi")``, a number, a list).
      Trailing arguments may be left out when their fields have defaults. Over REST the same
      event is the object of named fields.
    * ``ack_style`` — ``"envelope"`` (default): the ack is one ``{ok, data | error}`` object.
      ``"plain"``: the ack's arguments are Node's error-first ``(err, ...results)`` — ``null``
      followed by the handler's result (a tuple is several arguments, None none), or the
      ``{code, message, details}`` error alone when the event was refused.
    """

    model_config = ConfigDict(extra="forbid")

    name: ClassVar[str]
    ack: ClassVar[type[BaseModel] | None] = None
    text_fields: ClassVar[tuple[str, ...]] = ()
    room_field: ClassVar[str | None] = None
    max_bytes: ClassVar[int | None] = None
    namespace: ClassVar[str | tuple[str, ...] | None] = None
    positional: ClassVar[tuple[str, ...] | None] = None
    ack_style: ClassVar[str] = "envelope"
    rest_scope: ClassVar[str] = "admin"
    history: ClassVar[bool] = True

    @property
    def event_name(self) -> str:
        """The wire name of this event (``type(self).name``)."""
        return type(self).name


class ModeratedText(Event):
    """The event :meth:`Bus.moderate_text` runs a text through moderation as: one text field.
    Never registered, so no client can send it."""

    name: ClassVar[str] = "plugbus.text"
    text_fields: ClassVar[tuple[str, ...]] = ("text",)
    text: str


@dataclass(frozen=True, slots=True)
class ServerEvent:
    """An event the server sends to clients, declared for the exported event contract.

    Return it from ``plugbus_register_events`` beside your :class:`Event` classes so that
    ``GET /asyncapi.json`` and ``plugbus schema`` describe what clients will receive.
    Declaring is documentation only: emitting never checks it (the hot path stays lean).

    :ivar name: the Socket.IO event name, e.g. ``"receive-message"``.
    :ivar payload: the payload's type — ``str``, a pydantic model, a union of those...
    :ivar description: one sentence for client developers.
    :ivar namespace: the namespace (or a tuple of them) it is sent on; None is the default
        namespace.
    :ivar history: whether the plugin sends it with ``bus.emit``'s history on (the default):
        kept in room history and replayed to recovering clients. Either way, a client offered
        connection state recovery receives an *offset* — a string ``"<ms>-<seq>"`` — as an
        extra last argument of every event sent through ``bus.emit`` (the exported contract
        says so as ``x-plugbus-offset``).
    """

    name: str
    payload: Any
    description: str = ""
    namespace: str | tuple[str, ...] | None = None
    history: bool = True


def format_validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc": "a.b", "message": ..., "type": ...}]`` (input omitted)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(part) for part in err["loc"]) or "(payload)"
        out.append({"loc": loc, "message": err["msg"], "type": err["type"]})
    return out


ACK_STYLES = ("envelope", "plain")


class EventRegistry:
    """(namespace, wire name) → :class:`Event` subclass, filled once at start-up from the plugins.

    :param default_namespace: where events that name no namespace belong.
    :param served: the namespaces the server serves; an event declared for another is refused.
    """

    def __init__(self, default_namespace: str = "/", served: tuple[str, ...] | None = None) -> None:
        self.default_namespace = default_namespace
        self.served = tuple(served) if served is not None else (default_namespace,)
        self._events: dict[tuple[str, str], type[Event]] = {}
        self._owners: dict[tuple[str, str], str] = {}
        self._server_events: dict[tuple[str, str], ServerEvent] = {}
        self._server_owners: dict[tuple[str, str], str] = {}
        #: per event class: whether it keeps pydantic's own ``model_validate`` (then its
        #: schema validator is called directly, without that method's Python frame)
        self._plain_validate: dict[type[Event], bool] = {}

    def namespaces_of(self, declared: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
        """A ``namespace`` declaration as the tuple of namespaces it means."""
        if declared is None:
            return (self.default_namespace,)
        if isinstance(declared, str):
            return (declared,)
        return tuple(declared)

    def _check_served(self, owner: str, name: str, namespaces: tuple[str, ...]) -> None:
        for ns in namespaces:
            if not isinstance(ns, str) or ns not in self.served:
                raise ValueError(
                    f"plugin {owner!r} registered event {name!r} for namespace {ns!r}, which is "
                    f"not served: add it to server.namespaces (served: {', '.join(self.served)})"
                )

    def register(self, event_cls: type[Event] | ServerEvent, owner: str) -> None:
        """Add an event for plugin ``owner``: an :class:`Event` subclass (client to server) or a
        :class:`ServerEvent` (server to client), in each namespace it declares.

        :raises ValueError: not an :class:`Event` with a ``name`` nor a :class:`ServerEvent`;
            a namespace the server does not serve; a ``positional`` naming no field, or an
            unknown ``ack_style``; or another plugin already registered that client event name
            in that namespace. (A server event declared by two plugins keeps the first
            declaration.)
        """
        if isinstance(event_cls, ServerEvent):
            namespaces = self.namespaces_of(event_cls.namespace)
            self._check_served(owner, event_cls.name, namespaces)
            for ns in namespaces:
                # Several plugins may send the same event (a replacement greeter beside
                # welcome, say); the declaration is documentation, so the first one stands.
                if (ns, event_cls.name) not in self._server_events:
                    self._server_events[(ns, event_cls.name)] = event_cls
                    self._server_owners[(ns, event_cls.name)] = owner
            return
        if not (isinstance(event_cls, type) and issubclass(event_cls, Event)):
            raise ValueError(
                f"plugin {owner!r} registered {event_cls!r}, which is not an Event subclass"
            )
        name = getattr(event_cls, "name", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"plugin {owner!r} registered {event_cls.__name__} without a `name`")
        self._check_shape(event_cls, owner)
        namespaces = self.namespaces_of(event_cls.namespace)
        self._check_served(owner, name, namespaces)
        for ns in namespaces:
            key = (ns, name)
            if key in self._events and self._events[key] is not event_cls:
                where = "" if ns == self.default_namespace else f" in namespace {ns!r}"
                raise ValueError(
                    f"event {name!r} is registered twice{where}: by plugin {self._owners[key]!r} "
                    f"and by plugin {owner!r}"
                )
        for ns in namespaces:
            self._events[(ns, name)] = event_cls
            self._owners[(ns, name)] = owner

    @staticmethod
    def _check_shape(event_cls: type[Event], owner: str) -> None:
        where = f"plugin {owner!r}, event {event_cls.name!r} ({event_cls.__name__})"
        if event_cls.ack_style not in ACK_STYLES:
            raise ValueError(
                f"{where}: ack_style {event_cls.ack_style!r} is not one of {', '.join(ACK_STYLES)}"
            )
        positional = event_cls.positional
        if positional is not None:
            if isinstance(positional, str) or not positional:
                raise ValueError(f"{where}: positional must be a non-empty tuple of field names")
            unknown = [f for f in positional if f not in event_cls.model_fields]
            if unknown:
                raise ValueError(f"{where}: positional names {unknown[0]!r}, which is not a field")
            if len(set(positional)) != len(positional):
                raise ValueError(f"{where}: positional names a field twice")

    def names(self, namespace: str | None = None) -> list[str]:
        """The event names registered in ``namespace`` (the default namespace when None), sorted."""
        ns = namespace or self.default_namespace
        return sorted(name for (n, name) in self._events if n == ns)

    def owner(self, name: str, namespace: str | None = None) -> str:
        """The plugin that registered client event ``name`` in ``namespace``."""
        return self._owners[(namespace or self.default_namespace, name)]

    def server_events(self, namespace: str | None = None) -> list[tuple[str, ServerEvent]]:
        """Declared server-to-client events of ``namespace`` (the default namespace when None)
        with their owners, sorted by name."""
        ns = namespace or self.default_namespace
        keys = sorted(k for k in self._server_events if k[0] == ns)
        return [(self._server_owners[k], self._server_events[k]) for k in keys]

    def get(self, name: str, namespace: str | None = None) -> type[Event] | None:
        """The schema for ``name`` in ``namespace`` (the default namespace when None), or None."""
        return self._events.get((namespace or self.default_namespace, name))

    def __contains__(self, name: object) -> bool:
        return (self.default_namespace, name) in self._events

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(dict.fromkeys(self._events.values()))

    def _schema(self, name: Any, namespace: str | None) -> type[Event]:
        ns = namespace or self.default_namespace
        event_cls = self._events.get((ns, name)) if isinstance(name, str) else None
        if event_cls is None:
            shown = shorten(name if isinstance(name, str) else repr(name))
            details: dict[str, Any] = {"event": shown, "known": self.names(ns)}
            where = ""
            if ns != self.default_namespace:
                details["namespace"] = ns
                where = f" in namespace {ns!r}"
            raise UnknownEvent(
                f"unknown event {shown!r}{where}: no loaded plugin handles it", details=details
            )
        return event_cls

    def parse(self, name: Any, payload: Any, namespace: str | None = None) -> Event:
        """Validate ``payload``, the object of named fields (REST's form, and Socket.IO's for
        events without ``positional``), against the schema registered for ``name``.

        :raises UnknownEvent: no schema is registered under ``name`` in ``namespace``.
        :raises InvalidPayload: the payload is not an object or does not fit the schema;
            ``details["errors"]`` lists each problem with its location.
        """
        return self._parse(self._schema(name, namespace), name, payload)

    def _parse(self, event_cls: type[Event], name: Any, payload: Any) -> Event:
        if payload is None and not any(f.is_required() for f in event_cls.model_fields.values()):
            payload = {}  # an event with no required fields may be sent without a payload
        if not isinstance(payload, dict):
            raise InvalidPayload(
                f"invalid payload for {name!r}: expected a JSON object, got {_json_type(payload)}",
                details={
                    "event": name,
                    "errors": [
                        {"loc": "(payload)", "message": "expected an object", "type": "model_type"}
                    ],
                },
            )
        return self._validate(event_cls, name, payload)

    def parse_args(
        self, name: Any, args: list[Any] | tuple[Any, ...], namespace: str | None = None
    ) -> Event:
        """Validate the arguments of a Socket.IO event (everything after its name).

        An event with ``positional`` maps argument *i* to field *i*; any other takes one
        object argument (or none, when it has no required field).

        :raises UnknownEvent: no schema is registered under ``name`` in ``namespace``.
        :raises InvalidPayload: too many arguments, or one that does not fit; each error in
            ``details["errors"]`` names its ``argument`` (1 = the first after the name).
        """
        # _schema's lookup inline (every socket event); an unknown name, or a name that is
        # not exactly a str, takes _schema, which raises or finds it as before
        event_cls = (
            self._events.get((namespace or self.default_namespace, name))
            if type(name) is str
            else None
        )
        if event_cls is None:
            event_cls = self._schema(name, namespace)
        positional = event_cls.positional
        if positional is None:
            if len(args) == 1 and type(args[0]) is dict:
                return self._validate(event_cls, name, args[0])  # what _parse does with it
            if len(args) > 1:
                raise InvalidPayload(
                    f"event {name!r} must carry one payload argument, got {len(args)}",
                    details={"event": name, "arguments": len(args)},
                )
            return self._parse(event_cls, name, args[0] if args else None)
        if len(args) > len(positional):
            raise InvalidPayload(
                f"event {name!r} takes at most {len(positional)} argument"
                f"{'s' if len(positional) != 1 else ''} ({', '.join(positional)}), got {len(args)}",
                details={
                    "event": name,
                    "arguments": len(args),
                    "errors": [
                        {
                            "loc": f"argument {i + 1}",
                            "argument": i + 1,
                            "message": "unexpected argument",
                            "type": "extra_argument",
                        }
                        for i in range(len(positional), len(args))
                    ],
                },
            )
        return self._validate(event_cls, name, dict(zip(positional, args, strict=False)))

    def _check_text(self, event_cls: type[Event], name: Any, payload: dict[str, Any]) -> None:
        """Refuse a payload with a lone surrogate, or one larger than the event's limit."""
        lone = find_lone_surrogate(payload)
        if lone is not None:
            raise InvalidPayload(
                f"invalid payload for {name!r}: {lone}: {LONE_SURROGATE}",
                details={
                    "event": name,
                    "errors": [{"loc": lone, "message": LONE_SURROGATE, "type": "string_unicode"}],
                },
            )
        limit = event_cls.max_bytes
        if limit is not None and payload_size(payload, limit) > limit:
            self._too_large(name, limit)

    @staticmethod
    def _too_large(name: Any, limit: int) -> NoReturn:
        raise InvalidPayload(
            f"payload of {name!r} is larger than its limit of {limit} bytes",
            details={
                "event": name,
                "limit": limit,
                "errors": [
                    {
                        "loc": "(payload)",
                        "message": f"larger than {limit} bytes",
                        "type": "too_large",
                    }
                ],
            },
        )

    def _validate(self, event_cls: type[Event], name: Any, payload: dict[str, Any]) -> Event:
        # The common payload, an object of ASCII strings ({message, roomID}), in one pass: it
        # holds no surrogate, and its size is what payload_size counts (an ASCII string's
        # UTF-8 length is its length). Anything else takes both walks.
        size = 2
        for key, val in payload.items():
            if (
                type(key) is not str
                or type(val) is not str
                or not key.isascii()
                or not val.isascii()
            ):
                size = -1
                break
            size += len(key) + len(val) + 6
        if size < 0:
            self._check_text(event_cls, name, payload)
        elif event_cls.max_bytes is not None and size > event_cls.max_bytes:
            self._too_large(name, event_cls.max_bytes)
        plain = self._plain_validate.get(event_cls)
        if plain is None:
            plain = self._plain_validate[event_cls] = (
                inspect.getattr_static(event_cls, "model_validate") is _MODEL_VALIDATE
            )
        try:
            if plain:
                # what BaseModel.model_validate(payload) does, to the call
                return event_cls.__pydantic_validator__.validate_python(payload)  # type: ignore[no-any-return]
            return event_cls.model_validate(payload)
        except ValidationError as exc:
            errors = format_validation_errors(exc)
            positional = event_cls.positional
            if positional is not None:
                for error in errors:
                    field = error["loc"].split(".", 1)[0]
                    if field in positional:
                        error["argument"] = positional.index(field) + 1
            summary = "; ".join(
                (f"argument {e['argument']} ({e['loc']})" if "argument" in e else e["loc"])
                + f": {e['message']}"
                for e in errors
            )
            raise InvalidPayload(
                f"invalid payload for {name!r}: {summary}",
                details={"event": name, "errors": errors},
            ) from None


#: pydantic's own ``model_validate`` (a classmethod object), to tell a class that overrides it
_MODEL_VALIDATE = BaseModel.__dict__["model_validate"]


def ack_arguments(
    event_cls: type[Event] | None, result: Any, error: dict[str, Any] | None
) -> list[Any]:
    """The arguments of the ack for an event of ``event_cls`` (None: an unknown event).

    The default envelope is one argument, ``{"ok": true, "data": result}`` or
    ``{"ok": false, "error": error}``. With ``ack_style = "plain"`` the arguments follow
    Node's error-first callbacks: ``[null, *result]`` (a tuple result is several arguments,
    None none after the ``null``), or ``[error]`` alone when the event was refused — so a
    client tells a refusal from a result by the first argument, whatever the result looks like.
    """
    if event_cls is not None and event_cls.ack_style == "plain":
        if error is not None:
            return [error]
        if result is None:
            return [None]
        return [None, *result] if isinstance(result, tuple) else [None, result]
    if error is not None:
        return [{"ok": False, "error": error}]
    return [{"ok": True, "data": result}]


#: Longest part of a client-chosen name (an unknown event's) echoed back in an error.
SHOWN_NAME_LIMIT = 64

LONE_SURROGATE = (
    "text contains a lone UTF-16 surrogate (such as \\ud800), which is not a "
    "Unicode character; send valid UTF-8 text"
)

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
    try:
        # One C call settles the common case on every event: orjson refuses any lone
        # surrogate, in a string or a key. It also refuses what it cannot encode (binary
        # data, integers past 64 bits, non-string keys); only then is the payload walked.
        orjson.dumps(value)
        return None
    except TypeError:
        pass
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
    if type(value) is dict:
        # The common payload, an object of strings (``{message, roomID}``), in one pass;
        # anything else, or a total past ``stop``, is counted by the walk below.
        size = 2
        for key, val in value.items():
            if type(key) is not str or type(val) is not str:
                break
            size += len(key.encode()) + len(val.encode()) + 6
        else:
            if size <= stop:
                return size
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
    return {
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "an array",
        bytes: "binary data",
    }.get(type(value), type(value).__name__)
