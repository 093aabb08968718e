"""The plugbus hook specifications: the whole plugin contract, in one module.

Every hook name starts with ``plugbus_``. Implement one by decorating a function or method of
the same name with ``plugbus.hookimpl``; accept only the arguments you need.

Call semantics, which every docstring below repeats for its hook:

* **Collected hooks** (``plugbus_register_events``, ``plugbus_routes``,
  ``plugbus_moderation_rules``) are called once, at start-up, synchronously, through
  plugbus's port of pluggy's call loop; every implementation's result is used. Wrappers work.
* **Awaited hooks** (all the others) may be ``async def`` or plain functions. plugbus calls the
  implementations one at a time, in pluggy's order (``tryfirst`` first, ``trylast`` last, and
  otherwise the most recently registered first), and awaits each before calling the next — so
  a later implementation sees what an earlier one did. New-style wrappers
  (``hookimpl(wrapper=True)``, plain generator functions) wrap the whole walk as in pluggy;
  old-style ``hookwrapper=True`` implementations are refused at start-up, since pluggy itself
  does not await coroutines and their outcome object would hold un-awaited ones.

Plugins are registered in this order: built-ins in the order ``plugins.builtins`` lists them,
then installed entry-point packages, then ``plugins.modules``. With pluggy's
last-registered-first rule, a third-party plugin therefore runs before the built-ins unless it
marks itself ``trylast``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .context import Connection, EventContext, Identity, Principal
    from .events import Event, ServerEvent
    from .moderation import ModerationRule
    from .protocols import Bus
    from .recovery import Recovery
    from .routes import Route

PROJECT_NAME = "plugbus"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: Hooks that plugbus awaits one implementation at a time (see the module docstring).
AWAITED_HOOKS = frozenset(
    {
        "plugbus_authenticate",
        "plugbus_authenticate_request",
        "plugbus_authorize_join",
        "plugbus_startup",
        "plugbus_shutdown",
        "plugbus_connect",
        "plugbus_connected",
        "plugbus_disconnect",
        "plugbus_room_joined",
        "plugbus_room_left",
        "plugbus_moderate",
        "plugbus_handle_event",
        "plugbus_session_recovered",
        "plugbus_session_expired",
    }
)


@hookspec
def plugbus_register_events() -> list[type[Event] | ServerEvent]:
    """Declare the events this plugin accepts from clients, and those it sends to them.

    Called once at start-up, before the server listens. Collected: every implementation's list
    is registered. Not awaited (must be a plain function).

    :return: :class:`~plugbus.Event` subclasses (accepted from clients), each with a unique
        ``name``, and :class:`~plugbus.ServerEvent` declarations (sent to clients, for the
        exported contract). Registering a name another plugin already registered stops
        start-up with a message naming both.
    """


@hookspec
def plugbus_routes(bus: Bus) -> list[Route]:
    """Contribute REST endpoints.

    Called once at start-up while the REST door is built. Collected: every implementation's
    routes are added, in the order returned. Not awaited (must be a plain function).

    :param bus: the bus, for handlers to close over.
    :return: :class:`~plugbus.Route` objects; their handlers may be async.
    """


@hookspec
def plugbus_startup(bus: Bus) -> None:
    """The server is starting; open resources (connections, background tasks) here.

    Called once, after all plugins are loaded and before the first connection is accepted.
    Awaited, one implementation at a time. An exception stops start-up.

    :param bus: the bus.
    """


@hookspec
def plugbus_shutdown(bus: Bus) -> None:
    """The server is stopping; close what ``plugbus_startup`` opened.

    Called once, after the server stops accepting connections. Awaited, one implementation at
    a time. An exception is logged and the remaining implementations still run. All of them
    together get 1.5 s (``Bus.STOP_PHASE_S``): what is still running then is cancelled and the
    stop goes on (logged), so that a node exits within its grace period.

    :param bus: the bus.
    """


@hookspec
def plugbus_authenticate(connection: Connection, bus: Bus) -> Identity | None:
    """Establish who is behind a new connection, from its handshake.

    Called once per connection, before ``plugbus_connect``, with ``connection.auth`` holding
    the client's handshake ``auth`` payload exactly as sent (e.g. ``{"token": "..."}``; ``{}``
    stays ``{}``, None when none was sent), ``connection.headers`` its HTTP headers and
    ``connection.namespace`` the namespace it connects to. Awaited, one implementation at a time; the first
    non-None result wins and becomes ``connection.identity``. When every implementation
    returns None the connection is anonymous (``identity`` stays None).

    :param connection: the new connection.
    :param bus: the bus.
    :return: an :class:`~plugbus.Identity`, or None to leave the decision to others.
    :raises ConnectionDenied: to refuse the connection; its message reaches the client's
        ``connect_error`` (say why — missing, malformed, expired — never echo a secret).
    """


@hookspec
def plugbus_authenticate_request(headers: dict[str, str], bus: Bus) -> Principal | None:
    """Establish who is calling a REST route that needs a scope.

    Called once per REST request to a route whose ``scope`` is not None, before its handler.
    Awaited, one implementation at a time; the first non-None result wins. When every
    implementation returns None, REST authentication is off and the route is served (the
    development default).

    :param headers: the request headers, lower-cased names (``authorization`` holds
        ``Bearer <key>``).
    :param bus: the bus.
    :return: a :class:`~plugbus.Principal` whose ``scopes`` the route's scope is checked
        against (missing scope: 403), or None.
    :raises Unauthorized: no credentials, or wrong ones (401).
    """


@hookspec
def plugbus_authorize_join(connection: Connection, room: str, bus: Bus) -> None:
    """May this connection be in this room?

    Called by ``bus.join`` before a connection enters a room — from its own ``join-room`` or
    a server-side join over REST — and by ``bus.authorize_join`` when a connection that is not
    in the room lists its members or posts into it (the same rules guard all three). Awaited,
    one implementation at a time; the return value is ignored.

    :param connection: the connection (``connection.identity`` says who it is).
    :param room: the room.
    :param bus: the bus.
    :raises NotAllowed: to refuse; the join does not happen.
    """


@hookspec
def plugbus_connect(connection: Connection, bus: Bus) -> None:
    """A client is connecting; refuse it by raising :class:`~plugbus.ConnectionDenied`.

    Called once per connection, before it is accepted and before it can send events. Awaited,
    one implementation at a time; the first ``ConnectionDenied`` refuses the connection and
    skips the remaining implementations (their ``plugbus_disconnect`` is not called either).
    The return value is ignored. Plugins may store per-connection data in
    ``connection.state`` and may emit to ``connection.sid`` (e.g. a greeting). A client
    connected to two namespaces is two connections, each with its own sid and its own call.

    :param connection: the new connection (sid, namespace, remote address, handshake ``auth``
        payload).
    :param bus: the bus.
    """


@hookspec
def plugbus_connected(connection: Connection, bus: Bus) -> None:
    """A connection has been accepted and the client told so; greet it here.

    Called once per accepted connection, after every ``plugbus_connect`` let it in and after
    the client received its Socket.IO ``connect``, before the first event it sends is handled
    (so anything emitted here arrives first). Awaited, one implementation at a time; an
    exception is logged and the rest still run.

    :param connection: the accepted connection; emit to it with
        ``namespace=connection.namespace`` (``bus.emit`` uses the default namespace otherwise).
    :param bus: the bus.
    """


@hookspec
def plugbus_disconnect(connection: Connection, reason: str, bus: Bus) -> None:
    """A connection has closed.

    Called once per accepted connection, as it leaves: its rooms are still readable with
    ``bus.rooms_of(connection.sid)`` (they are dropped right after this hook). Awaited, one implementation at a time; an
    exception is logged and the rest still run.

    With a shared backend, the connections of a node that died (its heartbeat stopped) get
    this hook on the one surviving node that noticed, with reason ``"node lost"``: their rooms
    are readable with ``bus.rooms_of`` there too, ``suspended`` says whether their sessions
    are kept for recovery, and ``state`` is empty (it lived in the dead process).

    :param connection: the connection that left.
    :param reason: why, in python-socketio's words (``"client disconnect"``, ``"ping timeout"``, ...),
        or ``"node lost"``.
    :param bus: the bus.
    """


@hookspec
def plugbus_room_joined(connection: Connection, room: str, bus: Bus) -> None:
    """A connection has entered a room.

    Called after every successful ``bus.join`` — from a client's ``join-room`` or a server-side
    join over REST — once the connection is a member (so emits to the room reach it). Not
    called when the connection was already in the room. Awaited, one implementation at a
    time; an exception propagates to whoever asked for the join.

    :param connection: the connection that joined.
    :param room: the room.
    :param bus: the bus.
    """


@hookspec
def plugbus_room_left(connection: Connection, room: str, bus: Bus) -> None:
    """A connection has left a room by ``bus.leave`` (not when it disconnects: rooms are
    dropped wholesale then, and ``plugbus_disconnect`` runs instead).

    Called after the connection stopped being a member. Awaited, one implementation at a
    time; an exception propagates to whoever asked for the leave.

    :param connection: the connection that left.
    :param room: the room.
    :param bus: the bus.
    """


@hookspec
def plugbus_moderation_rules(bus: Bus) -> list[ModerationRule]:
    """Add rules to the built-in moderation plugin's pipeline.

    Called once, the first time ``bus.moderation_rules`` is read (the built-in moderation
    plugin reads it in its ``plugbus_startup``). Collected:
    every implementation's rules join the pipeline after the built-in rules, and are
    switched on, off and given an action (refuse, mask, drop) in that plugin's ``rules``
    settings by their ``name``, like the built-in ones. Not awaited (must be a plain function).

    :param bus: the bus.
    :return: :class:`~plugbus.ModerationRule` objects with unique names.
    """


@hookspec
def plugbus_moderate(event: Event, ctx: EventContext) -> Event | None:
    """Let an event through, change it, or veto it — before any plugin handles it.

    Called once per validated event, whichever door it came through. Awaited, one
    implementation at a time, in order; each sees the event as the previous one left it.

    :param event: the validated event.
    :param ctx: who sent it and how.
    :return: None to let it through unchanged, or a replacement event of the same type (e.g.
        with offending words masked), which the next implementations and the handler receive.
    :raises MessageRejected: to veto the event; the sender gets the error and nothing is
        delivered. Later implementations are not called.
    :raises EventDropped: to drop the event silently: nothing is delivered and the sender's
        ack reports success with no data. Later implementations are not called.
    """


@hookspec
def plugbus_handle_event(event: Event, ctx: EventContext) -> Any:
    """Carry out an event: join a room, deliver a message, answer a question.

    Called once per event that passed moderation. Awaited, one implementation at a time; the
    first non-None result wins and stops the call (so an implementation must return None for
    events that are not its own). The result is the sender's ack data.

    :param event: the (possibly moderated) event.
    :param ctx: who sent it and how; ``ctx.namespace`` is the namespace it arrived on.
    :return: the ack data (JSON-able) for the sender, or None if this is not your event. For
        an event with ``ack_style = "plain"`` the client's ack arguments are ``(null, result)``
        (a tuple result is several arguments).
    :raises PlugbusError: to refuse the event with a reason.
    """


@hookspec
def plugbus_session_recovered(connection: Connection, recovery: Recovery, bus: Bus) -> None:
    """A client came back within ``server.recovery.max_disconnection_s`` and its session was
    restored: same sid, its rooms (those whose join rules still admit it), identity and
    ``connection.data``; the events it missed have been sent to it, in order.

    Called instead of ``plugbus_connected`` for a recovered connection (``plugbus_authenticate``
    and ``plugbus_connect`` did run, with ``connection.recovered`` True, so a ban still
    refuses it), after the replay and before the first event the client sends is handled.
    ``plugbus_room_joined`` is not called for the restored rooms (nobody left them). Awaited,
    one implementation at a time; an exception is logged and the rest still run.

    :param connection: the recovered connection.
    :param recovery: what was restored (:class:`~plugbus.Recovery`: rooms, refused rooms, how
        many events were replayed, how long it was away, whether it moved node).
    :param bus: the bus.
    """


@hookspec
def plugbus_session_expired(connection: Connection, rooms: list[str], bus: Bus) -> None:
    """A session kept for recovery was not claimed within its window: the client is gone.

    ``plugbus_disconnect`` ran when the connection dropped, with ``connection.suspended``
    True; what a plugin defers until the client is really gone (a "left" notice, say) it
    does here. Called once, on the node that kept the session, ``max_disconnection_s`` after
    the drop (not when that node stopped meanwhile). Awaited, one implementation at a time;
    an exception is logged and the rest still run.

    :param connection: the session as it was when it dropped (no longer live: emitting to
        its sid reaches nobody).
    :param rooms: the rooms it was in.
    :param bus: the bus.
    """
