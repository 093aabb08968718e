"""Shortcuts of the socket door's CONNECT handling (plugbus.api.socket_door), checked against
the python-socketio code they skip."""

from __future__ import annotations

import inspect

from socketio import packet

from plugbus.api.app import create_app
from plugbus.api.socket_door import PlugbusSocketServer
from plugbus.core.config import load_config


def test_a_bare_connect_is_what_python_socketios_packet_decodes_it_to() -> None:
    """The door hands a CONNECT of exactly ``0`` (the Engine.IO message ``40``) to
    ``_handle_connect`` as (namespace None, data None) without decoding it: python-socketio's
    Packet, with the door's JSON, decodes it to those, with no id and no attachments."""
    sio = create_app(load_config(None)).sio  # type: ignore[attr-defined]
    assert isinstance(sio, PlugbusSocketServer)
    pkt = sio.packet_class(encoded_packet="0")
    assert (pkt.packet_type, pkt.namespace, pkt.data, pkt.id, pkt.attachment_count) == (
        packet.CONNECT,
        None,
        None,
        None,
        0,
    )
    source = inspect.getsource(PlugbusSocketServer._handle_eio_message)
    assert 'if data == "0":\n' in source
    assert "await self._handle_connect(eio_sid, None, None)" in source
