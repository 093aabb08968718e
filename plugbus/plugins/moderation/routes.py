"""The ``/moderation`` REST routes (bans, mutes, kick, log, slow mode) and their request and
response bodies. Every route keeps the default route scope, ``admin``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, RootModel

from plugbus import (
    Bus,
    Connection,
    InvalidPayload,
    NotAllowed,
    NotFound,
    Route,
    RouteRequest,
)

from .pipeline import log_entry
from .settings import MAX_SANCTION_SECONDS, SanctionType, TargetKind
from .store import LogEntry, ModerationStore, Sanction

if TYPE_CHECKING:
    from . import ModerationPlugin


class SanctionRequest(BaseModel):
    """Body of ``POST /moderation/bans`` and ``POST /moderation/mutes``."""

    model_config = ConfigDict(extra="forbid")

    kind: TargetKind = Field(
        description="connection: a live connection id (a ban by connection bans its user id if "
        "it has one, else its address; a mute by connection lasts while that connection does); "
        "identity: a user id; address: a remote address."
    )
    value: str = Field(
        min_length=1, max_length=256, description="The connection id, user id or address."
    )
    reason: str = Field("", max_length=500, description="Told to the sanctioned client and logged.")
    duration: float | None = Field(
        None,
        gt=0,
        le=MAX_SANCTION_SECONDS,
        strict=True,
        allow_inf_nan=False,
        description="Seconds until it lapses (a number: `true` is not a duration), at most "
        "plugins.settings.moderation.max_sanction_seconds; omitted = until lifted.",
    )


class BanCreated(Sanction):
    """A ban just made, with the connections it closed."""

    disconnected: list[str] = Field(description="Connection ids closed because of it.")


class SanctionList(RootModel[list[Sanction]]):
    """Bans or mutes in force, oldest first."""


class KickRequest(BaseModel):
    """Body of ``POST /moderation/kick``."""

    model_config = ConfigDict(extra="forbid")

    sid: str = Field(min_length=1, description="The connection to close.")
    reason: str = Field("", max_length=500, description="Logged.")


class Kicked(BaseModel):
    """A connection closed by a kick."""

    sid: str
    reason: str = ""


class LogList(RootModel[list[LogEntry]]):
    """Moderation log entries, oldest first."""


class SlowModeState(BaseModel):
    """Slow-mode delays in seconds."""

    seconds: float = Field(description="Delay of rooms not listed (from settings).")
    rooms: dict[str, float] = Field(description="Delay per room.")


class SlowModeUpdate(BaseModel):
    """Body of ``PUT /moderation/slow-mode/{room}``."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(
        ge=0, le=86400, description="Least seconds between two messages of one connection; 0 = off."
    )


class SlowModeRoom(BaseModel):
    """One room's slow-mode delay."""

    room: str
    seconds: float


LOG_LIMIT = 100


