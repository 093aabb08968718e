"""plugbus (embedded config, the benchmark's settings: ``bench/run.py``'s ``plugbus_env``)
served by a chosen ASGI server and websocket implementation, for bench/compare_servers.sh.

    python bench/servers/plugbus_on.py PORT uvicorn:websockets-sansio|uvicorn:websockets|uvicorn:wsproto|hypercorn
"""

from __future__ import annotations

import asyncio
import os
import sys
import warnings
from pathlib import Path

warnings.simplefilter("ignore")  # uvicorn's legacy websockets implementation is deprecated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from run import plugbus_env  # noqa: E402  (bench/run.py: the settings every plugbus run uses)

from plugbus.api.app import create_app  # noqa: E402
from plugbus.core import load_config  # noqa: E402


def main(port: int, how: str) -> None:
    os.environ.update(plugbus_env())  # read by load_config, as `plugbus serve` reads them
    app = create_app(load_config())
    if how.startswith("uvicorn:"):
        import uvicorn

        uvicorn.run(
            app.asgi,
            host="127.0.0.1",
            port=port,
            ws=how.split(":", 1)[1],
            lifespan="on",
            log_level="warning",
            ws_per_message_deflate=False,
        )
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
