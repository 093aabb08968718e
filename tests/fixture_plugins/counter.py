# tests/fixture_plugins/counter.py
"""counter: a count shared by every node (the worked example of docs/plugins/bus.md)."""

from __future__ import annotations

from typing import Any

from plugbus import Bus, Plugin, Route, RouteRequest, hookimpl


class CounterPlugin(Plugin):
    """``POST /counter/{name}`` adds one, ``GET /counter/{name}`` reads: on any node."""

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        # The plugin's own store: in Redis when server.backend is a Redis URL, so every
        # node counts in the same key; in this process's memory otherwise.
        store = bus.store("counter")

        async def add(req: RouteRequest) -> dict[str, Any]:
            name = req.path_params["name"]
            return {"name": name, "count": await store.incr(f"count:{name}")}

        async def read(req: RouteRequest) -> dict[str, Any]:
            name = req.path_params["name"]
            return {"name": name, "count": await store.get(f"count:{name}") or 0}

        return [
            Route("POST", "/counter/{name}", add, scope="publish", summary="Count one"),
            Route("GET", "/counter/{name}", read, scope="read", summary="Read a count"),
        ]