class ModerationRoutes:
    """The ``/moderation`` REST routes (and ``DELETE /connections/{sid}``), all with the API-key
    scope ``admin``."""

    def __init__(self, plugin: ModerationPlugin, bus: Bus) -> None:
        self.plugin = plugin
        self.bus = bus

    @property
    def store(self) -> ModerationStore:
        """The plugin's store (read on every call: start-up may swap in a shared one after the
        routes are built)."""
        return self.plugin.store

    def routes(self) -> list[Route]:
        """Every route, for ``plugbus_routes``."""
        R = Route
        return [
            R(
                "POST",
                "/moderation/bans",
                self.ban,
                body=SanctionRequest,
                response=BanCreated,
                status_code=201,
                summary="Ban a connection, a user id or an address",
            ),
            R(
                "GET",
                "/moderation/bans",
                self.list_bans,
                response=SanctionList,
                summary="Bans in force",
            ),
            R(
                "DELETE",
                "/moderation/bans/{id}",
                self.unban,
                response=Sanction,
                summary="Lift a ban",
            ),
            R(
                "POST",
                "/moderation/mutes",
                self.mute,
                body=SanctionRequest,
                response=Sanction,
                status_code=201,
                summary="Mute a connection, a user id or an address",
            ),
            R(
                "GET",
                "/moderation/mutes",
                self.list_mutes,
                response=SanctionList,
                summary="Mutes in force",
            ),
            R(
                "DELETE",
                "/moderation/mutes/{id}",
                self.unmute,
                response=Sanction,
                summary="Lift a mute",
            ),
            R(
                "POST",
                "/moderation/kick",
                self.kick,
                body=KickRequest,
                response=Kicked,
                summary="Disconnect one connection",
            ),
            R(
                "DELETE",
                "/connections/{sid}",
                self.kick_by_path,
                response=Kicked,
                summary="Disconnect one connection",
            ),
            R(
                "GET",
                "/moderation/log",
                self.read_log,
                response=LogList,
                summary="Recent moderation decisions (?limit=N, default 100)",
            ),
            R(
                "GET",
                "/moderation/slow-mode",
                self.get_slow_mode,
                response=SlowModeState,
                summary="Slow-mode delays",
            ),
            R(
                "PUT",
                "/moderation/slow-mode/{room}",
                self.set_slow_mode,
                body=SlowModeUpdate,
                response=SlowModeRoom,
                summary="Set a room's slow-mode delay",
            ),
        ]

    def _require_rule(self, name: str) -> None:
        if not self.plugin.settings.rules.get(name).enabled:
            raise NotAllowed(
                f"the {name} rule is switched off "
                f"(plugins.settings.moderation.rules.{name}.enabled)",
                details={"rule": name},
            )

    async def _sanction(
        self, type: SanctionType, body: SanctionRequest
    ) -> tuple[Sanction, Connection | None]:
        self._require_rule(type)
        bound = self.plugin.settings.max_sanction_seconds
        if body.duration is not None and body.duration > bound:
            message = f"duration is {body.duration:g} seconds; the limit is {bound:g}"
            raise InvalidPayload(
                f"invalid request: body.duration: {message}",
                details={
                    "field": "duration",
                    "limit": bound,
                    "setting": "plugins.settings.moderation.max_sanction_seconds",
                    "errors": [
                        {"loc": "body.duration", "message": message, "type": "less_than_equal"}
                    ],
                },
            )
        kind, value, connection = body.kind, body.value, None
        if kind == "connection":
            connection = self.bus.connection(value)
            if connection is None:
                raise NotFound(f"no connection with id {value!r}", details={"sid": value})
            if type == "ban":  # connection ids change on reconnect: ban who or where it is
                if connection.identity is not None:
                    kind, value = "identity", connection.identity.user_id
                elif connection.remote_addr:
                    kind, value = "address", connection.remote_addr
                else:
                    raise NotAllowed(
                        "this connection has neither a user id nor an address to ban; "
                        "kick it instead",
                        details={"sid": body.value},
                    )
        now = datetime.now(UTC)
        sanction = Sanction(
            id=uuid.uuid4().hex[:12],
            type=type,
            kind=kind,
            value=value,
            reason=body.reason,
            created_at=now,
            expires_at=now + timedelta(seconds=body.duration) if body.duration else None,
            sid=connection.sid if connection is not None else None,
        )
        await self.store.add_sanction(sanction)
        await self.store.append_log(
            log_entry(type, type, body.reason, connection=connection, target=(kind, value))
        )
        return sanction, connection

    async def ban(self, req: RouteRequest) -> BanCreated:
        """Ban, and disconnect every live connection the ban covers; reconnects are refused
        with a ``connect_error`` saying why. A ban by connection bans the connection's user id
        if it has one, else its address (every client from there). With a shared store the
        other nodes close the connections it covers there; ``disconnected`` lists this node's."""
        assert isinstance(req.body, SanctionRequest)
        ban, _ = await self._sanction("ban", req.body)
        closed = await self.plugin.ban_made(ban, self.bus)
        return BanCreated(**ban.model_dump(), disconnected=closed)

    async def mute(self, req: RouteRequest) -> Sanction:
        """Mute: the client still receives and may join rooms, but events with text are
        refused. A mute by connection ends when that connection does."""
        assert isinstance(req.body, SanctionRequest)
        mute, _ = await self._sanction("mute", req.body)
        return mute

    async def list_bans(self, req: RouteRequest) -> list[Sanction]:
        """Bans in force."""
        return await self.store.sanctions("ban")

    async def list_mutes(self, req: RouteRequest) -> list[Sanction]:
        """Mutes in force."""
        return await self.store.sanctions("mute")

    async def _lift(self, type: SanctionType, id: str) -> Sanction:
        sanction = await self.store.lift_sanction(type, id)
        if sanction is None:
            raise NotFound(f"no {type} with id {id!r}", details={"id": id})
        await self.store.append_log(
            log_entry(type, "un" + type, sanction.reason, target=(sanction.kind, sanction.value))
        )
        return sanction

    async def unban(self, req: RouteRequest) -> Sanction:
        """Lift a ban by id."""
        return await self._lift("ban", req.path_params["id"])

    async def unmute(self, req: RouteRequest) -> Sanction:
        """Lift a mute by id."""
        return await self._lift("mute", req.path_params["id"])

    async def _kick(self, sid: str, reason: str) -> Kicked:
        connection = self.bus.connection(sid)
        await self.bus.disconnect(sid)  # NotFound (404) for an unknown id
        await self.store.append_log(
            log_entry("kick", "kick", reason, connection=connection, target=("connection", sid))
        )
        return Kicked(sid=sid, reason=reason)

    async def kick(self, req: RouteRequest) -> Kicked:
        """Disconnect one connection (it may reconnect; ban to keep it out)."""
        assert isinstance(req.body, KickRequest)
        return await self._kick(req.body.sid, req.body.reason)

    async def kick_by_path(self, req: RouteRequest) -> Kicked:
        """Disconnect one connection, as ``POST /moderation/kick``."""
        return await self._kick(req.path_params["sid"], "")

    async def read_log(self, req: RouteRequest) -> list[LogEntry]:
        """The newest ``limit`` decisions (default 100), oldest first."""
        raw = req.query.get("limit", str(LOG_LIMIT))
        if not raw.isdigit() or int(raw) < 1:
            raise InvalidPayload(
                f"limit must be a whole number of at least 1, got {raw!r}",
                details={
                    "errors": [
                        {
                            "loc": "query.limit",
                            "message": "expected an integer >= 1",
                            "type": "int_parsing",
                        }
                    ]
                },
            )
        return await self.store.log(int(raw))

    async def get_slow_mode(self, req: RouteRequest) -> SlowModeState:
        """The default delay and every room's."""
        return SlowModeState(
            seconds=self.plugin.settings.slow_mode.seconds, rooms=await self.store.slow_mode()
        )

    async def set_slow_mode(self, req: RouteRequest) -> SlowModeRoom:
        """Set one room's delay now (0 switches slow mode off there)."""
        assert isinstance(req.body, SlowModeUpdate)
        self._require_rule("slow_mode")
        room = req.path_params["room"]
        await self.store.set_slow_mode(room, req.body.seconds)
        return SlowModeRoom(room=room, seconds=req.body.seconds)
