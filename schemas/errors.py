"""Exceptions of the schemas package."""

from __future__ import annotations

__all__ = [
    "CodecError",
    "InvalidRecordError",
    "MalformedRecordError",
    "UnknownFingerprintError",
    "UnknownSchemaError",
]


class CodecError(Exception):
    """Base of every error raised while encoding or decoding Kafka values."""


class UnknownSchemaError(CodecError):
    """Asked for a schema name that no file in ``schemas/`` defines."""


class UnknownFingerprintError(CodecError):
    """A single-object encoded value names a writer schema we do not know."""


class MalformedRecordError(CodecError):
    """The bytes are not a valid single-object encoded Avro value."""


class InvalidRecordError(ValueError):
    """A record's fields break the contract (bad device id, non-finite metric, ...)."""
