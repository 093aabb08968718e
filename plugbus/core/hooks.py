"""The only caller of ``pm.hook``: typed methods, one per hook, with plugbus's call semantics.

pluggy calls implementations synchronously and would hand back un-awaited coroutines from
``async def`` hooks (pluggy issues #320, #378). For the awaited hooks this module therefore
walks pluggy's own ordered implementation list itself — tryfirst/trylast and registration
order exactly as pluggy would use them — and awaits each implementation before calling the
next, so an async veto stops the chain before later implementations run and no coroutine is
ever left un-awaited. New-style wrappers (``hookimpl(wrapper=True)``, plain generators) wrap
the whole walk as they would in pluggy.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import pluggy

from .hookspecs import AWAITED_HOOKS

if TYPE_CHECKING:
    from .bus import Bus
    from .context import Connection, EventContext, Identity, Principal
    from .events import Event, ServerEvent
    from .moderation import ModerationRule
    from .recovery import Recovery
    from .routes import Route

log = logging.getLogger("plugbus.hooks")

_Impl = tuple[Callable[..., Any], tuple[str, ...], str]
#: An implementation as the awaited hooks call it: (function, argument names, plugin name,
#: whether it is an ``async def`` — known once, so a call needs no awaitable check).
_Plain = tuple[Callable[..., Any], tuple[str, ...], str, bool]


class _OrderedHook:
    """A snapshot of one hook's implementations in call order (plugins are fixed after start)."""

    __slots__ = ("name", "plain", "wrappers")

    def __init__(self, name: str, impls: list[pluggy.HookImpl]) -> None:
        self.name = name
        ordered = list(reversed(impls))  # pluggy's own call order
        self.wrappers: list[_Impl] = [
            (i.function, tuple(i.argnames), i.plugin_name) for i in ordered if i.wrapper
        ]
        self.plain: list[_Plain] = [
            (i.function, tuple(i.argnames), i.plugin_name, inspect.iscoroutinefunction(i.function))
            for i in ordered
            if not (i.wrapper or i.hookwrapper)
        ]

    async def run(self, kwargs: dict[str, Any], inner: Callable[[], Awaitable[Any]]) -> Any:
        if not self.wrappers:
            return await inner()
        gens = []
        for func, argnames, plugin in self.wrappers:
            gen = func(*[kwargs[a] for a in argnames])
            try:
                next(gen)
            except StopIteration:
                raise RuntimeError(
                    f"wrapper of {self.name} in plugin {plugin!r} did not yield"
                ) from None
            gens.append((gen, plugin))
        result: Any = None
        error: BaseException | None = None
        try:
            result = await inner()
        except BaseException as exc:  # handed to the wrappers, as pluggy does
            error = exc
        for gen, plugin in reversed(gens):
            try:
                if error is not None:
                    gen.throw(error)
                else:
                    gen.send(result)
            except StopIteration as stop:
                result, error = stop.value, None
            except BaseException as exc:
                error = exc
            else:
                error = RuntimeError(f"wrapper of {self.name} in plugin {plugin!r} yielded twice")
        if error is not None:
            raise error
        return result


async def _call(
    func: Callable[..., Any], argnames: tuple[str, ...], is_async: bool, kwargs: dict[str, Any]
) -> Any:
    """Call one implementation with the arguments it names; await what it returns when it is
    ``async def`` or (a plain function) returned an awaitable."""
    value = func(*[kwargs[a] for a in argnames])
    if is_async or inspect.isawaitable(value):
        return await value
    return value


