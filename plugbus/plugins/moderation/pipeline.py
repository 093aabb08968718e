"""The moderation pipeline: the switched-on rules in order, each rule's action (refuse, mask,
drop) carried out, every decision logged; and :func:`build_pipeline`, which assembles it."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from plugbus import (
    ConfigError,
    Connection,
    Event,
    EventContext,
    EventDropped,
    MessageRejected,
    ModerationRule,
    PlugbusError,
    Violation,
)

from .rules import (
    BanRule,
    BlockedWordsRule,
    FloodRule,
    MaxLengthRule,
    MuteRule,
    SlowModeRule,
)
from .settings import Action, ModerationSettings
from .store import LogEntry, ModerationStore
from .text import mask_spans, replace_string, strings_in


@dataclass(frozen=True, slots=True)
class Step:
    """One switched-on rule with its action."""

    rule: ModerationRule
    action: Action


def log_entry(
    rule: str,
    action: str,
    reason: str,
    *,
    event: Event | None = None,
    connection: Connection | None = None,
    field: str | None = None,
    target: tuple[str, str] | None = None,
) -> LogEntry:
    """A log entry stamped now; ``target`` is a sanction's ``(kind, value)``."""
    user = connection.identity.user_id if connection is not None and connection.identity else None
    if target is not None and target[0] == "identity":
        user = target[1]
    return LogEntry(
        time=datetime.now(UTC),
        rule=rule,
        action=action,
        reason=reason,
        event=event.event_name if event is not None else None,
        sid=connection.sid if connection is not None else None,
        user=user,
        field=field,
        target=f"{target[0]}:{target[1]}" if target is not None else None,
    )


#: ``connection.state`` key of the store-reading rules' last clean answers for the
#: connection: ``(store version, event class, its room field or None, that field's value)``.
QUIET_MARK = "moderation.quiet"

#: Most times one rule may mask one event (it reports one field, or one span, at a time).
MAX_MASKS = 32


