"""Avro schemas of every Kafka value, the single-object codec and the typed records."""

from schemas.codec import MAGIC, SCHEMA_DIR, Decoded, SchemaRegistry, registry
from schemas.errors import (
    CodecError,
    InvalidRecordError,
    MalformedRecordError,
    UnknownFingerprintError,
    UnknownSchemaError,
)
from schemas.records import (
    DEVICE_ID_PATTERN,
    PROTOCOLS,
    DeadLetter,
    Location,
    SystemEvent,
    Telemetry,
    TelemetryMetadata,
    check_device_id,
    iso_utc,
    utcnow,
)

__all__ = [
    "DEVICE_ID_PATTERN",
    "MAGIC",
    "PROTOCOLS",
    "SCHEMA_DIR",
    "CodecError",
    "DeadLetter",
    "Decoded",
    "InvalidRecordError",
    "Location",
    "MalformedRecordError",
    "SchemaRegistry",
    "SystemEvent",
    "Telemetry",
    "TelemetryMetadata",
    "UnknownFingerprintError",
    "UnknownSchemaError",
    "check_device_id",
    "iso_utc",
    "registry",
    "utcnow",
]
