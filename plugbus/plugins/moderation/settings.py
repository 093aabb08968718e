"""The moderation plugin's settings: the built-in rules' parameters and every rule's switch.

Also the vocabulary the other modules share: a rule's :data:`Action`, a sanction's type and
what it names (:data:`SanctionType`, :data:`TargetKind`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from plugbus import PluginSettings

Action = Literal["refuse", "mask", "drop"]
SanctionType = Literal["ban", "mute"]
TargetKind = Literal["connection", "identity", "address"]

DEFAULT_SUBSTITUTIONS: dict[str, str] = {
    "0": "o",
    "1": "i",
    "3": "e",
    "4": "a",
    "5": "s",
    "7": "t",
    "@": "a",
    "$": "s",
}


class RuleSwitch(BaseModel):
    """Whether one rule runs, and what happens to an event that breaks it."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Run this rule.")
    action: Action = Field(
        "refuse",
        description="refuse: the sender gets an error saying why; mask: the offending text is "
        "replaced with mask_char and the event goes on (a rule that cannot point at the text "
        "refuses instead); drop: the event vanishes silently, the sender's ack says ok.",
    )


class OffByDefault(RuleSwitch):
    """A :class:`RuleSwitch` that is off unless switched on."""

    enabled: bool = Field(False, description="Run this rule.")


class RuleSwitches(BaseModel):
    """``rules``: a switch per rule name — the built-ins below, and any rule another plugin
    adds (an unknown name stops start-up)."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, RuleSwitch] = Field(init=False)

    ban: RuleSwitch = Field(default_factory=RuleSwitch, description="Refuse banned clients.")
    mute: RuleSwitch = Field(
        default_factory=RuleSwitch, description="Refuse text from muted clients."
    )
    flood: OffByDefault = Field(
        default_factory=OffByDefault, description="Token bucket per sender."
    )
    slow_mode: RuleSwitch = Field(
        default_factory=RuleSwitch, description="Delay between messages per room."
    )
    max_length: RuleSwitch = Field(default_factory=RuleSwitch, description="Longest text field.")
    blocked_words: RuleSwitch = Field(default_factory=RuleSwitch, description="Words refused.")

    def get(self, name: str) -> RuleSwitch:
        """The switch for rule ``name`` (a default one when the settings do not name it)."""
        found = getattr(self, name, None) if name in type(self).model_fields else None
        if found is None:
            found = (self.model_extra or {}).get(name)
        return found if isinstance(found, RuleSwitch) else RuleSwitch()

    def extra_names(self) -> list[str]:
        """Rule names the settings mention beyond the built-ins."""
        return list(self.model_extra or {})


class FloodSettings(BaseModel):
    """``flood``: a token bucket per sender (its user id, else its connection), over every event
    it sends."""

    model_config = ConfigDict(extra="forbid")

    burst: int = Field(
        10, ge=1, description="Events a sender (its user id, else its connection) may send at once."
    )
    rate: float = Field(2.0, gt=0, description="Events per second it earns back, up to burst.")


class SlowModeSettings(BaseModel):
    """``slow_mode``: the least seconds between two messages of one sender (its user id, else its
    connection) in one room."""

    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(0, ge=0, description="Delay for rooms not listed; 0 = none.")
    rooms: dict[str, Annotated[float, Field(ge=0)]] = Field(
        default_factory=dict,
        description="Delay per room; PUT /moderation/slow-mode/{room} changes them.",
    )


#: The hard ceiling of ``max_sanction_seconds`` (100 years): far below what a datetime can add.
MAX_SANCTION_SECONDS = 3_153_600_000


class ModerationSettings(PluginSettings):
    """Settings of the moderation plugin."""

    max_length: int = Field(
        2000, ge=0, description="Most characters in a text field; 0 = no limit."
    )
    blocked_words: list[str] = Field(
        default_factory=list,
        description="Words (or phrases) refused as whole words, after normalisation: any letter "
        "case, accents ignored, substitutions applied.",
    )
    substitutions: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_SUBSTITUTIONS),
        description="Characters read as letters when matching blocked words (4 -> a); map one "
        "to an empty string to ignore it.",
    )
    mask_char: str = Field(
        "*", min_length=1, max_length=1, description="Replaces masked characters."
    )
    flood: FloodSettings = Field(
        default_factory=FloodSettings, description="Flood control parameters."
    )
    slow_mode: SlowModeSettings = Field(
        default_factory=SlowModeSettings, description="Slow mode delays."
    )
    max_sanction_seconds: float = Field(
        31_536_000,
        gt=0,
        le=MAX_SANCTION_SECONDS,
        description="Longest duration a ban or mute may be given, in seconds (default 365 days); "
        "longer ones are refused with 422 (omit duration for a sanction that lasts until lifted).",
    )
    log_size: int = Field(
        1000, ge=0, description="Moderation decisions kept for GET /moderation/log; 0 keeps none."
    )
    store: Literal["auto", "memory", "redis"] = Field(
        "auto",
        description="Where bans, mutes, delays, buckets and the log live: memory (this process), "
        "redis (shared by every node; needs server.backend to be a Redis URL), or auto (redis "
        "when server.backend is a Redis URL, else memory).",
    )
    rules: RuleSwitches = Field(
        default_factory=RuleSwitches, description="Each rule's switch and action."
    )

    @field_validator("substitutions")
    @classmethod
    def _single_characters(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if len(key) != 1:
                raise ValueError(f"substitution keys are single characters, got {key!r}")
        return value
