"""auth: who may connect (handshake tokens), who may call REST (API keys), who may join which room.

Modes for Socket.IO connections, from ``plugins.settings.auth.mode``:

* ``none`` — the development default: anyone may connect (a warning says so at start-up).
  With ``trust_client_identity`` a client may *claim* an identity, ``auth: {user, name}``,
  unverified — handy for trying presence and per-user features locally.
* ``static`` — a fixed list of tokens, each naming a user; compared in constant time.
* ``jwt`` — JSON Web Tokens checked by PyJWT: HS256/384/512 with a shared secret, RS*/ES* with a
  public key; expiry, issuer and audience checked.

The client sends its token in the handshake's ``auth`` payload (``io(url, {auth: {token}})``)
or, for non-browser clients, an ``Authorization: Bearer`` header. Everything here is an
ordinary plugin behind ``plugbus_authenticate``, ``plugbus_authenticate_request`` and
``plugbus_authorize_join``: switch it off and install your own to check, say, a session cookie.
"""

from __future__ import annotations

import hmac
import logging
from fnmatch import fnmatchcase
from typing import Any, Literal

import jwt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from plugbus import (
    Bus,
    Connection,
    ConnectionDenied,
    Identity,
    NotAllowed,
    Plugin,
    PluginSettings,
    Principal,
    Secret,
    Unauthorized,
    hookimpl,
)

log = logging.getLogger("plugbus.auth")

HMAC_ALGORITHMS = {"HS256", "HS384", "HS512"}
KEY_ALGORITHMS = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StaticToken(_Strict):
    """One accepted token and the identity it gives."""

    token: Secret = Field(description='The token (use "$env:NAME" to keep it out of the file).')
    user_id: str = Field(min_length=1, description="The identity's user id.")
    name: str | None = Field(None, description="Display name.")
    roles: list[str] = Field(default_factory=list, description="Roles, e.g. [admin].")


class JwtSettings(_Strict):
    """How JSON Web Tokens are checked (mode: jwt)."""

    algorithms: list[str] = Field(
        ["HS256"], min_length=1, description="Accepted signing algorithms."
    )
    secret: Secret | None = Field(None, description="Shared secret for HS* algorithms.")
    public_key: str | None = Field(None, description="PEM public key for RS*/ES*/PS* algorithms.")
    issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    audience: str | None = Field(None, description="Required `aud` claim, if set.")
    leeway: float = Field(0, ge=0, description="Seconds of clock skew tolerated for exp/nbf.")
    require: list[str] = Field(["exp"], description="Claims that must be present.")
    user_claim: str = Field("sub", description="Claim holding the user id.")
    name_claim: str = Field("name", description="Claim holding the display name.")
    roles_claim: str = Field("roles", description="Claim holding a list of roles.")

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> JwtSettings:
        unknown = set(self.algorithms) - HMAC_ALGORITHMS - KEY_ALGORITHMS
        if unknown:
            raise ValueError(f"unknown algorithms {sorted(unknown)}; use HS*, RS*, ES* or PS*")
        if set(self.algorithms) & HMAC_ALGORITHMS and self.secret is None:
            raise ValueError("HS* algorithms need `secret`")
        if set(self.algorithms) & KEY_ALGORITHMS and not self.public_key:
            raise ValueError("RS*/ES*/PS* algorithms need `public_key`")
        return self


class ApiKey(_Strict):
    """One REST API key."""

    name: str = Field(min_length=1, description="Shown in logs and errors instead of the key.")
    key: Secret = Field(description='The key (use "$env:NAME").')
    scopes: list[Literal["publish", "read", "metrics", "admin"]] = Field(
        ["publish"],
        description="publish: send messages; read: presence and plugin lists; metrics: "
        "GET /metrics (for a Prometheus scraper); admin: everything.",
    )


class RoomRule(_Strict):
    """Who may join rooms matching ``pattern`` (a glob; ``{user_id}`` stands for the joiner's own id)."""

    pattern: str = Field(min_length=1, description='Glob such as "staff-*" or "private-{user_id}".')
    roles: list[str] = Field(default_factory=list, description="Roles allowed in.")
    users: list[str] = Field(default_factory=list, description="User ids allowed in.")
    anyone_identified: bool = Field(False, description="Allow any connection with an identity.")
    anyone: bool = Field(
        False,
        description="Allow every connection, with an identity or without "
        "(opens rooms under rooms_default: closed).",
    )


