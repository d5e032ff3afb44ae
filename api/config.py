"""The API's own settings: JWT, login rate limits, allowed WebSocket origins, the admin password.

Each value is taken from :class:`pipeline.settings.Settings` when that class
declares it, otherwise from the environment through :class:`ApiEnv` (same
``WEBSCADA_`` prefix), so the values can move into ``Settings`` later without
any change here. Read once at start-up (:func:`load_api_config`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from api.passwords import DEFAULT_HASH_WAITING, DEFAULT_HASH_WORKERS
from api.ratelimit import LoginLimits
from pipeline.settings import Settings

__all__ = ["ApiConfig", "ApiEnv", "ConfigError", "load_api_config", "read_or_create_secret"]

_MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


class ConfigError(ValueError):
    """A setting of the API that cannot work (too short a secret, a malformed origin)."""


class ApiEnv(BaseSettings):
    """API settings not (yet) declared by ``Settings``; each is ``WEBSCADA_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="WEBSCADA_", extra="ignore")

    jwt_secret: SecretStr | None = None  # None: generated once into .stack/jwt-secret
    jwt_issuer: str = "webscada"
    jwt_audience: str = "webscada-api"
    access_token_ttl_s: int = Field(900, ge=30, le=3600)
    refresh_token_ttl_s: int = Field(7 * 86400, ge=60)
    admin_password: SecretStr | None = None  # None: `make run` generates one
    # Comma-separated; empty: the API's own origin plus 127.0.0.1:8000 and localhost:8000.
    allowed_origins: str = ""
    # Failed logins per window from one client address (all user names together).
    login_limit_per_address: int = Field(20, ge=1)
    # Failed logins per window of one user from one address (the pair): a stranger's
    # failures elsewhere never lock the user out where they log in from.
    login_limit_per_user: int = Field(5, ge=1)
    login_window_s: int = Field(300, ge=1)
    # Failures of one user from all addresses together: past login_user_delay_after each
    # attempt from an address not known for the user waits 1, 2, 4 ... s (at most
    # login_user_max_delay_s); past login_user_ceiling such addresses are refused until the
    # window ends. An address the user logged in from (kept login_known_address_ttl_s) is
    # exempt from both.
    login_user_delay_after: int = Field(10, ge=1)
    login_user_max_delay_s: int = Field(60, ge=1)
    login_user_ceiling: int = Field(100, ge=1)
    login_known_address_ttl_s: int = Field(30 * 86400, ge=60)
    # Password hashing (argon2, ~0.2 s and 64 MiB each) runs in a pool of its own threads.
    password_hash_workers: int = Field(DEFAULT_HASH_WORKERS, ge=1, le=64)
    password_hash_max_waiting: int = Field(DEFAULT_HASH_WAITING, ge=0)
    history_max_points: int = Field(10_000, ge=10)
    # WebSockets (/ws/topics and Socket.IO together) one user may hold open in one process.
    ws_max_per_user: int = Field(10, ge=1)
    # /ws/topics?from=earliest starts at most this many records before the end of each
    # partition (a record may be a batch of readings).
    ws_replay_max_records: int = Field(1000, ge=0)
    # uvicorn: a request's headers must arrive within http_header_timeout_s of its first
    # byte (or of the connection), its body within http_body_timeout_s of the headers.
    http_header_timeout_s: float = Field(10.0, gt=0)
    http_body_timeout_s: float = Field(30.0, gt=0)
    # Open Socket.IO and WebSocket connections are closed within this many seconds of their
    # user being deleted or disabled (or their device deleted or given a new key).
    ws_credential_check_s: float = Field(10.0, gt=0)


@dataclass(frozen=True, slots=True)
class ApiConfig:
    jwt_secret: SecretStr
    jwt_issuer: str
    jwt_audience: str
    access_token_ttl_s: int
    refresh_token_ttl_s: int
    admin_password: SecretStr | None
    allowed_origins: frozenset[str]
    login_limit_per_address: int
    login_limit_per_user: int
    login_window_s: int
    history_max_points: int
    login_user_delay_after: int = 10
    login_user_max_delay_s: int = 60
    login_user_ceiling: int = 100
    login_known_address_ttl_s: int = 30 * 86400
    password_hash_workers: int = DEFAULT_HASH_WORKERS
    password_hash_max_waiting: int = DEFAULT_HASH_WAITING
    ws_max_per_user: int = 10
    ws_replay_max_records: int = 1000
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    ws_credential_check_s: float = 10.0

    @property
    def login_limits(self) -> LoginLimits:
        return LoginLimits(
            per_address=self.login_limit_per_address,
            per_user_address=self.login_limit_per_user,
            user_ceiling=self.login_user_ceiling,
            user_delay_after=self.login_user_delay_after,
            user_max_delay_s=self.login_user_max_delay_s,
            window_s=self.login_window_s,
            known_address_ttl_s=self.login_known_address_ttl_s,
        )


def read_or_create_secret(path: Path, nbytes: int = 48) -> SecretStr:
    """The secret stored in ``path``; a new random one (mode 0600) when the file is missing."""
    try:
        return SecretStr(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(nbytes)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile: use theirs
        return SecretStr(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(value + "\n")
    return SecretStr(value)


def _origins(raw: Any, settings: Settings) -> frozenset[str]:
    items = raw.split(",") if isinstance(raw, str) else list(raw or ())
    origins = {str(item).strip().rstrip("/") for item in items if str(item).strip()}
    if not origins:
        origins = {
            f"http://{settings.api_host}:{settings.api_port}",
            "http://127.0.0.1:8000",
            "http://localhost:8000",
        }
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise ConfigError(f"allowed origin {origin!r} must start with http:// or https://")
    return frozenset(origins)


def load_api_config(settings: Settings, env: ApiEnv | None = None) -> ApiConfig:
    """The API configuration; may create ``<stack_dir>/jwt-secret`` on first use."""
    fallback = env if env is not None else ApiEnv()
    declared = type(settings).model_fields

    def pick(name: str) -> Any:
        return getattr(settings if name in declared else fallback, name)

    secret = pick("jwt_secret") or read_or_create_secret(settings.stack_dir / "jwt-secret")
    if len(secret.get_secret_value().encode()) < _MIN_SECRET_BYTES:
        raise ConfigError(f"the JWT secret must be at least {_MIN_SECRET_BYTES} bytes long")
    return ApiConfig(
        jwt_secret=secret,
        jwt_issuer=pick("jwt_issuer"),
        jwt_audience=pick("jwt_audience"),
        access_token_ttl_s=pick("access_token_ttl_s"),
        refresh_token_ttl_s=pick("refresh_token_ttl_s"),
        admin_password=pick("admin_password"),
        allowed_origins=_origins(pick("allowed_origins"), settings),
        login_limit_per_address=pick("login_limit_per_address"),
        login_limit_per_user=pick("login_limit_per_user"),
        login_window_s=pick("login_window_s"),
        history_max_points=pick("history_max_points"),
        **{name: pick(name) for name in _LATER_FIELDS},
    )


# ApiConfig fields with a default, added after the first release.
_LATER_FIELDS = (
    "login_user_delay_after", "login_user_max_delay_s", "login_user_ceiling",
    "login_known_address_ttl_s", "password_hash_workers", "password_hash_max_waiting",
    "ws_max_per_user", "ws_replay_max_records", "http_header_timeout_s", "http_body_timeout_s",
    "ws_credential_check_s",
)
