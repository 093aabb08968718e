"""The only caller of plugbus's hooks: typed methods, one per hook, with plugbus's call semantics.

pluggy calls implementations synchronously and would hand back un-awaited coroutines from
``async def`` hooks (pluggy issues #320, #378). This module therefore holds a port of pluggy's
call loop (``pluggy._execution._multicall`` of pluggy 1.7): the same implementation order
(tryfirst/trylast, then registration), the same argument passing, and the same wrapper
semantics — new-style wrappers set up outermost first, torn down innermost first, each seeing
the result or the exception of everything inside it, a wrapper that does not yield or yields
twice reported as pluggy reports it. The awaited hooks use an async copy of that loop that
awaits each implementation before calling the next; the collected hooks use the synchronous
copy, which also tells which plugin declared what.

Every call is visible to pluggy's monitoring: :class:`PluginManager` is pluggy's, and the
monitors given to its ``add_hookcall_monitoring`` (pluggy's ``enable_tracing`` too) are called
around every hook call plugbus makes, with pluggy's arguments and a :class:`pluggy.Result`.
``PLUGBUS_TRACE_HOOKS=1`` installs such a monitor that logs every hook call and every
implementation it ran, with the plugin and the duration (logger ``plugbus.trace``).
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import logging
import os
import time
import types
import warnings
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, cast

import pluggy

if TYPE_CHECKING:
    from .bus import Bus
    from .context import Connection, EventContext, Identity, Principal
    from .events import Event, ServerEvent
    from .moderation import ModerationRule
    from .recovery import Recovery
    from .routes import Route

log = logging.getLogger("plugbus.hooks")
trace_log = logging.getLogger("plugbus.trace")

#: The environment variable that switches hook tracing on (``1``).
TRACE_ENV = "PLUGBUS_TRACE_HOOKS"

Before = Callable[[str, Sequence[pluggy.HookImpl], Mapping[str, object]], None]
After = Callable[[pluggy.Result[Any], str, Sequence[pluggy.HookImpl], Mapping[str, object]], None]
_Teardown = Generator[None, object, object]


class PluginManager(pluggy.PluginManager):
    """pluggy's plugin manager, whose hook-call monitors also see the hooks plugbus calls itself.

    ``add_hookcall_monitoring`` (and so ``enable_tracing``) works as in pluggy for calls made
    through ``pm.hook``, and the same monitors are called around every call of
    :class:`Hooks`, awaited hooks included.
    """

    def __init__(self, project_name: str) -> None:
        super().__init__(project_name)
        #: ``(before, after)`` pairs in the order added; read by :class:`Hooks` on every call.
        self.hookcall_monitors: list[tuple[Before, After]] = []

    def add_hookcall_monitoring(self, before: Before, after: After) -> Callable[[], None]:
        """pluggy's ``add_hookcall_monitoring``, for plugbus's own calls as well.

        :return: an undo function that removes the monitor again.
        """
        undo_pluggy = super().add_hookcall_monitoring(before, after)
        pair = (before, after)
        self.hookcall_monitors.append(pair)

        def undo() -> None:
            undo_pluggy()
            with contextlib.suppress(ValueError):
                self.hookcall_monitors.remove(pair)

        return undo


class _Impl:
    """One implementation as plugbus calls it: known once, so a call needs no inspection."""

    __slots__ = ("argnames", "function", "hookimpl", "is_async", "kwargnames", "plugin_name")

    def __init__(self, hookimpl: pluggy.HookImpl) -> None:
        self.hookimpl = hookimpl
        self.function: Callable[..., Any] = hookimpl.function
        self.argnames = tuple(hookimpl.argnames)
        self.kwargnames = tuple(hookimpl.kwargnames)
        self.plugin_name = hookimpl.plugin_name
        self.is_async = inspect.iscoroutinefunction(hookimpl.function)

    def call(self, kwargs: Mapping[str, Any]) -> Any:
        """Call it with the arguments it names, as pluggy does (keyword arguments with
        defaults only when the caller has them)."""
        try:
            args = [kwargs[name] for name in self.argnames]
        except KeyError as exc:
            raise pluggy.HookCallError(f"hook call must provide argument {exc.args[0]!r}") from exc
        if self.kwargnames:
            kw = {name: kwargs[name] for name in self.kwargnames if name in kwargs}
            if kw:
                return self.function(*args, **kw)
        return self.function(*args)


class _Call:
    """One plain implementation on the per-event path, with what a call needs known once."""

    __slots__ = (
        "argnames",
        "entry",
        "function",
        "is_async",
        "join_pair",
        "pair",
        "plugin_name",
        "samples",
    )

    def __init__(self, impl: _Impl) -> None:
        self.function = impl.function
        self.argnames = impl.argnames
        self.is_async = impl.is_async
        self.plugin_name = impl.plugin_name
        #: takes exactly ``(event, ctx)``: called without building an argument list
        self.pair = impl.argnames == ("event", "ctx")
        #: takes exactly ``(connection, room)`` (``plugbus_authorize_join`` without the bus)
        self.join_pair = impl.argnames == ("connection", "room")
        #: its :class:`ImplTimings` entry and the durations not counted into it yet,
        #: fetched at its first timed call
        self.entry: list[Any] | None = None
        self.samples: list[float] | None = None


class _Hook:
    """A snapshot of one hook's implementations (plugins are fixed once the bus is built)."""

    __slots__ = ("fast", "impls", "name", "plain", "wrappers")

    def __init__(self, caller: pluggy.HookCaller) -> None:
        self.name: str = caller.name
        #: pluggy's list, in pluggy's order (the last is called first), as monitors receive it.
        self.impls = caller.get_hookimpls()
        ordered = [_Impl(i) for i in reversed(self.impls)]
        self.wrappers = [i for i in ordered if i.hookimpl.wrapper or i.hookimpl.hookwrapper]
        self.plain = [i for i in ordered if not (i.hookimpl.wrapper or i.hookimpl.hookwrapper)]
        #: the plain implementations for the per-event path when the hook has no wrappers
        #: (None when one takes keyword arguments or there are wrappers: the full loop runs)
        self.fast: list[_Call] | None = (
            None
            if self.wrappers or any(i.kwargnames for i in self.plain)
            else [_Call(i) for i in self.plain]
        )


