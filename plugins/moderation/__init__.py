"""moderation: a pipeline of rules applied to every event, whichever door it came through.

Rules, in the order they run: ``ban``, ``mute``, ``flood``, ``slow_mode``, ``max_length``,
``blocked_words``, then the rules other plugins add through ``plugbus_moderation_rules``. Each
is switched on or off and given an action (``refuse``, ``mask``, ``drop``) under the
``rules`` key of this plugin's settings; the built-ins' own parameters are top-level keys.
Sanctions (bans, mutes, kicks) and slow-mode delays are made at run time over REST
(``/moderation/...``); all state sits behind :class:`ModerationStore`, in memory by default.

The REST routes carry no authorization yet: anyone who reaches the REST port may ban, mute and
kick. Admin roles arrive with the authentication issue.

The package's modules, in the order they build on one another: ``settings`` (the plugin's
settings), ``text`` (folding and masking), ``store`` (sanctions, the log and
:class:`ModerationStore`), ``rules`` (the built-in rules), ``pipeline`` (running the rules and
carrying out their actions), ``routes`` (the REST routes); this module holds the plugin and
re-exports their public names.
"""

from __future__ import annotations

import logging

from plugbus import (
    Bus,
    ConfigError,
    Connection,
    ConnectionDenied,
    Event,
    EventContext,
    Plugin,
    Route,
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
from .store import LogEntry, MemoryStore, ModerationStore, Sanction
from .text import Normaliser, mask_spans

__all__ = [
    # settings
    "Action", "SanctionType", "TargetKind", "DEFAULT_SUBSTITUTIONS", "RuleSwitch", "OffByDefault",
    "RuleSwitches", "FloodSettings", "SlowModeSettings", "ModerationSettings",
    # text
    "Normaliser", "mask_spans",
    # store
    "Sanction", "LogEntry", "ModerationStore", "MemoryStore",
    # rules
    "targets_of", "describe_sanction", "sanction_details", "BanRule", "MuteRule", "FloodRule",
    "SlowModeRule", "text_fields", "MaxLengthRule", "BlockedWordsRule",
    # pipeline
    "Step", "log_entry", "MAX_MASKS", "Pipeline", "BUILTIN_RULES", "builtin_rules", "build_pipeline",
    # routes
    "SanctionRequest", "BanCreated", "SanctionList", "KickRequest", "Kicked", "LogList",
    "SlowModeState", "SlowModeUpdate", "SlowModeRoom", "LOG_LIMIT", "ModerationRoutes",
    # plugin
    "ModerationPlugin",
]

log = logging.getLogger("plugbus.moderation")


class ModerationPlugin(Plugin):
    """Runs the moderation pipeline on every event, refuses banned clients at the door, and
    serves the ``/moderation`` REST routes."""

    Settings = ModerationSettings
    settings: ModerationSettings

    def __init__(self, settings: ModerationSettings) -> None:
        super().__init__(settings)
        self.store: ModerationStore = MemoryStore(settings.log_size)
        # Built-ins only until start-up adds the other plugins' rules.
        self.pipeline = build_pipeline(settings, self.store, [], complete=False)

    @hookimpl
    async def plugbus_startup(self, bus: Bus) -> None:
        """Collect other plugins' rules into the pipeline and seed the slow-mode delays.

        :raises ConfigError: a rule name in settings that no rule has, or two rules with one name.
        """
        try:
            self.pipeline = build_pipeline(self.settings, self.store, bus.hooks.moderation_rules(bus))
        except ConfigError as exc:
            log.error("%s", exc)
            raise
        for room, seconds in self.settings.slow_mode.rooms.items():
            await self.store.set_slow_mode(room, seconds)
        log.info("moderation rules: %s", ", ".join(self.pipeline.names) or "none")

    @hookimpl(trylast=True)
    async def plugbus_connect(self, connection: Connection, bus: Bus) -> None:
        """Refuse a banned client (by user id or address) with a ``connect_error`` saying why.

        ``trylast``, so that an authentication plugin has set ``connection.identity`` first.
        """
        if not self.settings.rules.get("ban").enabled:
            return
        ban = await self.store.find_sanction("ban", targets_of(connection))
        if ban is not None:
            message = describe_sanction(ban, "banned")
            await self.store.append_log(log_entry("ban", "refuse", message, connection=connection,
                                                  target=(ban.kind, ban.value)))
            raise ConnectionDenied(message, details={"rule": "ban", **sanction_details(ban)})

    @hookimpl
    async def plugbus_disconnect(self, connection: Connection) -> None:
        """Forget the connection's bucket, slow-mode times and connection mutes."""
        await self.store.forget_connection(connection.sid)

    @hookimpl
    async def plugbus_moderate(self, event: Event, ctx: EventContext) -> Event | None:
        """Run the pipeline: None to let the event through, a masked copy, or a refusal
        (:class:`MessageRejected`, or :class:`RateLimited` for flood and slow mode) or
        :class:`EventDropped`, as each rule's action says."""
        return await self.pipeline.run(event, ctx)

    @hookimpl
    def plugbus_routes(self, bus: Bus) -> list[Route]:
        """Bans, mutes, kick, log and slow mode under ``/moderation`` (and
        ``DELETE /connections/{sid}``)."""
        return ModerationRoutes(self, bus).routes()
