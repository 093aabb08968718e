"""The ``plugbus`` command: serve, check a config, list plugins.

Exit status: 0 on success, 2 when the configuration or a plugin is wrong (the message, on
stderr, names the file, the key and what was expected).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

from pydantic import ValidationError

from plugbus.core import Bus, ConfigError, LoadedConfig, load_config, load_plugins
from plugbus.core.config import ServerSettings

log = logging.getLogger("plugbus")

#: Allocations between two collections of the youngest generation, once serving (see _serve).
GC_YOUNG_THRESHOLD = 20_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plugbus", description="A plugin-driven real-time event bus."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve Socket.IO and REST on one port")
    serve.add_argument(
        "--config", "-c", metavar="PATH", help="config file (default: the embedded config.yaml)"
    )
    serve.add_argument("--host", help="override server.host")
    serve.add_argument("--port", type=int, help="override server.port")

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate a config file and its plugins without serving"
    )
    check.add_argument(
        "path", nargs="?", metavar="PATH", help="config file (default: the embedded one)"
    )

    plugins = sub.add_parser("plugins", help="list the plugins a config loads")
    plugins.add_argument(
        "--config", "-c", metavar="PATH", help="config file (default: the embedded one)"
    )
    plugins.add_argument("--json", action="store_true", help="print JSON")
    schema = sub.add_parser("schema", help="print the event contract (AsyncAPI 3) without serving")
    schema.add_argument(
        "--config", "-c", metavar="PATH", help="config file (default: the embedded one)"
    )
    schema.add_argument("--event", metavar="NAME", help="print one event's JSON Schemas instead")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``plugbus`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "config":
            return _check(args.path)
        if args.command == "plugins":
            return _plugins(args)
        if args.command == "schema":
            return _schema(args)
    except ConfigError as exc:
        print(f"plugbus: {exc}", file=sys.stderr)
        return 2
    return 1  # pragma: no cover - argparse refuses unknown commands


def _check(path: str | None) -> int:
    """Build the application ``serve`` would run — load and configure every plugin, register
    their events, build their routes — and run its start-up and shutdown, where plugins check
    what only they know (the moderation plugin its rule names, say); nothing is served."""
    loaded = load_config(path)
    plugins = load_plugins(loaded)
    # Imported once the config and the plugins' settings are known to be good: a mistake in
    # them is reported before FastAPI, python-socketio and the doors load (most of start-up).
    import asyncio

    from .app import create_app

    app = create_app(loaded, plugins)
    error = asyncio.run(_start_and_stop(app.rest))
    if error is not None:
        print(f"plugbus: {error}", file=sys.stderr)
        return 2
    infos = app.bus.plugins
    names = ", ".join(p.name for p in infos) or "none"
    print(f"{loaded.path}: OK ({len(infos)} plugins: {names})")
    return 0


async def _start_and_stop(rest: Any) -> str | None:
    """Run the ASGI lifespan's start-up and shutdown once; what failed, or None. The plugins'
    own log lines (start-up warnings) are held back: the check's answer is its one line."""
    logging.disable(logging.CRITICAL)
    try:
        async with rest.router.lifespan_context(rest):
            pass
    except ConfigError as exc:
        return str(exc)
    except Exception as exc:
        return f"start-up failed: {type(exc).__name__}: {exc}"
    finally:
        logging.disable(logging.NOTSET)
    return None


