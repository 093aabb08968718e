"""The hook recorder: :class:`HookRecorder` and the plugin that feeds it, :class:`HookRecorderPlugin`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from plugbus.core import Plugin, PluginSettings, hookimpl
from plugbus.core import hookspecs as _hookspecs
from plugbus.testing.calls import HookCall, HookCalls

if TYPE_CHECKING:
    import pluggy

#: The name the hook recorder is registered under (it shows in ``GET /plugins``).
RECORDER_NAME = "hook-recorder"
_RECORDERS: dict[str, HookRecorder] = {}
# The dotted path the kit loads the recorder plugin by: the package, which re-exports it.
_RECORDER_TARGET = "plugbus.testing:HookRecorderPlugin"


class HookRecorder(HookCalls):
    """Records every hook call of one server's plugin manager, as it happens.

    Filled by :class:`HookRecorderPlugin`, a plugin whose implementations of every hook are
    ``tryfirst`` new-style wrappers: they run around all other implementations (and around
    other ``tryfirst`` wrappers, being registered last), for the hooks pluggy calls and for
    the awaited hooks plugbus walks itself alike. A call is recorded when it starts, and
    marked done with its result or error when it returns.
    """

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()
        self._pm: pluggy.PluginManager | None = None

    def clear(self) -> None:
        """Forget the calls recorded so far (e.g. the start-up hooks)."""
        self._calls.clear()

    def impl_order(self, name: str) -> list[str]:
        """The implementations hook ``name`` calls, in call order, as ``"plugin:function"``.

        This is pluggy's order (``tryfirst`` first, ``trylast`` last, otherwise the most
        recently registered first), wrappers left out. An implementation may stop the walk
        early: a veto, or the first answer of ``plugbus_handle_event``.
        """
        if self._pm is None:
            raise RuntimeError("the recorder is not attached to a server yet")
        impls = reversed(getattr(self._pm.hook, name).get_hookimpls())
        return [
            f"{i.plugin_name}:{i.function.__name__}"
            for i in impls
            if not (i.wrapper or i.hookwrapper)
        ]

    async def wait_for(
        self, name: str, *, sid: str | None = None, count: int = 1, timeout: float = 5.0
    ) -> HookCall:
        """Wait until hook ``name`` (about connection ``sid``, if given) has returned ``count``
        times, and return that call. Useful for hooks the server runs on its own time, such
        as ``plugbus_disconnect`` after a client left.

        :raises AssertionError: not within ``timeout`` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            done = [
                c
                for c in self._calls
                if c.name == name and c.done and (sid is None or c.sid == sid)
            ]
            if len(done) >= count:
                return done[count - 1]
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"{name} returned {len(done)} times, wanted {count}; recorded: {self.names()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _record(self, name: str, kwargs: dict[str, Any]) -> Generator[None, Any, Any]:
        call = HookCall(name, kwargs)
        self._calls.append(call)
        try:
            result = yield
        except BaseException as exc:
            call.error, call.done = exc, True
            self._changed.set()
            raise
        call.result, call.done = result, True
        self._changed.set()
        return result


def _hook_argnames() -> dict[str, tuple[str, ...]]:
    """Every hookspec's name and argument names, read from the hook contract itself."""
    marker = f"{_hookspecs.PROJECT_NAME}_spec"
    return {
        name: tuple(inspect.signature(func).parameters)
        for name, func in vars(_hookspecs).items()
        if name.startswith("plugbus_") and callable(func) and hasattr(func, marker)
    }


def _recording_wrapper(
    recorder: HookRecorder, name: str, argnames: tuple[str, ...]
) -> Callable[..., Any]:
    # pluggy reads an implementation's argument names from its code object, so the wrapper
    # is compiled with the hookspec's own argument names (as dataclasses builds __init__).
    if not all(a.isidentifier() for a in (name, *argnames)):
        raise ValueError(f"unexpected hook signature {name}{argnames}")
    source = (
        f"def {name}({', '.join(argnames)}):\n"
        f"    return (yield from _record(_name, {{{', '.join(f'{a!r}: {a}' for a in argnames)}}}))\n"
    )
    namespace: dict[str, Any] = {"_record": recorder._record, "_name": name}
    exec(source, namespace)
    function = namespace[name]
    function.__doc__ = f"Record each call of ``{name}`` (a tryfirst new-style wrapper)."
    return hookimpl(wrapper=True, tryfirst=True)(function)  # type: ignore[no-any-return]


class HookRecorderPlugin(Plugin):
    """The plugin that feeds a :class:`HookRecorder`: a ``tryfirst`` wrapper on every hook.

    The test kit loads it by dotted path, last in ``plugins.modules`` under the name
    ``hook-recorder``, so it goes through the same loader as every plugin. Its setting
    ``recorder`` names the recorder it feeds.
    """

    class Settings(PluginSettings):
        """``recorder``: the id of the :class:`HookRecorder` to feed."""

        recorder: str

    def __init__(self, settings: PluginSettings) -> None:
        super().__init__(settings)
        recorder = _RECORDERS[settings.recorder]  # type: ignore[attr-defined]
        for name, argnames in _hook_argnames().items():
            setattr(self, name, _recording_wrapper(recorder, name, argnames))