class Pipeline:
    """Runs the switched-on rules over one event and carries out their actions."""

    def __init__(self, steps: list[Step], store: ModerationStore, mask_char: str) -> None:
        self.steps = steps
        self.store = store
        self.mask_char = mask_char
        # Whether each rule's check (and ``accepted``) is ``async def``, known once: the common
        # outcome — a rule with nothing to say — then costs one call, with no awaitable check.
        self._checks = [
            (step, step.rule.check, inspect.iscoroutinefunction(step.rule.check)) for step in steps
        ]
        self._accepted = [
            (hook, inspect.iscoroutinefunction(hook))
            for hook in (getattr(step.rule, "accepted", None) for step in steps)
            if hook is not None
        ]
        # The leading built-in rules that only read the store (ban, mute, slow mode) and
        # that the store's version tells about: how many of them there are.
        quiet = 0
        for step in steps:
            rule = step.rule
            if (
                type(rule) not in (BanRule, MuteRule, SlowModeRule)
                or getattr(rule, "store", None) is not store
            ):
                break
            quiet += 1
        self._quiet = quiet
        #: the checks, and those after the leading store-reading ones, as plain lists
        self._check_fns = [check for _, check, _ in self._checks]
        self._rest_fns = self._check_fns[quiet:]
        self._accepted_fns = [hook for hook, _ in self._accepted]
        #: the moderation store's Store.version_now, bound once (read on every event)
        self._version_now = store.store.version_now

    @property
    def names(self) -> list[str]:
        """The rules that run, in order."""
        return [s.rule.name for s in self.steps]

    def run(self, event: Event, ctx: EventContext) -> Awaitable[Event | None] | None:
        """:return: None when the event passes unchanged, else the coroutine of the rest of
        the walk, which returns None, or the masked event when masked.
        :raises PlugbusError: a rule refused it. :raises EventDropped: a rule dropped it.

        While every rule answers None at once (the common event: no rule has anything to
        say, and the store has its state at hand) the walk makes no coroutine; from the
        first rule that answers anything else, :meth:`_run_from` carries on."""
        checks = self._check_fns
        start = 0
        connection = ctx.connection
        if self._quiet and connection is not None:
            # the connection's last clean answers stand for an event of the same class with
            # the same room value while the store was not written (see _quiet_start)
            mark = connection.state.get(QUIET_MARK)
            if (
                mark is not None
                and mark[1] is type(event)
                and mark[0] == self._version_now()
                and (mark[2] is None or getattr(event, mark[2], None) == mark[3])
            ):
                checks, start = self._rest_fns, self._quiet
            else:
                version = self._version_now()
                if version is not None:
                    begin = self._quiet_start(version, connection, event, ctx)
                    if not isinstance(begin, int):
                        return begin  # a rule answered: the rest of the walk
                    checks, start = self._rest_fns, begin
        for index, check in enumerate(checks, start):
            found = check(event, ctx)
            if found is not None:
                return self._run_from(index, found, event, ctx)
        for index, hook in enumerate(self._accepted_fns):
            done = hook(event, ctx)
            if done is not None:
                return self._accepted_from(index, done, event, event, ctx)
        return None

    def _quiet_start(
        self, version: int, connection: Connection, event: Event, ctx: EventContext
    ) -> int | Awaitable[Event | None]:
        """Run the leading store-reading rules (``self._quiet`` of them) for ``event``; where
        :meth:`run` goes on: past them when all answered None, else the coroutine of the rest
        of the walk from the rule that answered.

        Answers all None are remembered for the connection: the store's ``version``, the
        event's class, and the name and value of its room field when it carries text (what
        slow mode reads the delay of; mutes are read for an event with text, bans for any).
        While the version stays the same, the connection's next event of that class with the
        same room value skips them: none of their answers can turn from None to something
        without a write (a sanction in force or a delay starts with one; one that ends or
        expires makes no rule speak)."""
        checks = self._checks
        for index in range(self._quiet):
            found = checks[index][1](event, ctx)
            if found is not None:
                return self._run_from(index, found, event, ctx)
        cls = type(event)
        field = cls.room_field if cls.text_fields else None
        room = getattr(event, field, None) if field else None
        connection.state[QUIET_MARK] = (version, cls, field or None, room)
        return self._quiet

    async def _run_from(
        self, index: int, found: Any, event: Event, ctx: EventContext
    ) -> Event | None:
        """:meth:`run` from the rule at ``index`` on, whose check answered ``found`` (not
        None): what the walk was before it could be had without a coroutine."""
        original = event
        checks = self._checks
        step, _, is_async = checks[index]
        while True:
            if found is not None:
                # is_async skips the isawaitable probe for rules known to be coroutines
                violation = await found if is_async or inspect.isawaitable(found) else found
                if violation is not None:
                    event = await self._apply(step, event, ctx, violation)
            index += 1
            if index == len(checks):
                return await self._accepted_from(0, None, original, event, ctx)
            step, check, is_async = checks[index]
            found = check(event, ctx)

    async def _accepted_from(
        self, index: int, done: Any, original: Event, event: Event, ctx: EventContext
    ) -> Event | None:
        """Each rule's ``accepted`` from the one at ``index`` on (``done``, when not None, is
        that one's answer: it was called already); the event as :meth:`run` returns it."""
        accepted = self._accepted
        if done is not None:
            if accepted[index][1] or inspect.isawaitable(done):
                await done
            index += 1
        for hook, is_async in accepted[index:]:
            done = hook(event, ctx)
            if done is not None and (is_async or inspect.isawaitable(done)):
                await done
        return None if event is original else event

    async def _apply(
        self, step: Step, event: Event, ctx: EventContext, violation: Violation | None
    ) -> Event:
        """Carry out ``step``'s action on the violation its check found, checking again after
        each mask (a masked event may still violate the rule elsewhere)."""
        rule = step.rule
        for attempt in range(MAX_MASKS):
            if attempt:
                violation = await _maybe_await(rule.check(event, ctx))
            if violation is None:
                return event
            masked = self._masked(event, violation) if step.action == "mask" else None
            if masked is not None:
                await self._log(rule.name, "mask", violation, event, ctx)
                event = masked
                continue
            if step.action == "drop":
                await self._log(rule.name, "drop", violation, event, ctx)
                raise EventDropped(f"{rule.name}: {violation.message}")
            break
        # Refuse (also when masking did not clear the violation: better than looping).
        assert violation is not None  # the loop returned on None
        await self._log(rule.name, "refuse", violation, event, ctx)
        refusal: type[PlugbusError] = getattr(rule, "refusal", MessageRejected)
        raise refusal(
            violation.message,
            details={"rule": rule.name, "field": violation.field, **violation.details},
        )

    def _masked(self, event: Event, violation: Violation) -> Event | None:
        """``event`` with the violation's spans masked in the string at ``violation.field`` (a
        text field, or a path into one such as ``options.1``); None when it cannot be."""
        at = violation.field
        if not violation.spans or not at:
            return None
        field = at.split(".", 1)[0]
        if field not in type(event).text_fields:
            return None
        value = getattr(event, field, None)
        text = dict(strings_in(value, field)).get(at)
        if text is None:
            return None
        new = mask_spans(text, violation.spans, self.mask_char)
        if new == text:
            return None
        return event.model_copy(update={field: replace_string(value, field, at, new)})

    async def _log(
        self, rule: str, action: str, violation: Violation, event: Event, ctx: EventContext
    ) -> None:
        await self.store.append_log(
            log_entry(
                rule,
                action,
                violation.message,
                event=event,
                connection=ctx.connection,
                field=violation.field,
            )
        )


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


