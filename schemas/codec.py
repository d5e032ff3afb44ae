"""Avro single-object encoding with writer-schema lookup by fingerprint.

Every Kafka value is ``C3 01`` + the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's parsing canonical form + the Avro binary
body (Avro specification, "Single-object encoding").  Readers find the writer
schema by fingerprint among the ``.avsc`` files of this folder and resolve it
to their own (current) reader schema, so an added optional field never breaks
an old record.

File naming: ``telemetry.avsc`` is the current version of a schema; older
versions stay beside it as ``telemetry.v1.avsc``, ``telemetry.v2.avsc`` ... and
are only ever used as writer schemas.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from schemas.errors import MalformedRecordError, UnknownFingerprintError, UnknownSchemaError

__all__ = ["MAGIC", "SCHEMA_DIR", "Decoded", "SchemaRegistry", "registry"]

MAGIC = b"\xc3\x01"
_HEADER_LEN = len(MAGIC) + 8
SCHEMA_DIR = Path(__file__).resolve().parent
_VERSIONED = re.compile(r"^(?P<stem>[a-z0-9_]+)\.v(?P<version>\d+)$")

# What fastavro raises on bytes that do not match the writer schema.
_BODY_ERRORS = (EOFError, ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError,
                StopIteration, TypeError, OverflowError, MemoryError)


@dataclass(frozen=True, slots=True)
class _Schema:
    name: str  # full name, e.g. io.webscada.Telemetry
    parsed: Any
    fingerprint: bytes
    current: bool
    path: Path


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded value: the record's full schema name and its fields."""

    name: str
    record: dict[str, Any]
    writer_fingerprint: bytes


class SchemaRegistry:
    """The schemas of one folder, by name (current version) and by fingerprint (all)."""

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        self._by_fingerprint: dict[bytes, _Schema] = {}
        self._current: dict[str, _Schema] = {}
        for path in sorted(directory.glob("*.avsc")):
            self._load(path)
        if not self._current:
            raise UnknownSchemaError(f"no current *.avsc schema in {directory}")

    def _load(self, path: Path) -> None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            parsed = parse_schema(raw)
            canonical = to_parsing_canonical_form(raw)
        except Exception as exc:
            raise UnknownSchemaError(f"cannot parse schema file {path.name}: {exc}") from exc
        fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
        name = str(cast(dict[str, Any], parsed)["name"])
        schema = _Schema(name, parsed, fp, _VERSIONED.match(path.stem) is None, path)
        if fp in self._by_fingerprint and self._by_fingerprint[fp].path != path:
            # Same canonical form twice: harmless, keep the first.
            return
        self._by_fingerprint[fp] = schema
        if schema.current:
            if name in self._current:
                raise UnknownSchemaError(
                    f"two current versions of {name}: {self._current[name].path.name}"
                    f" and {path.name}; rename the older one NAME.vN.avsc"
                )
            self._current[name] = schema

    def _resolve_name(self, name: str) -> _Schema:
        schema = self._current.get(name) or self._current.get(f"io.webscada.{name}")
        if schema is None:
            raise UnknownSchemaError(f"no schema named {name!r} in {SCHEMA_DIR}")
        return schema

    def fingerprint_of(self, name: str) -> bytes:
        """The 8-byte fingerprint of the current version of ``name``."""
        return self._resolve_name(name).fingerprint

    def parsed_schema(self, name: str) -> Any:
        """The fastavro-parsed current version of ``name`` (for codecs with a fast path)."""
        return self._resolve_name(name).parsed

    def names(self) -> list[str]:
        return sorted(self._current)

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encode ``record`` with the current version of schema ``name``."""
        schema = self._resolve_name(name)
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(schema.fingerprint)
        try:
            schemaless_writer(out, schema.parsed, dict(record))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise MalformedRecordError(f"cannot encode {name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes, reader: str | None = None) -> Decoded:
        """Decode a single-object encoded value.

        The writer schema is found by fingerprint; the body is resolved to the
        current version of ``reader`` (default: the current version of the
        writer's own name).  Raises a :class:`CodecError` subclass naming what
        is wrong; never anything else.
        """
        if len(data) < _HEADER_LEN:
            raise MalformedRecordError(
                f"value is {len(data)} bytes, shorter than the {_HEADER_LEN}-byte"
                " single-object header"
            )
        if data[:2] != MAGIC:
            raise MalformedRecordError(
                f"value starts with {data[:2].hex()}, not the single-object marker c301"
            )
        fp = bytes(data[2:_HEADER_LEN])
        writer = self._by_fingerprint.get(fp)
        if writer is None:
            raise UnknownFingerprintError(
                f"writer schema fingerprint {fp.hex()} is not among the schemas in {SCHEMA_DIR}"
            )
        target = self._resolve_name(reader) if reader else self._current.get(writer.name, writer)
        if target.name != writer.name:
            raise UnknownSchemaError(
                f"value was written as {writer.name}, expected {target.name}"
            )
        body = io.BytesIO(data[_HEADER_LEN:])
        try:
            record = schemaless_reader(body, writer.parsed, target.parsed)
        except _BODY_ERRORS as exc:
            raise MalformedRecordError(
                f"{writer.name} body does not decode at byte {_HEADER_LEN + body.tell()}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        trailing = len(data) - _HEADER_LEN - body.tell()
        if trailing:
            raise MalformedRecordError(
                f"{trailing} unexpected trailing bytes after the {writer.name} body"
            )
        if not isinstance(record, dict):
            raise MalformedRecordError(f"{writer.name} body is not a record")
        return Decoded(writer.name, record, fp)


@cache
def registry() -> SchemaRegistry:
    """The process-wide registry of this folder's schemas (loaded on first use)."""
    return SchemaRegistry()
