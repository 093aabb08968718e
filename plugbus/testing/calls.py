"""Recorded hook calls: :class:`HookCall` (one call) and :class:`HookCalls` (a queryable list)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, overload


class HookCall:
    """One recorded hook call: its name, its arguments and, once it returned, its outcome.

    Arguments are also attributes (``call.event``, ``call.connection``), as in pytest's
    ``HookRecorder``. They are the live objects the hook received (a later change to, say,
    ``connection.state`` shows here too); for ``plugbus_moderate``, ``event`` is the event
    before moderation and ``result`` the event after it.

    :ivar name: the hook's name, e.g. ``"plugbus_moderate"``.
    :ivar kwargs: the arguments by name.
    :ivar result: what the call returned (for awaited hooks: what plugbus made of the walk).
    :ivar error: the exception the call raised, or None.
    :ivar done: False while the call is still running.
    """

    def __init__(self, name: str, kwargs: dict[str, Any]) -> None:
        self.name = name
        self.kwargs = kwargs
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["kwargs"][key]
        except KeyError:
            raise AttributeError(f"{self.name} has no argument {key!r}") from None

    @property
    def sid(self) -> str | None:
        """The connection the call is about (``connection.sid`` or ``ctx.sid``), or None."""
        connection = self.kwargs.get("connection")
        if connection is None:
            connection = getattr(self.kwargs.get("ctx"), "connection", None)
        return getattr(connection, "sid", None)

    def __repr__(self) -> str:
        args = ", ".join(sorted(self.kwargs))
        state = f"error={self.error!r}" if self.error else ("done" if self.done else "running")
        return f"<HookCall {self.name}({args}) {state}>"


class HookCalls(Sequence[HookCall]):
    """A list of recorded hook calls, in the order they started, with ways to query it."""

    def __init__(self, calls: Iterable[HookCall] = ()) -> None:
        self._calls = list(calls)

    @overload
    def __getitem__(self, index: int) -> HookCall: ...
    @overload
    def __getitem__(self, index: slice) -> HookCalls: ...
    def __getitem__(self, index: int | slice) -> HookCall | HookCalls:
        if isinstance(index, slice):
            return HookCalls(self._calls[index])
        return self._calls[index]

    def __len__(self) -> int:
        return len(self._calls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.names()!r})"

    @property
    def calls(self) -> list[HookCall]:
        """The calls, as a plain list (a copy)."""
        return list(self._calls)

    def names(self) -> list[str]:
        """The hook names, in call order."""
        return [call.name for call in self._calls]

    def getcalls(self, names: str | Iterable[str]) -> HookCalls:
        """The calls of the given hooks (a list, or one string of space-separated names)."""
        wanted = set(names.split() if isinstance(names, str) else names)
        return HookCalls(call for call in self._calls if call.name in wanted)

    def getcall(self, name: str) -> HookCall:
        """The one call of hook ``name``.

        :raises AssertionError: it was called no times, or more than once.
        """
        found = self.getcalls(name)
        if len(found) != 1:
            raise AssertionError(f"expected 1 call of {name}, found {len(found)}: {self.names()}")
        return found[0]

    def for_connection(self, sid: str) -> HookCalls:
        """The calls about one connection (their ``connection`` or ``ctx.connection``)."""
        return HookCalls(call for call in self._calls if call.sid == sid)

    def assert_order(self, names: Sequence[str]) -> None:
        """Assert that hooks ``names`` were called in this order (other calls may come between).

        :raises AssertionError: naming the first hook not found after the previous one.
        """
        recorded = self.names()
        position = 0
        for name in names:
            try:
                position = recorded.index(name, position) + 1
            except ValueError:
                raise AssertionError(
                    f"{name} was not called after {names[: names.index(name)] or 'the start'}; "
                    f"recorded: {recorded}"
                ) from None