class AuthSettings(PluginSettings):
    """Settings of the auth plugin."""

    mode: Literal["none", "static", "jwt"] = Field(
        "none", description="How connections authenticate."
    )
    trust_client_identity: bool = Field(
        True,
        description="Mode none only: accept an unverified `auth: {user, name}` as the identity.",
    )
    tokens: list[StaticToken] = Field(default_factory=list, description="Mode static: the tokens.")
    jwt: JwtSettings | None = Field(None, description="Mode jwt: how tokens are checked.")
    api_keys: list[ApiKey] = Field(
        default_factory=list, description="REST API keys; none means REST is open (development)."
    )
    admin_role: str = Field("admin", description="Role that may join every room.")
    rooms: list[RoomRule] = Field(
        default_factory=list,
        description="Room rules, first match decides; rooms no rule matches follow rooms_default.",
    )
    rooms_default: Literal["open", "closed"] = Field(
        "open",
        description="Rooms no rule matches: open to every connection, or closed to all but "
        "admin_role (lock-down: list the rooms people may join as rules).",
    )

    @model_validator(mode="after")
    def _mode_needs(self) -> AuthSettings:
        if self.mode == "static" and not self.tokens:
            raise ValueError("mode static needs at least one entry in `tokens`")
        if self.mode == "jwt" and self.jwt is None:
            raise ValueError("mode jwt needs the `jwt` section")
        return self


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


