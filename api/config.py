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
    login_limit_per_address: int = Field(20, ge=1)
    login_limit_per_user: int = Field(5, ge=1)
    login_window_s: int = Field(300, ge=1)
    history_max_points: int = Field(10_000, ge=10)


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
    )