# -- pluggy's call loop, ported ------------------------------------------------------------


def _raise_wrapfail(gen: _Teardown, msg: str) -> NoReturn:
    co = cast("Any", gen).gi_code  # a generator's code object (typing's Generator lacks it)
    raise RuntimeError(
        f"wrap_controller at {co.co_name!r} {co.co_filename}:{co.co_firstlineno} {msg}"
    )


def _old_style_wrapper(impl: _Impl, hook_name: str, kwargs: Mapping[str, Any]) -> _Teardown:
    """pluggy's ``run_old_style_hookwrapper``: an old-style wrapper as a new-style one."""
    teardown = cast("_Teardown", impl.call(kwargs))
    try:
        next(teardown)
    except StopIteration:
        _raise_wrapfail(teardown, "did not yield")
    try:
        res = yield
        result: pluggy.Result[Any] = pluggy.Result(res, None)
    except BaseException as exc:
        result = pluggy.Result(None, exc)
    try:
        teardown.send(result)
    except StopIteration:
        pass
    except BaseException as e:
        warnings.warn(
            pluggy.PluggyTeardownRaisedWarning(
                "A plugin raised an exception during an old-style hookwrapper teardown.\n"
                f"Plugin: {impl.plugin_name}, Hook: {hook_name}\n{type(e).__name__}: {e}"
            ),
            stacklevel=2,
        )
        raise
    else:
        _raise_wrapfail(teardown, "has second yield")
    finally:
        teardown.close()
    return result.get_result()


