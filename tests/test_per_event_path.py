"""The per-event path's shortcuts (issue #16) answer exactly as the general code they skip."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, ClassVar

import pytest

from plugbus import Event, InvalidPayload
from plugbus.core.events import EventRegistry, payload_size
from plugbus.core.history import StoredEvent, _stored_event
from plugbus.testing import PlugbusAppFactory


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"message": "ping", "roomID": "echo-nobody"},
        {"message": "héllo wörld ✓", "roomID": "Zimmer-ü"},
        {"m": "", "": "x"},
    ],
)
def test_an_object_of_strings_is_counted_as_the_walk_counts_it(payload: dict[str, str]) -> None:
    # Inside a list the object is counted by the general walk (the list adds 2, plus 1 per item)
    walked = payload_size([payload], 1 << 20) - 3
    assert payload_size(payload, 1 << 20) == walked
    # at the limit it passes, one byte below it is refused, as the walk decides
    assert payload_size(payload, walked) <= walked
    assert payload_size(payload, walked - 1) > walked - 1


def test_an_object_with_other_values_takes_the_walk() -> None:
    payload = {"message": ["a", 1, None], "roomID": "r"}
    assert payload_size(payload, 1 << 20) == payload_size([payload], 1 << 20) - 3


class Ping(Event):
    name: ClassVar[str] = "ping"
    text: str


class CheckedPing(Event):
    """Overrides ``model_validate``: the registry must call it, not the schema validator."""

    name: ClassVar[str] = "checked-ping"
    text: str
    seen: ClassVar[list[Any]] = []

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> CheckedPing:
        cls.seen.append(obj)
        return super().model_validate({"text": str(obj["text"]).upper()}, **kwargs)


def test_events_validate_through_their_model_validate_when_they_override_it() -> None:
    registry = EventRegistry()
    registry.register(Ping, owner="tests")
    registry.register(CheckedPing, owner="tests")
    ping = registry.parse_args("ping", [{"text": "hi"}])
    assert type(ping) is Ping and ping.text == "hi"
    with pytest.raises(InvalidPayload):
        registry.parse_args("ping", [{"text": 1}])
    checked = registry.parse_args("checked-ping", [{"text": "hi"}])
    assert checked.text == "HI" and CheckedPing.seen == [{"text": "hi"}]  # type: ignore[attr-defined]


def test_history_entries_are_the_frozen_dataclass() -> None:
    made = _stored_event("1-2", "receive-message", ("hi",), "sid1", "lobby")
    assert made == StoredEvent("1-2", "receive-message", ("hi",), "sid1", "lobby")
    assert type(made) is StoredEvent and hash(made) == hash(StoredEvent(*dataclasses.astuple(made)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.room = "other"  # type: ignore[misc]


async def test_an_ack_id_of_unicode_digits_is_read_as_before(
    plugbus_app: PlugbusAppFactory,
) -> None:
    """The door scans ASCII ids in one step and falls back to ``str.isdigit`` for others, so
    an id written in Arabic-Indic digits ("١٢" is 12, as ``int`` reads it) is still acked."""
    app = await plugbus_app()
    client = await app.client()
    future: asyncio.Future[list[object]] = asyncio.get_running_loop().create_future()
    client._acks[12] = future
    await client._post('42\u0661\u0662["send-message",{"message":"hi","roomID":"r1"}]')
    ack = await asyncio.wait_for(future, 5)
    assert ack[0]["ok"] is True and ack[0]["data"]["room"] == "r1"  # type: ignore[index]


async def test_hook_timings_count_every_per_event_call(plugbus_app: PlugbusAppFactory) -> None:
    """The per-event walks keep each implementation's timing entry after its first call; the
    counts still reach the metrics."""
    app = await plugbus_app()
    client = await app.client()
    timings = app.bus.hooks.timings
    assert timings is not None
    for _ in range(3):
        assert (await client.call("send-message", {"message": "hi", "roomID": "r1"}))["ok"]
    assert timings.stats[("plugbus_moderate", "moderation")][0] == 3
    assert timings.stats[("plugbus_handle_event", "relay")][0] == 3
    assert timings.stats[("plugbus_authorize_join", "auth")][0] == 3
    text = (await app.http.get("/metrics")).text
    assert 'hook="plugbus_moderate",plugin="moderation"' in text
