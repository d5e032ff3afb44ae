"""Password hashing with argon2id (argon2-cffi, RFC 9106 parameters)."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["MAX_PASSWORD_LENGTH", "MIN_PASSWORD_LENGTH", "PasswordError", "Passwords"]

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # hashing cost does not depend on it, but a body must stay small


class PasswordError(ValueError):
    """A new password that does not meet the policy."""


class Passwords:
    """Hash and verify passwords; verification costs the same for unknown users."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
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
