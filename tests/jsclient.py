"""Drive the official JavaScript socket.io-client (tests/interop/driver.mjs) from pytest."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from pathlib import Path
from typing import Any

INTEROP = Path(__file__).resolve().parent / "interop"


def require_node() -> str:
    """The node executable; fails (never skips) when the interop client is not installed."""
    node = shutil.which("node")
    assert node, "node is not installed: scripts/test.sh installs what the tests need"
    assert (INTEROP / "node_modules" / "socket.io-client").is_dir(), (
        "tests/interop/node_modules is missing: run `npm ci` in tests/interop (scripts/test.sh does)"
    )
    return node


def to_wire(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$binary": base64.b64encode(value).decode()}
    if isinstance(value, list | tuple):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    return value


def from_wire(value: Any) -> Any:
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$binary"}:
            return base64.b64decode(value["$binary"])
        return {k: from_wire(v) for k, v in value.items()}
    return value


class JsClient:
    """One official socket.io-client in a node process, steered by JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self._next_id = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str) -> JsClient:
        proc = await asyncio.create_subprocess_exec(
            require_node(),
            str(INTEROP / "driver.mjs"),
            url,
            cwd=INTEROP,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(json.loads(raw))
            self._changed.set()

    async def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()

    async def wait(self, pred: Any, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        """Wait until ``count`` output lines satisfy ``pred``; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            hits = [line for line in self.lines if pred(line)]
            if len(hits) >= count:
                return hits
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"JS client: wanted {count} matching lines, got {self.lines!r}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def connect(self, **opts: Any) -> dict[str, Any]:
        await self.send(cmd="connect", opts=opts)
        [line] = await self.wait(lambda m: m["type"] in ("connect", "connect_error"))
        return line

    async def emit(self, event: str, *args: Any) -> None:
        await self.send(cmd="emit", event=event, args=to_wire(list(args)), ack=False)

    async def call(self, event: str, *args: Any) -> Any:
        self._next_id += 1
        call_id = self._next_id
        await self.send(cmd="emit", event=event, args=to_wire(list(args)), ack=True, id=call_id)
        [line] = await self.wait(lambda m: m["type"] == "ack" and m["id"] == call_id)
        assert not line.get("timeout"), f"no ack for {event!r}"
        reply = from_wire(line["args"])
        return reply[0] if len(reply) == 1 else reply

    def events(self, name: str) -> list[list[Any]]:
        return [
            from_wire(m["args"]) for m in self.lines if m["type"] == "event" and m["event"] == name
        ]

    async def wait_event(self, name: str, count: int = 1, timeout: float = 10.0) -> list[list[Any]]:
        await self.wait(lambda m: m["type"] == "event" and m["event"] == name, timeout, count)
        return self.events(name)

    async def close(self) -> None:
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