class AuthPlugin(Plugin):
    """Authenticates connections and REST callers, and guards rooms."""

    Settings = AuthSettings
    settings: AuthSettings

    @hookimpl
    def plugbus_startup(self, bus: Bus) -> None:
        """Warn when the server is open to anyone."""
        if self.settings.mode == "none":
            log.warning(
                "authentication is off (plugins.settings.auth.mode: none): anyone who can "
                "reach this server may connect; set mode static or jwt before exposing it"
            )
        if not self.settings.api_keys:
            log.warning(
                "REST is open (plugins.settings.auth.api_keys is empty): anyone may publish "
                "and moderate over REST; add API keys before exposing it"
            )

    # -- Socket.IO ----------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def plugbus_authenticate(self, connection: Connection) -> Identity | None:
        """Turn the handshake's token into an identity, or refuse the connection."""
        auth = connection.auth if isinstance(connection.auth, dict) else {}
        if self.settings.mode == "none":
            user = auth.get("user")
            if self.settings.trust_client_identity and isinstance(user, str) and user:
                name = auth.get("name")
                return Identity(user_id=user, name=name if isinstance(name, str) else user)
            return None
        token = auth.get("token")
        if token is None:
            token = _bearer(connection.headers.get("authorization"))
        if not isinstance(token, str) or not token:
            raise ConnectionDenied(
                "authentication required: send a token in the handshake (auth: {token: ...})",
                code="missing_token",
            )
        if self.settings.mode == "static":
            return self._static(token)
        return self._jwt(token)

    def _static(self, token: str) -> Identity:
        given = token.encode()
        match = None
        for entry in self.settings.tokens:  # no early exit: every candidate costs the same
            if hmac.compare_digest(given, entry.token.get_secret_value().encode()):
                match = entry
        if match is None:
            raise ConnectionDenied("invalid token", code="invalid_token")
        return Identity(
            user_id=match.user_id, name=match.name or match.user_id, roles=tuple(match.roles)
        )

    def _jwt(self, token: str) -> Identity:
        cfg = self.settings.jwt
        assert cfg is not None
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.DecodeError:
            raise ConnectionDenied(
                "malformed token: not a JSON Web Token", code="invalid_token"
            ) from None
        if alg not in cfg.algorithms:
            raise ConnectionDenied(
                f"token signed with {alg}, which this server does not accept",
                code="invalid_token",
                details={"accepted": cfg.algorithms},
            )
        key: Any = (
            cfg.secret.get_secret_value()
            if alg in HMAC_ALGORITHMS and cfg.secret
            else cfg.public_key
        )
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway,
                options={"require": cfg.require, "verify_aud": cfg.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise ConnectionDenied("token expired", code="token_expired") from None
        except jwt.ImmatureSignatureError:
            raise ConnectionDenied(
                "token not valid yet (nbf/iat in the future)", code="invalid_token"
            ) from None
        except jwt.InvalidSignatureError:
            raise ConnectionDenied(
                "token signature does not verify", code="invalid_token"
            ) from None
        except jwt.InvalidIssuerError:
            raise ConnectionDenied("token issuer is not accepted", code="invalid_token") from None
        except jwt.InvalidAudienceError:
            raise ConnectionDenied("token audience is not accepted", code="invalid_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise ConnectionDenied(
                f"token lacks the {exc.claim!r} claim", code="invalid_token"
            ) from None
        except jwt.InvalidTokenError:
            raise ConnectionDenied("malformed token", code="invalid_token") from None
        user = claims.get(cfg.user_claim)
        if not isinstance(user, str | int) or user == "":
            raise ConnectionDenied(
                f"token lacks the {cfg.user_claim!r} claim", code="invalid_token"
            )
        roles = claims.get(cfg.roles_claim) or []
        name = claims.get(cfg.name_claim)
        return Identity(
            user_id=str(user),
            name=name if isinstance(name, str) else str(user),
            roles=tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, list) else (),
        )

    # -- REST ---------------------------------------------------------------------------------

    @hookimpl(trylast=True)
    def plugbus_authenticate_request(self, headers: dict[str, str]) -> Principal | None:
        """Check ``Authorization: Bearer <key>`` against the API keys (when there are any)."""
        if not self.settings.api_keys:
            return None
        raw = headers.get("authorization")
        if not raw:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        key = _bearer(raw)
        if key is None:
            raise Unauthorized("malformed Authorization header: expected `Bearer <key>`")
        given = key.encode()
        match = None
        for entry in self.settings.api_keys:  # constant time per key, no early exit
            if hmac.compare_digest(given, entry.key.get_secret_value().encode()):
                match = entry
        if match is None:
            raise Unauthorized("invalid API key")
        scopes = (
            {"publish", "read", "metrics", "admin"}
            if "admin" in match.scopes
            else set(match.scopes)
        )
        return Principal(name=match.name, scopes=frozenset(scopes))

    # -- rooms --------------------------------------------------------------------------------

    @hookimpl
    def plugbus_authorize_join(self, connection: Connection, room: str) -> None:
        """Apply the first room rule whose pattern matches; rooms without a rule follow
        ``rooms_default``. Called for joins, and for reading a room's members or posting into a
        room the connection is not in (the same rules guard all three)."""
        identity = connection.identity
        # {user_id} stands for the joiner's own id, matched literally: an id such as "*" or
        # "a*" must not turn the pattern into a wildcard over everyone's private rooms.
        own = glob_literal(identity.user_id) if identity else "\x00"
        for rule in self.settings.rooms:
            if not fnmatchcase(room, rule.pattern.replace("{user_id}", own)):
                continue
            if rule.anyone or (
                identity is not None
                and (
                    self.settings.admin_role in identity.roles
                    or rule.anyone_identified
                    or identity.user_id in rule.users
                    or set(identity.roles) & set(rule.roles)
                )
            ):
                return
            raise NotAllowed(
                f"you may not join room {room!r}",
                code="forbidden_room",
                details={"room": room, "rule": rule.pattern},
            )
        if self.settings.rooms_default == "closed" and not (
            identity is not None and self.settings.admin_role in identity.roles
        ):
            raise NotAllowed(
                f"you may not join room {room!r}: no room rule admits you and rooms are closed by "
                f"default",
                code="forbidden_room",
                details={"room": room, "rule": None, "setting": "rooms_default"},
            )


def glob_literal(text: str) -> str:
    """``text`` as a glob that matches exactly itself: each of ``*``, ``?`` and ``[`` becomes a
    one-character class (``[*]``), which ``fnmatch`` reads literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)