def _setup_wrappers(hook: _Hook, kwargs: Mapping[str, Any], teardowns: list[_Teardown]) -> None:
    """Run each wrapper up to its ``yield``, outermost first (pluggy's setup loop)."""
    for impl in hook.wrappers:
        if impl.hookimpl.hookwrapper:
            gen = _old_style_wrapper(impl, hook.name, kwargs)
            next(gen)
        else:
            gen = cast("_Teardown", impl.call(kwargs))
            try:
                next(gen)
            except StopIteration:
                _raise_wrapfail(gen, "did not yield")
        teardowns.append(gen)


def _teardown_wrappers(
    teardowns: list[_Teardown],
    result: Any,
    exception: BaseException | None,
    seen: Callable[[int, Any], None] | None = None,
) -> Any:
    """Hand the result (or the exception) to each wrapper, innermost first, exactly as pluggy's
    ``_multicall`` does; ``seen(index, result)`` learns what each wrapper returned."""
    for index in range(len(teardowns) - 1, -1, -1):
        teardown = teardowns[index]
        try:
            if exception is not None:
                try:
                    teardown.throw(exception)
                except RuntimeError as re:
                    # a StopIteration thrown into a generator comes out as RuntimeError (#544)
                    if isinstance(exception, StopIteration) and re.__cause__ is exception:
                        teardown.close()
                        continue
                    raise
            else:
                teardown.send(result)
            teardown.close()
        except StopIteration as si:
            result = si.value
            exception = None
            if seen is not None:
                seen(index, result)
            continue
        except BaseException as e:
            exception = e
            continue
        _raise_wrapfail(teardown, "has second yield")
    if exception is not None:
        raise exception
    return result


# -- the walks: what the plain implementations' results make ----------------------------------


#: upper bounds, in seconds, of the duration buckets of :class:`ImplTimings`
TIMING_BOUNDS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)


class ImplTimings:
    """How long each plugin's implementation of each hook took: per ``(hook, plugin)`` the
    number of calls, their total seconds, and the calls per duration bucket
    (:data:`TIMING_BOUNDS`, then one for longer). Plain numbers, so that timing a call costs a
    dict update; a metrics exporter reads them when it is scraped.

    The per-event walks append each duration to a list of their own instead (one append per
    call); the durations are counted into the numbers, in the order they were taken, when
    :attr:`stats` is read or a list reaches :data:`FOLD_AT`."""

    def __init__(self) -> None:
        self._stats: dict[tuple[str, str], list[Any]] = {}
        #: each per-event call's entry and the durations not counted into it yet
        self._pending: list[tuple[list[Any], list[float]]] = []

    @property
    def stats(self) -> dict[tuple[str, str], list[Any]]:
        """``(hook, plugin)`` -> ``[calls, seconds, per bucket]``, every call counted."""
        for entry, samples in self._pending:
            if samples:
                _count(entry, samples)
        return self._stats

    def entry(self, hook: str, plugin: str) -> list[Any]:
        """The ``[calls, seconds, per bucket]`` of ``plugin``'s ``hook``, made on first use."""
        entry = self._stats.get((hook, plugin))
        if entry is None:
            entry = self._stats[(hook, plugin)] = [0, 0.0, [0] * (len(TIMING_BOUNDS) + 1)]
        return entry

    def durations(self, hook: str, plugin: str) -> tuple[list[Any], list[float]]:
        """The entry of ``plugin``'s ``hook`` and a list for a per-event walk to append its
        durations to (counted into the entry when :attr:`stats` is read)."""
        pending: tuple[list[Any], list[float]] = (self.entry(hook, plugin), [])
        self._pending.append(pending)
        return pending

    def add(self, hook: str, plugin: str, seconds: float) -> None:
        """Count one call of ``plugin``'s ``hook`` that took ``seconds``."""
        entry = self.entry(hook, plugin)
        entry[0] += 1
        entry[1] += seconds
        entry[2][bisect.bisect_left(TIMING_BOUNDS, seconds)] += 1


