"""The event contract, exported: an AsyncAPI 3 document and a JSON Schema per event.

Built from the event registry, so every event a loaded plugin registers — built-in or
third-party — appears with its payload schema and, for client events, its ack. Client teams
generate types from it and validate their payloads against it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter

from .events import Event, ServerEvent

if TYPE_CHECKING:
    from .bus import Bus

REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "plugbus's one error shape.",
    "properties": {
        "code": {
            "type": "string",
            "description": "Short snake_case identifier, e.g. invalid_payload.",
        },
        "message": {"type": "string", "description": "What was wrong, for humans."},
        "details": {"type": "object", "description": "Machine-readable specifics."},
    },
    "required": ["code", "message", "details"],
}


class _Schemas:
    """Collects JSON Schemas, hoisting pydantic's ``$defs`` into shared components."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {"Error": ERROR_SCHEMA}

    def of(self, payload: Any) -> dict[str, Any]:
        if isinstance(payload, type) and issubclass(payload, BaseModel):
            schema = payload.model_json_schema(ref_template=REF)
        else:
            schema = TypeAdapter(payload).json_schema(ref_template=REF)
        self.components.update(schema.pop("$defs", {}))
        return schema

    def arguments(self, event_cls: type[Event]) -> dict[str, Any] | None:
        """The Socket.IO arguments of an event with ``positional``, as an array schema (item
        *i* is field *i*); None for an event sent as one object."""
        positional = event_cls.positional
        if positional is None:
            return None
        schema = self.of(event_cls)
        props, required = schema.get("properties", {}), set(schema.get("required", ()))
        needed = max((i + 1 for i, f in enumerate(positional) if f in required), default=0)
        return {
            "type": "array",
            "description": f"Socket.IO arguments, in order: {', '.join(positional)} "
            f"(over REST: the object of the same named fields).",
            "prefixItems": [{**props.get(f, {}), "title": f} for f in positional],
            "items": False,
            "minItems": needed,
            "maxItems": len(positional),
            "x-plugbus-positional": list(positional),
        }

    def ack(self, event_cls: type[Event]) -> dict[str, Any]:
        data = self.of(event_cls.ack) if event_cls.ack is not None else {}
        error = {"$ref": "#/components/schemas/Error"}
        if event_cls.ack_style == "plain":
            return {
                "description": f"The ack of {event_cls.name!r}, when the client asked for one: "
                "plain arguments, error-first as in Node — null then the result "
                "(several arguments when the handler returns a tuple), or the "
                "error alone when the event was refused.",
                "type": "array",
                "oneOf": [
                    {"prefixItems": [{"type": "null"}], "items": data, "minItems": 1},
                    {"prefixItems": [error], "items": False, "minItems": 1, "maxItems": 1},
                ],
                "x-plugbus-ack-style": "plain",
            }
        return {
            "description": f"The ack of {event_cls.name!r}, when the client asked for one.",
            "oneOf": [
                {
                    "type": "object",
                    "properties": {"ok": {"const": True}, "data": data},
                    "required": ["ok", "data"],
                },
                {
                    "type": "object",
                    "properties": {"ok": {"const": False}, "error": error},
                    "required": ["ok", "error"],
                },
            ],
        }


def _describe(obj: Any) -> str:
    doc = (obj.description if isinstance(obj, ServerEvent) else obj.__doc__) or ""
    return " ".join(doc.split())


def event_schemas(bus: Bus, namespace: str | None = None) -> dict[str, dict[str, Any]]:
    """Every event registered in ``namespace`` (the default namespace when None) as
    ``{name: {direction, plugin, description, payload, arguments, ack, ack_style}}``.

    Client events (sent by clients, handled by plugbus) carry their ack schema; server events
    (sent to clients) have ``ack: None``. ``payload`` is the object of named fields (REST's
    form); ``arguments`` the Socket.IO argument list of an event with ``positional`` (else
    None). Shared models are inlined under ``$defs``.
    """
    schemas = _Schemas()
    out: dict[str, dict[str, Any]] = {}
    for name in bus.events.names(namespace):
        cls = bus.events.get(name, namespace)
        assert cls is not None
        out[name] = {
            "direction": "client-to-server",
            "plugin": bus.events.owner(name, namespace),
            "description": _describe(cls),
            "payload": schemas.of(cls),
            "arguments": schemas.arguments(cls),
            "ack": schemas.ack(cls),
            "ack_style": cls.ack_style,
        }
    for owner, event in bus.events.server_events(namespace):
        key = name if (name := event.name) not in out else f"{name} (server)"
        out[key] = {
            "direction": "server-to-client",
            "plugin": owner,
            "description": _describe(event),
            "payload": schemas.of(event.payload),
            "ack": None,
        }
    for entry in out.values():
        entry["$defs"] = schemas.components
    return out


