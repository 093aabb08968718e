"""The doors of plugbus: the FastAPI app factory, the REST and Socket.IO doors, and the CLI.

The only package that imports FastAPI or mounts python-socketio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Application, create_app

__all__ = ["Application", "create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use, not with the package: the CLI's commands that serve nothing
    # (`plugbus config check`, `plugbus plugins`) then start without FastAPI and
    # python-socketio, which are most of a start-up's imports.
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