def _plugins(args: argparse.Namespace) -> int:
    loaded = load_config(args.config)
    infos = load_plugins(loaded).plugins
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    for info in infos:
        print(f"{info.name}  [{info.source}]  {info.version or '-'}  {info.target}")
        print(f"    hooks: {', '.join(info.hooks) or '-'}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from plugbus.core.contract import asyncapi_document, event_schemas

    from .app import _version

    loaded = load_config(args.config)
    bus = Bus(loaded.config, load_plugins(loaded))
    if args.event:
        schemas = event_schemas(bus)
        if args.event not in schemas:
            print(
                f"plugbus: no event named {args.event!r} (known: {', '.join(sorted(schemas))})",
                file=sys.stderr,
            )
            return 2
        print(json.dumps({"name": args.event, **schemas[args.event]}, indent=2))
        return 0
    print(json.dumps(asyncapi_document(bus, version=_version()), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    loaded: LoadedConfig = load_config(args.config)
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if overrides:
        try:
            loaded.config.server = ServerSettings.model_validate(
                {**loaded.config.server.model_dump(), **overrides}
            )
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            raise ConfigError(
                f"--{err['loc'][0]} (server.{err['loc'][0]}): {err['msg']} (got {err.get('input')!r})"
            ) from None
    from .structured_logs import configure_json_logging

    server = loaded.config.server
    if server.log_format == "json":
        configure_json_logging(server.log_level)
    else:
        logging.basicConfig(
            level=server.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s"
        )
    plugins = load_plugins(loaded)
    # As in _check: a bad config or plugin setting is refused before the doors are imported.
    import uvicorn

    from .app import create_app, uvicorn_options
    from .log_filters import install_log_filters

    app = create_app(loaded, plugins)
    if app.bus.backend.shared:
        # Fail before serving, with one clear line, when the shared backend is unreachable.
        import asyncio

        async def _probe() -> None:
            await app.bus.backend.start()
            await app.bus.backend.stop()

        asyncio.run(_probe())
    log.info(
        "plugbus %r with config %s; plugins: %s",
        server.name,
        loaded.path,
        ", ".join(p.name for p in app.bus.plugins) or "none",
    )
    options = uvicorn_options(loaded.config)
    if server.log_format == "json":
        options["log_config"] = None  # uvicorn's loggers propagate to the JSON handler
    uv_config = uvicorn.Config(app.asgi, host=server.host, port=server.port, **options)
    lifecycle = app.lifecycle

    class DrainingServer(uvicorn.Server):
        """uvicorn's server, draining on the first SIGTERM (plugbus.api.lifecycle)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM and not self.should_exit:
                stop = functools.partial(uvicorn.Server.handle_exit, self, sig, frame)
                if lifecycle.drain_then(stop):
                    return
            super().handle_exit(sig, frame)

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # Everything alive once the server is up (modules, FastAPI's routes, pydantic's
            # schemas, the plugins) lives as long as the process: moved out of the collector's
            # generations, it is no longer traversed by every full collection that arriving
            # connections trigger (measured: ~15 % of the server's CPU per connection, issue
            # #16; bench/README.md, "Connection cost").
            gc.collect()
            gc.freeze()
            # A young-generation collection every 20,000 allocations instead of CPython's
            # 700: while 10k clients connect, the collector was ~9 % of the server's samples
            # (py-spy), and its collections of the older generations stall every handshake
            # in flight. Measured with bench/conn_cost.py (10k clients, alternated runs): 557
            # -> 500 us of CPU per connection, handshake p99 ~250 -> ~95 ms; echo's CPU per
            # event did not change. Cyclic garbage waits a little longer to be collected.
            _, older, oldest = gc.get_threshold()
            gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)

    install_log_filters()
    main_server = DrainingServer(uv_config)
    try:
        if server.metrics.enabled and server.metrics.port:
            _run_with_metrics_port(main_server, app, options)
        else:
            main_server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled; the stop was clean
        pass
    return 0


def _run_with_metrics_port(main_server: Any, app: Any, options: dict[str, Any]) -> None:
    """Serve the API and, on ``server.metrics.port``, ``/metrics`` alone: two uvicorn servers
    on one event loop; the API's server owns the signals and the metrics server stops with
    it."""
    import asyncio
    import contextlib

    import uvicorn

    from .metrics import metrics_app

    class SideServer(uvicorn.Server):
        """Leaves the signals to the API's server."""

        def capture_signals(self) -> Any:
            return contextlib.nullcontext()

    server = app.bus.config.server
    side_options: dict[str, Any] = {"lifespan": "off", "log_level": options["log_level"]}
    if "log_config" in options:
        side_options["log_config"] = options["log_config"]
    side = SideServer(
        uvicorn.Config(
            metrics_app(app.bus, app.metrics),
            host=server.host,
            port=server.metrics.port,
            **side_options,
        )
    )

    async def both() -> None:
        side_task = asyncio.get_running_loop().create_task(side.serve())
        try:
            await main_server.serve()
        finally:
            side.should_exit = True
            await side_task

    with asyncio.Runner(loop_factory=main_server.config.get_loop_factory()) as runner:
        runner.run(both())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