#: durations a per-event call keeps at most before they are counted (memory stays bounded
#: between two scrapes)
FOLD_AT = 1024


def _count(entry: list[Any], samples: list[float]) -> None:
    """Count ``samples`` into ``entry`` one by one, as :meth:`ImplTimings.add` would have
    (the same float additions in the same order), and empty the list."""
    entry[0] += len(samples)
    total = entry[1]
    buckets = entry[2]
    for seconds in samples:
        total += seconds
        buckets[bisect.bisect_left(TIMING_BOUNDS, seconds)] += 1
    entry[1] = total
    samples.clear()


_perf_counter = time.perf_counter
_Coroutine = types.CoroutineType


class _Done:
    """An awaitable that is already done (None): what a walk that had nothing to await
    returns, instead of a coroutine made only to be awaited."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # a generator function, finished at its first step


#: the one done awaitable (callers may skip awaiting it: ``is DONE``)
DONE = _DONE = _Done()


def _timed(timings: ImplTimings, hook: str, call: _Call, started: float) -> None:
    """Count one per-event call of ``call``: its duration appended to the call's list (made
    once, then kept), counted into its entry later (:class:`ImplTimings`)."""
    seconds = _perf_counter() - started
    samples = call.samples
    if samples is None:
        call.entry, samples = timings.durations(hook, call.plugin_name)
        call.samples = samples
    samples.append(seconds)
    if len(samples) >= FOLD_AT:
        _count(call.entry, samples)  # type: ignore[arg-type]  # set with samples


class Hooks:
    """Typed entry points to every hook, built once per application from its plugin manager."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._hooks = {
            name: _Hook(caller)
            for name, caller in vars(pm.hook).items()
            if isinstance(caller, pluggy.HookCaller)
        }
        monitors = getattr(pm, "hookcall_monitors", None)
        #: the live list of monitors (empty: no monitoring, the per-event path stays lean)
        self._monitors: list[tuple[Before, After]] = monitors if monitors is not None else []
        self._trace = os.environ.get(TRACE_ENV, "") not in ("", "0")
        #: per-implementation timings, once :meth:`time_implementations` asked for them
        self.timings: ImplTimings | None = None
        self._timed = self._trace
        if self._trace:
            trace_log.setLevel(logging.INFO)
            pm.add_hookcall_monitoring(_trace_before, _trace_after)
        self._handle = self._hooks["plugbus_handle_event"]
        authorize = self._hooks["plugbus_authorize_join"].fast
        #: authorize_join's implementations when none is ``async def`` (they run in the call)
        self._authorize_sync = (
            authorize if authorize is not None and not any(c.is_async for c in authorize) else None
        )
        self._moderate = self._hooks["plugbus_moderate"]

    # -- calling, with monitors ------------------------------------------------------------

    def time_implementations(self) -> ImplTimings:
        """Start timing every implementation call (for metrics); the timings it returns fill
        from then on. Costs two clock reads and a dict update per implementation call."""
        if self.timings is None:
            self.timings = ImplTimings()
            self._timed = True
        return self.timings

    def _done(self, hook: _Hook, impl: _Impl, started: float) -> None:
        if self._trace:
            _trace_impl(hook.name, impl, started)
        if self.timings is not None:
            self.timings.add(hook.name, impl.plugin_name, time.perf_counter() - started)

    def _invoke(self, hook: _Hook, impl: _Impl, kwargs: Mapping[str, Any]) -> Any:
        if not self._timed:
            return impl.call(kwargs)
        started = time.perf_counter()
        try:
            return impl.call(kwargs)
        finally:
            self._done(hook, impl, started)

    async def _ainvoke(self, hook: _Hook, impl: _Impl, kwargs: Mapping[str, Any]) -> Any:
        if not self._timed:
            value = impl.call(kwargs)
            if impl.is_async or (value is not None and inspect.isawaitable(value)):
                value = await value
            return value
        started = time.perf_counter()
        try:
            value = impl.call(kwargs)
            if impl.is_async or (value is not None and inspect.isawaitable(value)):
                value = await value
            return value
        finally:
            self._done(hook, impl, started)

    def _monitored_sync(
        self, hook: _Hook, kwargs: Mapping[str, Any], run: Callable[[], Any], depth: int
    ) -> Any:
        """pluggy's nesting of monitors: the last added is outermost."""
        if depth < 0:
            return run()
        before, after = self._monitors[depth]
        before(hook.name, hook.impls, kwargs)
        outcome = pluggy.Result.from_call(
            lambda: self._monitored_sync(hook, kwargs, run, depth - 1)
        )
        after(outcome, hook.name, hook.impls, kwargs)
        return outcome.get_result()

    async def _monitored(
        self, hook: _Hook, kwargs: Mapping[str, Any], run: Callable[[], Any], depth: int
    ) -> Any:
        if depth < 0:
            return await run()
        before, after = self._monitors[depth]
        before(hook.name, hook.impls, kwargs)
        try:
            outcome: pluggy.Result[Any] = pluggy.Result(
                await self._monitored(hook, kwargs, run, depth - 1), None
            )
        except BaseException as exc:
            outcome = pluggy.Result(None, exc)
        after(outcome, hook.name, hook.impls, kwargs)
        return outcome.get_result()

    def _call_sync(
        self,
        hook: _Hook,
        kwargs: Mapping[str, Any],
        owners: dict[int, str] | None = None,
    ) -> list[Any]:
        """A collected hook: every implementation's non-None result, through the wrappers.
        With ``owners``, each result object's ``id`` is mapped to the plugin that returned it
        (a wrapper that adds a result is its owner)."""

        def run() -> list[Any]:
            teardowns: list[_Teardown] = []
            results: list[Any] = []
            exception: BaseException | None = None
            try:
                _setup_wrappers(hook, kwargs, teardowns)
                for impl in hook.plain:
                    res = self._invoke(hook, impl, kwargs)
                    if res is not None:
                        results.append(res)
                        if owners is not None:
                            owners.setdefault(id(res), impl.plugin_name)
            except BaseException as exc:
                exception = exc

            def seen(index: int, result: Any) -> None:
                if owners is not None and isinstance(result, list):
                    for item in result:
                        owners.setdefault(id(item), hook.wrappers[index].plugin_name)

            return cast("list[Any]", _teardown_wrappers(teardowns, results, exception, seen))

        if self._monitors:
            return cast(
                "list[Any]", self._monitored_sync(hook, kwargs, run, len(self._monitors) - 1)
            )
        return run()

    async def _call(self, hook: _Hook, kwargs: Mapping[str, Any], walk: Callable[[], Any]) -> Any:
        """An awaited hook: ``walk`` (the plain implementations) inside the wrappers."""

        async def run() -> Any:
            teardowns: list[_Teardown] = []
            result: Any = None
            exception: BaseException | None = None
            try:
                _setup_wrappers(hook, kwargs, teardowns)
                result = await walk()
            except BaseException as exc:
                exception = exc
            return _teardown_wrappers(teardowns, result, exception)

        if self._monitors:
            return await self._monitored(hook, kwargs, run, len(self._monitors) - 1)
        if hook.wrappers:
            return await run()
        return await walk()

    async def _each(self, name: str, kwargs: dict[str, Any], *, keep_going: bool) -> None:
        hook = self._hooks[name]
        fast = hook.fast
        if fast is not None and not self._monitors and not self._trace:
            # authorize_join runs per event (posting into a room one is not in), connect and
            # connected per connection: just the calls
            timings = self.timings
            for call in fast:
                started = time.perf_counter() if timings is not None else 0.0
                try:
                    value = call.function(*[kwargs[a] for a in call.argnames])
                    if call.is_async or (value is not None and inspect.isawaitable(value)):
                        await value
                except Exception:
                    if not keep_going:
                        raise
                    log.exception("%s of plugin %r failed", name, call.plugin_name)
                if timings is not None:
                    _timed(timings, name, call, started)
            return

        async def walk() -> list[Any]:
            results = []  # what pluggy would hand the wrappers: the non-None results
            for impl in hook.plain:
                try:
                    result = await self._ainvoke(hook, impl, kwargs)
                except Exception:
                    if not keep_going:
                        raise
                    log.exception("%s of plugin %r failed", name, impl.plugin_name)
                else:
                    if result is not None:
                        results.append(result)
            return results

        await self._call(hook, kwargs, walk)

    async def _first(self, name: str, kwargs: dict[str, Any]) -> Any:
        hook = self._hooks[name]
        fast = hook.fast
        if fast is not None and not self._monitors and not self._trace:
            # authenticate runs per connection: just the calls, as _each's
            timings = self.timings
            for call in fast:
                started = time.perf_counter() if timings is not None else 0.0
                value = call.function(*[kwargs[a] for a in call.argnames])
                if call.is_async or (value is not None and inspect.isawaitable(value)):
                    value = await value
                if timings is not None:
                    _timed(timings, name, call, started)
                if value is not None:
                    return value
            return None

        async def walk() -> Any:
            for impl in hook.plain:
                result = await self._ainvoke(hook, impl, kwargs)
                if result is not None:
                    return result
            return None

        return await self._call(hook, kwargs, walk)

    # -- collected, synchronous hooks ------------------------------------------------------

    def register_events(self) -> list[tuple[str, type[Event] | ServerEvent]]:
        """Every event from every plugin's ``plugbus_register_events`` (called once), with
        the name of the plugin that declared it — for an event a wrapper added, the
        wrapper's plugin."""
        owners: dict[int, str] = {}
        results = self._call_sync(self._hooks["plugbus_register_events"], {}, owners)
        out: list[tuple[str, type[Event] | ServerEvent]] = []
        for result in results:
            owner = owners.get(id(result), "plugins")
            out.extend((owner, cls) for cls in result or [])
        return out

    def routes(self, bus: Bus) -> list[tuple[str, Route]]:
        """Every route, paired with the name of the plugin whose module — or package, for a
        plugin split into modules — defines its handler."""
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
        for result in self._call_sync(self._hooks["plugbus_routes"], {"bus": bus}):
            out.extend((owner(r), r) for r in result or [])
        return out

    def moderation_rules(self, bus: Bus) -> list[ModerationRule]:
        """Every rule from every plugin's ``plugbus_moderation_rules``."""
        out: list[ModerationRule] = []
        for result in self._call_sync(self._hooks["plugbus_moderation_rules"], {"bus": bus}):
            out.extend(result or [])
        return out

    # -- awaited hooks ----------------------------------------------------------------------

    async def authenticate(self, connection: Connection, bus: Bus) -> Identity | None:
        """``plugbus_authenticate``: in order, the first non-None identity wins."""
        return await self._first("plugbus_authenticate", {"connection": connection, "bus": bus})  # type: ignore[no-any-return]

    async def authenticate_request(self, headers: dict[str, str], bus: Bus) -> Principal | None:
        """``plugbus_authenticate_request``: in order, the first non-None principal wins."""
        return await self._first("plugbus_authenticate_request", {"headers": headers, "bus": bus})  # type: ignore[no-any-return]

    def authorize_join(self, connection: Connection, room: str, bus: Bus) -> Awaitable[None]:
        """``plugbus_authorize_join``: each awaited in order; ``NotAllowed`` propagates.
        (The walk's coroutine itself, for the caller to await: it runs per event, for posts
        into a room the sender is not in. When every implementation is synchronous, as the
        auth plugin's is, they run here, and what is returned is already done.)"""
        fast = self._authorize_sync
        if fast is None or self._monitors or self._trace:
            return self._each(
                "plugbus_authorize_join",
                {"connection": connection, "room": room, "bus": bus},
                keep_going=False,
            )
        timings = self.timings
        for index, call in enumerate(fast):
            started = _perf_counter() if timings is not None else 0.0
            if call.join_pair:
                value = call.function(connection, room)
            else:
                kwargs = {"connection": connection, "room": room, "bus": bus}
                value = call.function(*[kwargs[a] for a in call.argnames])
            if value is not None and inspect.isawaitable(value):
                # an implementation that returned an awaitable: the rest of the walk awaits
                return self._authorize_rest(value, fast, index, started, connection, room, bus)
            if timings is not None:
                _timed(timings, "plugbus_authorize_join", call, started)
        return _DONE

    async def _authorize_rest(
        self,
        pending: Awaitable[Any],
        fast: list[_Call],
        index: int,
        started: float,
        connection: Connection,
        room: str,
        bus: Bus,
    ) -> None:
        """:meth:`authorize_join` from the implementation at ``index``, whose result
        ``pending`` is to be awaited, on."""
        timings = self.timings
        await pending
        if timings is not None:
            _timed(timings, "plugbus_authorize_join", fast[index], started)
        kwargs = {"connection": connection, "room": room, "bus": bus}
        for call in fast[index + 1 :]:
            started = _perf_counter() if timings is not None else 0.0
            value = call.function(*[kwargs[a] for a in call.argnames])
            if value is not None and inspect.isawaitable(value):
                await value
            if timings is not None:
                _timed(timings, "plugbus_authorize_join", call, started)

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
        fast = self._moderate.fast
        if fast is not None and not self._monitors and not self._trace:
            # The per-event path: no wrapper, no monitor, nothing but the calls
            return await self._moderate_walk(fast, 0, event, ctx)
        hook = self._moderate
        kwargs = {"event": event, "ctx": ctx}

        async def walk() -> Event:
            moderated = event
            for impl in hook.plain:
                # a fresh dict: the monitors keep the arguments as the hook was called
                replaced = await self._ainvoke(hook, impl, {"event": moderated, "ctx": ctx})
                if replaced is not None:
                    moderated = _checked_replacement(impl.plugin_name, moderated, replaced)
            return moderated

        return await self._call(hook, kwargs, walk)  # type: ignore[no-any-return]

    def moderate_now(self, event: Event, ctx: EventContext) -> Event | Awaitable[Event]:
        """:meth:`moderate` without its coroutine while no implementation needs awaiting (the
        per-event path): the event as the walk left it, which has ``event``'s exact type, when
        the walk ran in the call; else an awaitable of it (the rest of the walk, or, with
        wrappers, an implementation with keyword arguments, monitors or tracing,
        :meth:`moderate` itself). Raises what the walk raises."""
        fast = self._moderate.fast
        if fast is None or self._monitors or self._trace:
            return self.moderate(event, ctx)
        # no wrapper, no monitor, nothing but the calls (each timed when metrics ask, with two
        # clock reads and a few additions)
        timings = self.timings
        for index, call in enumerate(fast):
            started = _perf_counter() if timings is not None else 0.0
            if call.pair:
                replaced = call.function(event, ctx)
            else:
                replaced = call.function(*[event if a == "event" else ctx for a in call.argnames])
            # a coroutine by its exact type first: inspect.isawaitable tries more
            if call.is_async or (
                replaced is not None
                and (type(replaced) is _Coroutine or inspect.isawaitable(replaced))
            ):
                return self._moderate_rest(replaced, fast, index, started, event, ctx)
            if timings is not None:
                _timed(timings, "plugbus_moderate", call, started)
            if replaced is not None:
                event = _checked_replacement(call.plugin_name, event, replaced)
        return event

    async def _moderate_rest(
        self,
        pending: Awaitable[Any],
        fast: list[_Call],
        index: int,
        started: float,
        event: Event,
        ctx: EventContext,
    ) -> Event:
        """:meth:`moderate_now` from the implementation at ``index``, whose result ``pending``
        is to be awaited, on: what the walk does from there."""
        timings = self.timings
        call = fast[index]
        replaced = await pending
        if timings is not None:
            _timed(timings, "plugbus_moderate", call, started)
        if replaced is not None:
            event = _checked_replacement(call.plugin_name, event, replaced)
        return await self._moderate_walk(fast, index + 1, event, ctx)

    async def _moderate_walk(
        self, fast: list[_Call], start: int, event: Event, ctx: EventContext
    ) -> Event:
        """The fast walk of ``plugbus_moderate`` from the implementation at ``start`` on, each
        awaited when it answers with an awaitable (and timed when metrics ask, with two clock
        reads and a few additions)."""
        timings = self.timings
        for call in fast[start:] if start else fast:
            started = _perf_counter() if timings is not None else 0.0
            if call.pair:
                replaced = call.function(event, ctx)
            else:
                replaced = call.function(*[event if a == "event" else ctx for a in call.argnames])
            # a coroutine by its exact type first: inspect.isawaitable tries more
            if call.is_async or (
                replaced is not None
                and (type(replaced) is _Coroutine or inspect.isawaitable(replaced))
            ):
                replaced = await replaced
            if timings is not None:
                _timed(timings, "plugbus_moderate", call, started)
            if replaced is not None:
                event = _checked_replacement(call.plugin_name, event, replaced)
        return event

    def handle_event_ends_with_result(self) -> bool:
        """Whether ``plugbus_handle_event``'s call ends as soon as an implementation returns
        a result: no wrapper, hook-call monitor or trace runs after it."""
        return self._handle.fast is not None and not self._monitors and not self._trace

    async def handle_event(self, event: Event, ctx: EventContext) -> Any:
        """``plugbus_handle_event``: in order, the first non-None result wins."""
        fast = self._handle.fast
        if fast is not None and not self._monitors and not self._trace:
            timings = self.timings
            for call in fast:
                started = _perf_counter() if timings is not None else 0.0
                if call.pair:
                    result = call.function(event, ctx)
                else:
                    result = call.function(*[event if a == "event" else ctx for a in call.argnames])
                if call.is_async or (
                    result is not None
                    and (type(result) is _Coroutine or inspect.isawaitable(result))
                ):
                    result = await result
                if timings is not None:
                    _timed(timings, "plugbus_handle_event", call, started)
                if result is not None:
                    return result
            return None
        return await self._first("plugbus_handle_event", {"event": event, "ctx": ctx})


