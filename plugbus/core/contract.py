"""The event contract, exported: an AsyncAPI 3 document and a JSON Schema per event.

Built from the event registry, so every event a loaded plugin registers — built-in or
third-party — appears with its payload schema and, for client events, its ack. Client teams
generate types from it and validate their payloads against it.
"""

from __future__ import annotations

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
        "code": {"type": "string", "description": "Short snake_case identifier, e.g. invalid_payload."},
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

    def ack(self, event_cls: type[Event]) -> dict[str, Any]:
        data = self.of(event_cls.ack) if event_cls.ack is not None else {}
        return {
            "description": f"The ack of {event_cls.name!r}, when the client asked for one.",
            "oneOf": [
                {"type": "object", "properties": {"ok": {"const": True}, "data": data},
                 "required": ["ok", "data"]},
                {"type": "object", "properties": {"ok": {"const": False},
                                                   "error": {"$ref": "#/components/schemas/Error"}},
                 "required": ["ok", "error"]},
            ],
        }


def _describe(obj: Any) -> str:
    doc = (obj.description if isinstance(obj, ServerEvent) else obj.__doc__) or ""
    return " ".join(doc.split())


def event_schemas(bus: Bus) -> dict[str, dict[str, Any]]:
    """Every registered event as ``{name: {direction, plugin, description, payload, ack}}``.

    Client events (sent by clients, handled by plugbus) carry their ack schema; server events
    (sent to clients) have ``ack: None``. Shared models are inlined under ``$defs``.
    """
    schemas = _Schemas()
    out: dict[str, dict[str, Any]] = {}
    for name in bus.events.names():
        cls = bus.events.get(name)
        assert cls is not None
        out[name] = {"direction": "client-to-server", "plugin": bus.events.owner(name),
                     "description": _describe(cls), "payload": schemas.of(cls), "ack": schemas.ack(cls)}
    for owner, event in bus.events.server_events():
        key = name if (name := event.name) not in out else f"{name} (server)"
        out[key] = {"direction": "server-to-client", "plugin": owner,
                    "description": _describe(event), "payload": schemas.of(event.payload), "ack": None}
    for entry in out.values():
        entry["$defs"] = schemas.components
    return out


def asyncapi_document(bus: Bus, *, version: str, server_url: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of this server's Socket.IO events.

    One channel, the served namespace. Each client event is an operation with action
    ``receive`` (plugbus receives it) and a ``reply`` carrying the ack; each declared server
    event is an operation with action ``send``. Operation and message ids are the event names.
    """
    schemas = _Schemas()
    namespace = bus.config.server.namespace
    messages: dict[str, Any] = {}
    channel_messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    channel_ref = {"$ref": "#/channels/socketio"}

    def add_message(key: str, name: str, summary: str, payload: dict[str, Any]) -> dict[str, str]:
        messages[key] = {"name": name, "title": name, "summary": summary or name, "payload": payload}
        channel_messages[key] = {"$ref": f"#/components/messages/{key}"}
        return {"$ref": f"#/channels/socketio/messages/{key}"}

    for name in bus.events.names():
        cls = bus.events.get(name)
        assert cls is not None
        msg = add_message(name, name, _describe(cls), schemas.of(cls))
        ack = add_message(f"{name}.ack", f"{name} ack", f"Ack of {name}", schemas.ack(cls))
        operations[f"receive.{name}"] = {
            "action": "receive", "channel": channel_ref, "messages": [msg],
            "summary": f"A client emits {name!r} (plugin {bus.events.owner(name)}).",
            "reply": {"channel": channel_ref, "messages": [ack]},
        }
    for owner, event in bus.events.server_events():
        key = event.name if event.name not in messages else f"{event.name}.server"
        msg = add_message(key, event.name, _describe(event), schemas.of(event.payload))
        operations[f"send.{event.name}"] = {
            "action": "send", "channel": channel_ref, "messages": [msg],
            "summary": f"plugbus emits {event.name!r} to clients (plugin {owner}).",
        }
    doc: dict[str, Any] = {
        "asyncapi": "3.0.0",
        "info": {
            "title": bus.server_name,
            "version": version,
            "description": "Socket.IO events of a plugbus server, generated from its loaded plugins. "
                           "Each client event may ask for an ack; the reply describes it.",
        },
        "defaultContentType": "application/json",
        "channels": {"socketio": {
            "address": namespace,
            "title": f"Socket.IO namespace {namespace}",
            "messages": channel_messages,
        }},
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas.components},
    }
    if server_url:
        host = server_url.split("://", 1)[-1]
        protocol = "wss" if server_url.startswith("https") else "ws"
        doc["servers"] = {"plugbus": {"host": host, "protocol": protocol,
                                      "pathname": "/" + bus.config.server.socketio_path}}
    return doc
