"""Password hashing with argon2id (argon2-cffi, RFC 9106 parameters).

A hash or a verification costs about a quarter of a second of CPU and 64 MiB. The
API calls :meth:`Passwords.verify_async` and :meth:`Passwords.hash_async`, which
run it in a small thread pool of its own (argon2-cffi releases the GIL), so the
event loop keeps serving ``/health``, device ingest and WebSockets while logins
are checked. At most ``workers`` hashes run at once and at most ``max_waiting``
more wait; beyond that :class:`HashingBusy` is raised (the login answers 503).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = [
    "DEFAULT_HASH_WORKERS",
    "MAX_PASSWORD_LENGTH",
    "MIN_PASSWORD_LENGTH",
    "HashingBusy",
    "PasswordError",
    "Passwords",
]

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing cost does not depend on it, but a body must stay small


# One hashing thread per two cores: argon2 is CPU-bound, and the event loop needs a core.
DEFAULT_HASH_WORKERS = max(1, (os.cpu_count() or 2) // 2)
DEFAULT_HASH_WAITING = 64

T = TypeVar("T")


class PasswordError(ValueError):
    """A new password that does not meet the policy."""


class HashingBusy(RuntimeError):
    """More password checks are waiting than the pool accepts; try again shortly."""


class Passwords:
    """Hash and verify passwords; verification costs the same for unknown users."""

    def __init__(
        self,
        hasher: PasswordHasher | None = None,
        *,
        workers: int = DEFAULT_HASH_WORKERS,
        max_waiting: int = DEFAULT_HASH_WAITING,
    ) -> None:
        if workers < 1 or max_waiting < 0:
            raise ValueError(f"workers must be >= 1 and max_waiting >= 0, got {workers}, {max_waiting}")
        self._hasher = hasher or PasswordHasher()
        self._workers = workers
        self._capacity = workers + max_waiting
        self._in_flight = 0
        self._executor: ThreadPoolExecutor | None = None
        # Verified against when the user does not exist, so that timing does not
        # tell which user names exist.
        self._dummy = self._hasher.hash("not-a-real-password-but-a-timing-guard")

    @staticmethod
    def check_policy(password: str) -> None:
        if len(password) < MIN_PASSWORD_LENGTH:
            raise PasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
        if len(password) > MAX_PASSWORD_LENGTH:
            raise PasswordError(f"a password has at most {MAX_PASSWORD_LENGTH} characters")

    def hash(self, password: str) -> str:
        self.check_policy(password)
        return self._hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash`` (None: an unknown user, always False)."""
        if len(password) > MAX_PASSWORD_LENGTH:
            return False
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and bool(stored_hash)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)

    # ---- off the event loop ------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Hashes running or waiting in the pool (for tests and metrics)."""
        return self._in_flight

    async def _off_loop(self, work: Callable[..., T], *args: object) -> T:
        if self._in_flight >= self._capacity:
            raise HashingBusy(f"{self._in_flight} password checks pending")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="argon2")
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)
        finally:
            self._in_flight -= 1

    async def verify_async(self, stored_hash: str | None, password: str) -> bool:
        """:meth:`verify` in the hashing pool; raises :class:`HashingBusy` when it is full."""
        return await self._off_loop(self.verify, stored_hash, password)

    async def hash_async(self, password: str) -> str:
        """:meth:`hash` in the hashing pool (the policy is checked first, on the loop)."""
        self.check_policy(password)
        return await self._off_loop(self.hash, password)

    def close(self) -> None:
        """Stop the pool's threads (running hashes finish first)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
