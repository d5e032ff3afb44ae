"""Users, their application grants and refresh tokens, in PostgreSQL (migration 0005)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from api.passwords import Passwords
from api.tokens import ROLES, new_refresh_token, refresh_digest
from schemas.records import APPLICATION_ID_PATTERN

__all__ = [
    "USERNAME_PATTERN",
    "User",
    "UserError",
    "UserStore",
    "connect_once",
]

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

Connect = Callable[[], AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]]


class UserError(ValueError):
    """A user operation that cannot be done (unknown user, bad name or role, duplicate)."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    applications: frozenset[str]
    disabled: bool = False


@asynccontextmanager
async def connect_once(conninfo: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """One autocommit connection, for the CLI (the API passes its pool's ``connection``)."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        yield conn


def _check_name(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise UserError(f"user name {username!r} does not match {USERNAME_PATTERN.pattern}")
    return username


class UserStore:
    """User operations; ``connect`` yields an autocommit connection (a pool's ``connection``)."""

    def __init__(self, connect: Connect, passwords: Passwords | None = None) -> None:
        self._connect = connect
        self.passwords = passwords or Passwords()

    # ---- users -----------------------------------------------------------

    async def add(self, username: str, password: str, role: str) -> User:
        _check_name(username)
        if role not in ROLES:
            raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
        digest = await self.passwords.hash_async(password)
        async with self._connect() as conn:
            try:
                cur = await conn.execute(
                    "INSERT INTO users (username, password_hash, role) VALUES (%s, %s, %s)"
                    " RETURNING id",
                    (username, digest, role),
                )
            except psycopg.errors.UniqueViolation:
                raise UserError(f"user {username!r} exists already") from None
            row = await cur.fetchone()
        assert row is not None
        return User(int(row[0]), username, role, frozenset())

    async def list_all(self) -> list[User]:
        async with self._connect() as conn:
            cursor = await conn.execute(
                "SELECT u.id, u.username, u.role, u.disabled,"
                " coalesce(array_agg(a.application_id) FILTER (WHERE a.application_id IS NOT NULL),"
                " '{}')"
                " FROM users u LEFT JOIN user_applications a ON a.user_id = u.id"
                " GROUP BY u.id ORDER BY u.username"
            )
            rows = await cursor.fetchall()
        return [User(int(i), name, role, frozenset(apps), bool(disabled))
                for i, name, role, disabled, apps in rows]

    async def enabled(self, usernames: list[str]) -> set[str]:
        """Those of ``usernames`` that exist and are not disabled (one query)."""
        async with self._connect() as conn:
            cursor = await conn.execute(
                "SELECT username FROM users WHERE username = ANY(%s) AND NOT disabled", (usernames,))
            rows = await cursor.fetchall()
        return {str(row[0]) for row in rows}

    async def get(self, username: str) -> User | None:
        found = await self._find(username)
        return found[0] if found else None

    async def _find(self, username: str) -> tuple[User, str] | None:
        async with self._connect() as conn:
            cur = await conn.execute(
                "SELECT u.id, u.role, u.disabled, u.password_hash,"
                " coalesce(array_agg(a.application_id) FILTER (WHERE a.application_id IS NOT NULL),"
                " '{}')"
                " FROM users u LEFT JOIN user_applications a ON a.user_id = u.id"
                " WHERE u.username = %s GROUP BY u.id",
                (username,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        user_id, role, disabled, digest, apps = row
        return User(int(user_id), username, role, frozenset(apps), bool(disabled)), str(digest)

    async def set_password(self, username: str, password: str) -> None:
        """Change the password and revoke every refresh token of the user."""
        digest = await self.passwords.hash_async(password)
        async with self._connect() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE users SET password_hash = %s, password_changed_at = now()"
                " WHERE username = %s RETURNING id",
                (digest, username),
            )
            row = await cur.fetchone()
            if row is None:
                raise UserError(f"no user {username!r}")
            await conn.execute(
                "UPDATE refresh_tokens SET revoked_at = now()"
                " WHERE user_id = %s AND revoked_at IS NULL",
                (row[0],),
            )

    async def grant(self, username: str, application_id: str) -> None:
        if not APPLICATION_ID_PATTERN.fullmatch(application_id):
            raise UserError(
                f"application id {application_id!r} does not match {APPLICATION_ID_PATTERN.pattern}"
            )
        async with self._connect() as conn:
            cur = await conn.execute(
                "INSERT INTO user_applications (user_id, application_id)"
                " SELECT id, %s FROM users WHERE username = %s"
                " ON CONFLICT DO NOTHING RETURNING user_id",
                (application_id, username),
            )
            if await cur.fetchone() is None and await self.get(username) is None:
                raise UserError(f"no user {username!r}")

    async def check_password(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account enabled; None otherwise.

        The hash is checked in the password pool, off the event loop; raises
        :class:`api.passwords.HashingBusy` when that pool is full.
        """
        found = await self._find(username) if USERNAME_PATTERN.fullmatch(username) else None
        user, digest = found if found else (None, None)
        if not await self.passwords.verify_async(digest, password) or user is None or user.disabled:
            return None
        assert digest is not None
        if self.passwords.needs_rehash(digest):
            rehashed = await self.passwords.hash_async(password)
            async with self._connect() as conn:
                await conn.execute(
                    "UPDATE users SET password_hash = %s WHERE id = %s", (rehashed, user.id)
                )
        return user

    # ---- refresh tokens --------------------------------------------------

    async def issue_refresh(self, user: User, ttl_s: int, family: uuid.UUID | None = None) -> str:
        token = new_refresh_token()
        async with self._connect() as conn:
            await conn.execute(
                "INSERT INTO refresh_tokens (user_id, token_hash, family, expires_at)"
                " VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
                (user.id, refresh_digest(token), family or uuid.uuid4(), ttl_s),
            )
        return token

    async def rotate_refresh(self, token: str, ttl_s: int) -> tuple[User, str] | None:
        """Use ``token`` once: its user and a successor token, or None if it is not valid.

        A token presented a second time revokes its whole family.
        """
        digest = refresh_digest(token)
        async with self._connect() as conn:
            cur = await conn.execute(
                "UPDATE refresh_tokens SET used_at = now() WHERE token_hash = %s"
                " AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()"
                " RETURNING family, (SELECT username FROM users WHERE id = user_id)",
                (digest,),
            )
            row = await cur.fetchone()
            if row is None:
                await conn.execute(
                    "UPDATE refresh_tokens SET revoked_at = now() WHERE revoked_at IS NULL"
                    " AND family = (SELECT family FROM refresh_tokens"
                    "               WHERE token_hash = %s AND used_at IS NOT NULL)",
                    (digest,),
                )
                return None
        family, username = row
        user = await self.get(username)
        if user is None or user.disabled:
            return None
        return user, await self.issue_refresh(user, ttl_s, family)
