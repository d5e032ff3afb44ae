"""Access tokens (JWT, RFC 8725) and refresh tokens (opaque, stored as a digest).

Access tokens are HS256 JWTs with ``typ: at+jwt`` (RFC 9068), carrying ``iss``,
``aud``, ``sub``, ``iat``, ``exp``, ``jti``, the user's ``role`` and granted
``apps``. Verification accepts HS256 only, requires every one of those claims
and checks issuer and audience, so ``alg: none``, an algorithm switch, a token
meant for another audience or an expired one are all rejected.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

__all__ = [
    "ALGORITHM",
    "ROLES",
    "AccessClaims",
    "AccessTokens",
    "new_refresh_token",
    "refresh_digest",
]

ALGORITHM = "HS256"
ROLES = ("viewer", "operator", "admin")  # each role may do what the ones before it may
_TYP = "at+jwt"
_REQUIRED = ["iss", "aud", "sub", "iat", "exp", "jti"]
_LEEWAY_S = 5


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says about its holder."""

    subject: str
    role: str
    applications: frozenset[str]
    expires_at: int


class AccessTokens:
    """Issue and verify the API's access tokens."""

    def __init__(self, *, secret: str, issuer: str, audience: str, ttl_s: int) -> None:
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self.ttl_s = ttl_s

    def issue(self, subject: str, role: str, applications: frozenset[str] | set[str]) -> str:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}")
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl_s,
            "jti": uuid.uuid4().hex,
            "role": role,
            "apps": sorted(applications),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM, headers={"typ": _TYP})

    def verify(self, token: str) -> AccessClaims | None:
        """The claims of a valid token; None for anything else (never raises on bad input)."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("typ") != _TYP:  # RFC 8725 3.11: explicit typing
                return None
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                leeway=_LEEWAY_S,
                options={"require": _REQUIRED, "verify_signature": True},
            )
        except jwt.PyJWTError:
            return None
        role, apps, sub = claims.get("role"), claims.get("apps", []), claims.get("sub")
        if role not in ROLES or not isinstance(sub, str) or not isinstance(apps, list):
            return None
        if not all(isinstance(app, str) for app in apps):
            return None
        return AccessClaims(sub, role, frozenset(apps), int(claims["exp"]))


def new_refresh_token() -> str:
    """A fresh refresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def refresh_digest(token: str) -> str:
    """What is stored of a refresh token. A fast hash suffices: the token is random, not chosen."""
    return hashlib.sha256(token.encode()).hexdigest()
