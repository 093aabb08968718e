"""plugbus (embedded config, the benchmark's settings) served by a chosen ASGI server and
websocket implementation, for bench/compare_servers.sh.

    python bench/servers/plugbus_on.py PORT uvicorn:websockets-sansio|uvicorn:websockets|uvicorn:wsproto|hypercorn
"""

from __future__ import annotations

import asyncio
import sys
import warnings

warnings.simplefilter("ignore")  # uvicorn's legacy websockets implementation is deprecated

from plugbus.api.app import create_app  # noqa: E402
from plugbus.core import load_config  # noqa: E402


def main(port: int, how: str) -> None:
    loaded = load_config()
    server = loaded.config.server
    server.log_level = "warning"
    server.limits.events_per_second = 0
    server.limits.max_connections = 0
    loaded.config.plugins.entry_points = False
    app = create_app(loaded)
    if how.startswith("uvicorn:"):
        import uvicorn

        uvicorn.run(app.asgi, host="127.0.0.1", port=port, ws=how.split(":", 1)[1], lifespan="on",
                    log_level="warning", ws_per_message_deflate=False)
    elif how == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.loglevel = "WARNING"
        uvloop.install()
        asyncio.run(serve(app.asgi, config))
    else:
        raise SystemExit(f"unknown server {how!r}")


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