def _checked_replacement(plugin_name: str, event: Event, replaced: Any) -> Event:
    if type(replaced) is not type(event):
        raise TypeError(
            f"plugbus_moderate of plugin {plugin_name!r} returned {type(replaced).__name__}; "
            f"expected None or a {type(event).__name__}"
        )
    return replaced


# -- tracing (PLUGBUS_TRACE_HOOKS=1) ---------------------------------------------------------

#: When each traced call started, by the identity of its arguments' dict (one per call).
_trace_started: dict[int, float] = {}


def _trace_before(
    hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, object]
) -> None:
    _trace_started[id(kwargs)] = time.perf_counter()


def _trace_after(
    outcome: pluggy.Result[Any],
    hook_name: str,
    impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, object],
) -> None:
    started = _trace_started.pop(id(kwargs), None)
    plugins = ", ".join(i.plugin_name for i in reversed(impls)) or "none"
    trace_log.info(
        "%s [%s] %s in %.3f ms",
        hook_name,
        plugins,
        "raised " + type(outcome.exception).__name__ if outcome.exception else "returned",
        (time.perf_counter() - started) * 1000 if started is not None else float("nan"),
    )


def _trace_impl(hook_name: str, impl: _Impl, started: float) -> None:
    trace_log.info(
        "%s: %s.%s took %.3f ms",
        hook_name,
        impl.plugin_name,
        impl.function.__name__,
        (time.perf_counter() - started) * 1000,
    )