class Hooks:
    """Typed entry points to every hook, built once per application from its plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._awaited = {
            name: _OrderedHook(name, getattr(pm.hook, name).get_hookimpls())
            for name in AWAITED_HOOKS
        }

    # -- collected, synchronous hooks ------------------------------------------------------

    def register_events(self) -> list[tuple[str, type[Event] | ServerEvent]]:
        """Every event class from every plugin's ``plugbus_register_events``, with the name of
        the plugin that registered it (pluggy makes the call, so wrappers apply)."""
        owners: dict[type[Event] | ServerEvent, str] = {}
        for impl in self._pm.hook.plugbus_register_events.get_hookimpls():
            if not (impl.wrapper or impl.hookwrapper):
                declared = cast("list[type[Event] | ServerEvent] | None", impl.function())
                for cls in declared or []:
                    owners.setdefault(cls, impl.plugin_name)
        out: list[tuple[str, type[Event] | ServerEvent]] = []
        results: list[list[type[Event] | ServerEvent] | None] = (
            self._pm.hook.plugbus_register_events()
        )
        for result in results:
            out.extend((owners.get(cls, "(a hook wrapper)"), cls) for cls in result or [])
        return out

    def routes(self, bus: Bus) -> list[tuple[str, Route]]:
        """Every route (pluggy makes the call, so wrappers apply), paired with the name of the
        plugin whose module — or package, for a plugin split into modules — defines its handler."""
        modules: list[tuple[str, str]] = []
        for name, plugin in self._pm.list_name_plugin():
            module = plugin.__name__ if inspect.ismodule(plugin) else type(plugin).__module__
            modules.append((module, name))
        modules.sort(key=lambda pair: -len(pair[0]))  # the most specific module first

        def owner(route: Route) -> str:
            where = getattr(route.handler, "__module__", "") or ""
            for module, name in modules:
                if where == module or where.startswith(module + "."):
                    return name
            return "plugins"

        out: list[tuple[str, Route]] = []
        for result in self._pm.hook.plugbus_routes(bus=bus):
            out.extend((owner(r), r) for r in result or [])
        return out

    # -- awaited hooks ----------------------------------------------------------------------

    async def _each(self, name: str, kwargs: dict[str, Any], *, keep_going: bool) -> None:
        hook = self._awaited[name]

        async def inner() -> None:
            for func, argnames, plugin, is_async in hook.plain:
                try:
                    await _call(func, argnames, is_async, kwargs)
                except Exception:
                    if not keep_going:
                        raise
                    log.exception("%s of plugin %r failed", name, plugin)

        await hook.run(kwargs, inner)

    async def _first(self, name: str, kwargs: dict[str, Any]) -> Any:
        hook = self._awaited[name]
        if hook.wrappers:
            return await hook.run(kwargs, lambda: self._first_plain(hook, kwargs))
        return await self._first_plain(hook, kwargs)

    @staticmethod
    async def _first_plain(hook: _OrderedHook, kwargs: dict[str, Any]) -> Any:
        # The per-event path (handle_event): no closure, no wrapper walk when there are none.
        for func, argnames, _plugin, is_async in hook.plain:
            result = func(*[kwargs[a] for a in argnames])
            if is_async or inspect.isawaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    async def authenticate(self, connection: Connection, bus: Bus) -> Identity | None:
        """``plugbus_authenticate``: in order, the first non-None identity wins."""
        return await self._first("plugbus_authenticate", {"connection": connection, "bus": bus})  # type: ignore[no-any-return]

    async def authenticate_request(self, headers: dict[str, str], bus: Bus) -> Principal | None:
        """``plugbus_authenticate_request``: in order, the first non-None principal wins."""
        return await self._first("plugbus_authenticate_request", {"headers": headers, "bus": bus})  # type: ignore[no-any-return]

    async def authorize_join(self, connection: Connection, room: str, bus: Bus) -> None:
        """``plugbus_authorize_join``: each awaited in order; ``NotAllowed`` propagates."""
        await self._each(
            "plugbus_authorize_join",
            {"connection": connection, "room": room, "bus": bus},
            keep_going=False,
        )

    async def startup(self, bus: Bus) -> None:
        """``plugbus_startup``: each implementation awaited in order; an error stops start-up."""
        await self._each("plugbus_startup", {"bus": bus}, keep_going=False)

    async def shutdown(self, bus: Bus) -> None:
        """``plugbus_shutdown``: each awaited in order; errors are logged, the rest still run."""
        await self._each("plugbus_shutdown", {"bus": bus}, keep_going=True)

    async def connect(self, connection: Connection, bus: Bus) -> None:
        """``plugbus_connect``: each awaited in order; ``ConnectionDenied`` propagates."""
        await self._each(
            "plugbus_connect", {"connection": connection, "bus": bus}, keep_going=False
        )

    async def connected(self, connection: Connection, bus: Bus) -> None:
        """``plugbus_connected``: each awaited in order; errors are logged."""
        await self._each(
            "plugbus_connected", {"connection": connection, "bus": bus}, keep_going=True
        )

    async def room_joined(self, connection: Connection, room: str, bus: Bus) -> None:
        """``plugbus_room_joined``: each awaited in order; errors propagate."""
        await self._each(
            "plugbus_room_joined",
            {"connection": connection, "room": room, "bus": bus},
            keep_going=False,
        )

    async def room_left(self, connection: Connection, room: str, bus: Bus) -> None:
        """``plugbus_room_left``: each awaited in order; errors propagate."""
        await self._each(
            "plugbus_room_left",
            {"connection": connection, "room": room, "bus": bus},
            keep_going=False,
        )

    def moderation_rules(self, bus: Bus) -> list[ModerationRule]:
        """Every rule from every plugin's ``plugbus_moderation_rules``."""
        out: list[ModerationRule] = []
        for result in self._pm.hook.plugbus_moderation_rules(bus=bus):
            out.extend(result or [])
        return out

    async def disconnect(self, connection: Connection, reason: str, bus: Bus) -> None:
        """``plugbus_disconnect``: each awaited in order; errors are logged."""
        await self._each(
            "plugbus_disconnect",
            {"connection": connection, "reason": reason, "bus": bus},
            keep_going=True,
        )

    async def session_recovered(self, connection: Connection, recovery: Recovery, bus: Bus) -> None:
        """``plugbus_session_recovered``: each awaited in order; errors are logged."""
        await self._each(
            "plugbus_session_recovered",
            {"connection": connection, "recovery": recovery, "bus": bus},
            keep_going=True,
        )

    async def session_expired(self, connection: Connection, rooms: list[str], bus: Bus) -> None:
        """``plugbus_session_expired``: each awaited in order; errors are logged."""
        await self._each(
            "plugbus_session_expired",
            {"connection": connection, "rooms": rooms, "bus": bus},
            keep_going=True,
        )

    async def moderate(self, event: Event, ctx: EventContext) -> Event:
        """``plugbus_moderate``: chained; returns the event as the last implementation left it."""
        hook = self._awaited["plugbus_moderate"]
        kwargs: dict[str, Any] = {"event": event, "ctx": ctx}
        if hook.wrappers:
            return await hook.run(kwargs, lambda: self._moderate_plain(hook, kwargs))  # type: ignore[no-any-return]
        return await self._moderate_plain(hook, kwargs)

    @staticmethod
    async def _moderate_plain(hook: _OrderedHook, kwargs: dict[str, Any]) -> Event:
        for func, argnames, plugin, is_async in hook.plain:
            replaced = func(*[kwargs[a] for a in argnames])
            if is_async or inspect.isawaitable(replaced):
                replaced = await replaced
            if replaced is not None:
                if type(replaced) is not type(kwargs["event"]):
                    raise TypeError(
                        f"plugbus_moderate of plugin {plugin!r} returned {type(replaced).__name__}; "
                        f"expected None or a {type(kwargs['event']).__name__}"
                    )
                kwargs["event"] = replaced
        return kwargs["event"]  # type: ignore[no-any-return]

    async def handle_event(self, event: Event, ctx: EventContext) -> Any:
        """``plugbus_handle_event``: in order, the first non-None result wins."""
        return await self._first("plugbus_handle_event", {"event": event, "ctx": ctx})