BUILTIN_RULES = ("ban", "mute", "flood", "slow_mode", "max_length", "blocked_words")


def builtin_rules(settings: ModerationSettings, store: ModerationStore) -> list[ModerationRule]:
    """The built-in rules, in pipeline order."""
    return [
        BanRule(store),
        MuteRule(store),
        FloodRule(store, settings.flood),
        SlowModeRule(store, settings.slow_mode),
        MaxLengthRule(settings.max_length),
        BlockedWordsRule(settings.blocked_words, settings.substitutions),
    ]


def build_pipeline(
    settings: ModerationSettings,
    store: ModerationStore,
    added: Sequence[Any],
    *,
    complete: bool = True,
) -> Pipeline:
    """The pipeline of the built-ins then ``added`` (other plugins' rules), switched per settings.

    :param complete: ``added`` holds every rule, so a name under ``rules`` that no rule has
        is an error (False before start-up, when the other plugins' rules are not known).
    :raises ConfigError: a rule without a name or ``check``, two rules with one name, or a
        name under ``rules`` that no rule has.
    """
    prefix = "plugins.settings.moderation.rules"
    rules = builtin_rules(settings, store)
    names = set(BUILTIN_RULES)
    for rule in added:
        name = getattr(rule, "name", None)
        if not isinstance(name, str) or not name or not callable(getattr(rule, "check", None)):
            raise ConfigError(
                f"plugin 'moderation': a plugbus_moderation_rules hook returned "
                f"{rule!r}, which is not a ModerationRule (a `name` and a `check`)"
            )
        if name in names:
            raise ConfigError(
                f"plugin 'moderation': two moderation rules are named {name!r}; "
                f"rule names must be unique"
            )
        names.add(name)
        rules.append(rule)
    for name in settings.rules.extra_names() if complete else ():
        if name not in names:
            raise ConfigError(
                f"plugin 'moderation': {prefix}.{name}: no moderation rule named {name!r} "
                f"(rules: {', '.join(r.name for r in rules)}); is the plugin that adds it loaded?"
            )
    steps = [
        Step(r, settings.rules.get(r.name).action)
        for r in rules
        if settings.rules.get(r.name).enabled
    ]
    return Pipeline(steps, store, settings.mask_char)
