"""polls: a plugin written from docs/plugins/ alone — shared state, its own errors, moderated
list fields, room membership, and text run through moderation by hand."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, Field

from plugbus import (
    Bus,
    Event,
    EventContext,
    NotAllowed,
    NotFound,
    PlugbusError,
    Plugin,
    Route,
    RouteRequest,
    hookimpl,
    new_id,
)


class PollClosed(PlugbusError):
    """Voting in a closed poll."""

    code = "poll_closed"
    status = 409


class Choice(BaseModel):
    """One option, with an optional note."""

    label: str = Field(min_length=1, max_length=100)
    note: str = ""


class CreatePoll(Event):
    """``create-poll`` ``{room, question, options}``: members of ``room`` only."""

    name: ClassVar[str] = "create-poll"
    text_fields: ClassVar[tuple[str, ...]] = ("question", "options")
    rest_scope: ClassVar[str] = "publish"
    room: str
    question: str = Field(min_length=1)
    options: list[Choice] = Field(min_length=2, max_length=10)


class Vote(Event):
    """``vote`` ``{poll, option}``."""

    name: ClassVar[str] = "vote"
    rest_scope: ClassVar[str] = "publish"
    poll: str
    option: int = Field(ge=0)


class ClosePoll(Event):
    """``close-poll`` ``{poll}``."""

    name: ClassVar[str] = "close-poll"
    poll: str


class PollsPlugin(Plugin):
    """Polls in rooms, kept in the plugin's store so that every node sees them."""

    @hookimpl
    def plugbus_register_events(self) -> list[type[Event]]:
        return [CreatePoll, Vote, ClosePoll]

    async def poll(self, bus: Bus, poll_id: str) -> dict[str, Any]:
        poll = await bus.store("polls").get(f"poll:{poll_id}")
        if poll is None:
            raise NotFound(f"no poll {poll_id!r}", details={"poll": poll_id})
        return poll  # type: ignore[no-any-return]

    @hookimpl
    async def plugbus_handle_event(self, event: Event, ctx: EventContext) -> Any:
        bus, store = ctx.bus, ctx.bus.store("polls")
        if isinstance(event, CreatePoll):
            if ctx.sid is not None and not bus.is_member(ctx.sid, event.room):
                raise NotAllowed(
                    f"join {event.room!r} before polling it", details={"room": event.room}
                )
            poll_id = new_id()
            poll = {"room": event.room, "question": event.question, "closed": False}
            poll["options"] = [c.model_dump() for c in event.options]
            await store.set(f"poll:{poll_id}", poll)
            await bus.emit("poll", {"id": poll_id, **poll}, room=event.room)
            return {"id": poll_id, **poll}
        if isinstance(event, Vote):
            poll = await self.poll(bus, event.poll)
            if poll["closed"]:
                raise PollClosed("this poll is closed", details={"poll": event.poll})
            if event.option >= len(poll["options"]):
                raise NotFound("no such option", details={"option": event.option})
            return {"votes": await store.incr(f"votes:{event.poll}:{event.option}")}
        if isinstance(event, ClosePoll):
            poll = await self.poll(bus, event.poll)
            await store.set(f"poll:{event.poll}", {**poll, "closed": True})
            return {"closed": True}
        return None

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        async def results(req: RouteRequest) -> dict[str, Any]:
            poll_id = req.path_params["poll"]
            poll = await self.poll(bus, poll_id)
            keys = [f"votes:{poll_id}:{i}" for i in range(len(poll["options"]))]
            votes = await bus.store("polls").get_many(keys)
            return {**poll, "votes": [v or 0 for v in votes]}

        async def rename(req: RouteRequest) -> dict[str, Any]:
            # Text that is not an event's field: run through the moderation rules by hand.
            poll_id = req.path_params["poll"]
            poll = await self.poll(bus, poll_id)
            decision = await bus.moderate_text(req.query.get("question", ""))
            if decision.error is not None:
                raise decision.error
            if decision.text is None:  # dropped: keep the old question
                return poll
            poll["question"] = decision.text
            await bus.store("polls").set(f"poll:{poll_id}", poll)
            return poll

        return [
            Route("GET", "/polls/{poll}", results, scope="read", summary="A poll's results"),
            Route("POST", "/polls/{poll}/question", rename, summary="Change the question"),
        ]
