"""The doors of plugbus: the FastAPI app factory, the REST and Socket.IO doors, and the CLI.

The only package that imports FastAPI or mounts python-socketio.
"""

from .app import Application, create_app

__all__ = ["Application", "create_app"]