def _channel_ids(namespaces: list[str]) -> dict[str, str]:
    """A channel id per namespace: ``socketio`` for the default (the first), ``socketio-<name>``
    for the others (characters AsyncAPI keys do not allow become ``-``)."""
    ids: dict[str, str] = {}
    for i, ns in enumerate(namespaces):
        base = (
            "socketio"
            if i == 0
            else "socketio-" + (re.sub(r"[^A-Za-z0-9_]+", "-", ns).strip("-") or "root")
        )
        key, n = base, 2
        while key in ids.values():
            key, n = f"{base}-{n}", n + 1
        ids[ns] = key
    return ids


def asyncapi_document(bus: Bus, *, version: str, server_url: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of this server's Socket.IO events.

    One channel per served namespace (``socketio`` is the default namespace; the others are
    ``socketio-<name>``). Each client event is an operation with action ``receive`` (plugbus
    receives it) and a ``reply`` carrying the ack; each declared server event is an operation
    with action ``send``. In the default namespace operation and message ids are the event
    names; in another they are prefixed with its channel id. An event sent with positional
    arguments has the argument array as its payload.
    """
    schemas = _Schemas()
    namespaces = list(bus.config.server.namespaces)
    recovery = bus.config.server.recovery.enabled
    channel_ids = _channel_ids(namespaces)
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    for ns in namespaces:
        cid = channel_ids[ns]
        prefix = "" if ns == bus.default_namespace else f"{cid}."
        channel_messages: dict[str, Any] = {}
        channel_ref = {"$ref": f"#/channels/{cid}"}
        channels[cid] = {
            "address": ns,
            "title": f"Socket.IO namespace {ns}",
            "messages": channel_messages,
        }

        def add_message(
            key: str,
            name: str,
            summary: str,
            payload: dict[str, Any],
            cid: str = cid,
            channel_messages: dict[str, Any] = channel_messages,
        ) -> dict[str, str]:
            messages[key] = {
                "name": name,
                "title": name,
                "summary": summary or name,
                "payload": payload,
            }
            channel_messages[key] = {"$ref": f"#/components/messages/{key}"}
            return {"$ref": f"#/channels/{cid}/messages/{key}"}

        for name in bus.events.names(ns):
            cls = bus.events.get(name, ns)
            assert cls is not None
            payload = schemas.arguments(cls) or schemas.of(cls)
            msg = add_message(prefix + name, name, _describe(cls), payload)
            ack = add_message(
                f"{prefix}{name}.ack", f"{name} ack", f"Ack of {name}", schemas.ack(cls)
            )
            operations[f"receive.{prefix}{name}"] = {
                "action": "receive",
                "channel": channel_ref,
                "messages": [msg],
                "summary": f"A client emits {name!r} on {ns} (plugin {bus.events.owner(name, ns)}).",
                "reply": {"channel": channel_ref, "messages": [ack]},
            }
        for owner, event in bus.events.server_events(ns):
            key = prefix + event.name
            if key in messages:
                key += ".server"
            msg = add_message(key, event.name, _describe(event), schemas.of(event.payload))
            if recovery and event.name != "error":
                messages[key]["x-plugbus-offset"] = {
                    "description": "Sent to a client offered connection state recovery, the "
                    "event carries one more argument after its payload: its offset, the id the "
                    "client names when it reconnects (socket.io-client does so by itself).",
                    "schema": {"type": "string", "pattern": "^[0-9]+-[0-9]+$"},
                    "replayed": event.history,
                }
            operations[f"send.{prefix}{event.name}"] = {
                "action": "send",
                "channel": channel_ref,
                "messages": [msg],
                "summary": f"plugbus emits {event.name!r} to clients on {ns} (plugin {owner}).",
            }
    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": bus.server_name,
            "version": version,
            "description": "Socket.IO events of a plugbus server, generated from its loaded plugins. "
            "Each channel is a Socket.IO namespace. Each client event may ask for "
            "an ack; the reply describes it."
            + (
                " Connection state recovery is on: a client offered it (CONNECT payload "
                f"recovery: true{', or any client that does not decline' if bus.config.server.recovery.clients == 'all' else ''}) "
                "receives {sid, pid} in its CONNECT ack and each server event's offset as an "
                "extra last argument (x-plugbus-offset); see docs/recovery.md."
                if recovery
                else ""
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas.components},
    }
    if server_url:
        host = server_url.split("://", 1)[-1]
        protocol = "wss" if server_url.startswith("https") else "ws"
        doc["servers"] = {
            "plugbus": {
                "host": host,
                "protocol": protocol,
                "pathname": "/" + bus.config.server.socketio_path,
            }
        }
    return doc
