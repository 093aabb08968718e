"""moderation: a pipeline of rules applied to every event, whichever door it came through.

Rules, in the order they run: ``ban``, ``mute``, ``flood``, ``slow_mode``, ``max_length``,
``blocked_words``, then the rules other plugins add through ``plugbus_moderation_rules``. Each
is switched on or off and given an action (``refuse``, ``mask``, ``drop``) under the
``rules`` key of this plugin's settings; the built-ins' own parameters are top-level keys.
Sanctions (bans, mutes, kicks) and slow-mode delays are made at run time over REST
(``/moderation/...``, the ``admin`` API-key scope); all state sits behind
:class:`ModerationStore`, on the plugin's ``bus.store("moderation")``: in this process, or in
Redis shared by every node when ``server.backend`` is a Redis URL — chosen at start-up by the
``store`` setting. New bans are announced on the store's ``bans`` channel, so that every node
closes its own connections a ban covers.

The package's modules, in the order they build on one another: ``settings`` (the plugin's
settings), ``text`` (folding and masking), ``store`` (sanctions, the log and
:class:`ModerationStore`), ``rules`` (the built-in rules), ``pipeline`` (running the rules and
carrying out their actions), ``routes`` (the REST routes); this module holds the plugin and
re-exports their public names.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from plugbus import (
    Bus,
    ConfigError,
    Connection,
    ConnectionDenied,
    Event,
    EventContext,
    NotFound,
    PlugbusError,
    Plugin,
    Route,
    Subscription,
    hookimpl,
)

from .pipeline import (
    BUILTIN_RULES,
    MAX_MASKS,
    Pipeline,
    Step,
    build_pipeline,
    builtin_rules,
    log_entry,
)
from .routes import (
    LOG_LIMIT,
    BanCreated,
    Kicked,
    KickRequest,
    LogList,
    ModerationRoutes,
    SanctionList,
    SanctionRequest,
    SlowModeRoom,
    SlowModeState,
    SlowModeUpdate,
)
from .rules import (
    BanRule,
    BlockedWordsRule,
    FloodRule,
    MaxLengthRule,
    MuteRule,
    SlowModeRule,
    describe_sanction,
    sanction_details,
    sender_of,
    targets_of,
    text_fields,
)
from .settings import (
    DEFAULT_SUBSTITUTIONS,
    Action,
    FloodSettings,
    ModerationSettings,
    OffByDefault,
    RuleSwitch,
    RuleSwitches,
    SanctionType,
    SlowModeSettings,
    TargetKind,
)
from .store import CACHED_KEYS, LogEntry, ModerationStore, Sanction, StoreUnavailable
from .text import Normaliser, mask_spans

__all__ = [
    "BUILTIN_RULES",
    "DEFAULT_SUBSTITUTIONS",
    "LOG_LIMIT",
    "MAX_MASKS",
    # settings
    "Action",
    "BanCreated",
    "BanRule",
    "BlockedWordsRule",
    "FloodRule",
    "FloodSettings",
    "KickRequest",
    "Kicked",
    "LogEntry",
    "LogList",
    "MaxLengthRule",
    # plugin
    "ModerationPlugin",
    "ModerationRoutes",
    "ModerationSettings",
    "ModerationStore",
    "MuteRule",
    # text
    "Normaliser",
    "OffByDefault",
    "Pipeline",
    "RuleSwitch",
    "RuleSwitches",
    # store
    "Sanction",
    "SanctionList",
    # routes
    "SanctionRequest",
    "SanctionType",
    "SlowModeRoom",
    "SlowModeRule",
    "SlowModeSettings",
    "SlowModeState",
    "SlowModeUpdate",
    # pipeline
    "Step",
    "StoreUnavailable",
    "TargetKind",
    "build_pipeline",
    "builtin_rules",
    "describe_sanction",
    "log_entry",
    "mask_spans",
    "sanction_details",
    "sender_of",
    # rules
    "targets_of",
    "text_fields",
]

log = logging.getLogger("plugbus.moderation")


class ModerationPlugin(Plugin):
    """Runs the moderation pipeline on every event, refuses banned clients at the door, and
    serves the ``/moderation`` REST routes."""

    Settings = ModerationSettings
    settings: ModerationSettings

    #: The plugin's state; set at start-up, when the backend is known.
    store: ModerationStore
    #: The rules that run, in order; complete once start-up collected the other plugins' rules.
    pipeline: Pipeline

    def __init__(self, settings: ModerationSettings) -> None:
        super().__init__(settings)
        self._bans: Subscription | None = None
        # looked up on every connect; the settings do not change while the plugin runs
        self._ban_on = settings.rules.get("ban").enabled

    def open_store(self, bus: Bus) -> ModerationStore:
        """The store the ``store`` setting asks for: the shared ``bus.store("moderation")`` for
        ``redis``, and for ``auto`` when ``server.backend`` is a Redis URL; else this node's
        (``local=True``).

        :raises ConfigError: ``store: redis`` while ``server.backend`` is ``memory``.
        """
        choice = self.settings.store
        # sanctions and delays are read on every event and seldom change: each node answers
        # from its own copy, which a ban or a new delay updates on every node before its call
        # returns (issue #16: no Redis round trip per event for them)
        shared = bus.store("moderation", cached=CACHED_KEYS)
        if choice == "redis" and not shared.shared:
            raise ConfigError(
                "plugin 'moderation': plugins.settings.moderation.store: 'redis' needs a shared "
                "backend, but server.backend is 'memory'; set server.backend to a Redis URL "
                "(redis://host:6379/0), or store to auto or memory"
            )
        if choice == "memory" and shared.shared:
            log.warning(
                "moderation store: memory although server.backend is shared: bans, "
                "mutes, delays, buckets and the log hold on this node only"
            )
            shared = bus.store("moderation", local=True)
        decisions = bus.counter(
            "moderation_decisions",
            "Moderation decisions by rule and action: refuse, mask and drop by the pipeline's "
            "rules, and the sanctions made over REST (ban, unban, mute, unmute, kick).",
            ("rule", "action"),
        )
        return ModerationStore(shared, self.settings.log_size, decisions)

    @hookimpl
    async def plugbus_startup(self, bus: Bus) -> None:
        """Open the store (see :meth:`open_store`), collect other plugins' rules into the
        pipeline, seed the slow-mode delays config gives (a room that already has a delay in a
        shared store keeps it) and, with a shared store, listen for bans made on other nodes.

        :raises ConfigError: ``store: redis`` without a Redis backend; a rule name in settings
            that no rule has, or two rules with one name.
        """
        try:
            self.store = self.open_store(bus)
            self.pipeline = build_pipeline(self.settings, self.store, bus.moderation_rules)
        except ConfigError as exc:
            log.error("%s", exc)
            raise
        await self.store.seed_slow_mode(dict(self.settings.slow_mode.rooms))
        if self.store.shared:

            async def on_ban(notice: dict[str, Any]) -> None:
                if notice.get("node") == bus.node_id:
                    return  # this node closed its own connections when it made the ban
                await self.close_banned(Sanction.model_validate(notice["ban"]), bus)

            self._bans = await self.store.store.subscribe("bans", on_ban)
        log.info(
            "moderation rules: %s; store: %s",
            ", ".join(self.pipeline.names) or "none",
            "shared" if self.store.shared else "this node",
        )

    async def close_banned(self, ban: Sanction, bus: Bus) -> list[str]:
        """Disconnect this node's live connections that ``ban`` covers; their ids."""
        closed = [c.sid for c in bus.connections() if (ban.kind, ban.value) in targets_of(c)]
        for sid in closed:
            try:
                await bus.disconnect(sid)
            except NotFound:  # gone meanwhile
                pass
        return closed

    async def ban_made(self, ban: Sanction, bus: Bus) -> list[str]:
        """Close the connections ``ban`` covers on this node (their ids) and, with a shared
        store, tell the other nodes to close theirs (a failure to tell them is logged: the
        ban is stored and holds anyway)."""
        closed = await self.close_banned(ban, bus)
        if self.store.shared:
            try:
                await self.store.store.publish(
                    "bans", {"node": bus.node_id, "ban": ban.model_dump(mode="json")}
                )
            except PlugbusError as exc:
                log.warning(
                    "could not tell the other nodes about ban %s (%s); its connections there "
                    "stay open until they send an event or reconnect",
                    ban.id,
                    exc.message,
                )
        return closed

    @hookimpl(trylast=True)
    async def plugbus_connect(self, connection: Connection, bus: Bus) -> None:
        """Refuse a banned client (by user id or address) with a ``connect_error`` saying why.

        ``trylast``, so that an authentication plugin has set ``connection.identity`` first.
        While a shared store is unreachable connects are refused too, with code
        ``moderation_unavailable``: bans cannot be checked.
        """
        if not self._ban_on:
            return
        ban = await self.store.find_sanction("ban", targets_of(connection))
        if ban is not None:
            message = describe_sanction(ban, "banned")
            await self.store.append_log(
                log_entry(
                    "ban", "refuse", message, connection=connection, target=(ban.kind, ban.value)
                )
            )
            raise ConnectionDenied(message, details={"rule": "ban", **sanction_details(ban)})

    @hookimpl
    async def plugbus_disconnect(self, connection: Connection) -> None:
        """Forget the connection's bucket, slow-mode times and connection mutes (when the
        store is unreachable this is logged; a shared store's buckets and times lapse anyway)."""
        try:
            await self.store.forget_connection(connection.sid)
        except StoreUnavailable:
            log.warning(
                "moderation: could not forget connection %s (store unavailable); a mute "
                "made against it stays listed until lifted",
                connection.sid,
            )

    @hookimpl
    def plugbus_moderate(self, event: Event, ctx: EventContext) -> Awaitable[Event | None] | None:
        """Run the pipeline: None to let the event through, a masked copy, or a refusal
        (:class:`MessageRejected`, or :class:`RateLimited` for flood and slow mode) or
        :class:`EventDropped`, as each rule's action says. (None at once when every rule
        answered None at once; else the pipeline's coroutine itself, awaited by the caller.)"""
        return self.pipeline.run(event, ctx)

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """Bans, mutes, kick, log and slow mode under ``/moderation`` (and
        ``DELETE /connections/{sid}``)."""
        return ModerationRoutes(self, bus).routes()
