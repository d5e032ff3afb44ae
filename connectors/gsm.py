"""GSM/cellular connector: readings from ``gsm/{device_id}/telemetry`` to Kafka.

The payload is the MQTT device body (:mod:`connectors.payload`) plus two
top-level keys a cellular modem knows about itself (also accepted inside
``metadata``):

- ``csq``: the ``AT+CSQ`` received-signal-strength index, 0..31 or 99
  (unknown), mapped to ``signal_strength`` in dBm by 3GPP TS 27.007 section
  8.5: 0 is -113 dBm or less, n is -113 + 2n, 31 is -51 dBm or more. It wins
  over a ``metadata.signalStrength`` of the same body; 99 leaves that alone.
- ``imei``: the modem's 15-digit IMEI, kept in ``metadata.extra["imei"]`` when
  its Luhn check digit is right.

A bad ``csq`` or ``imei`` is a rejected field (reported in one DLQ record with
the reading's other dropped fields); the reading itself still goes through.
The connector is :class:`connectors.mqtt.MqttConnector` with this parser.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connectors._values import describe
from connectors.mqtt import run
from connectors.payload import ParsedReading, RejectedField, load_object, reading_from_object
from pipeline.settings import Settings

__all__ = ["CLIENT_ID", "CSQ_UNKNOWN", "csq_to_dbm", "imei_is_valid", "main", "parse_gsm_reading"]

CLIENT_ID = "webscada-connector-gsm"
CSQ_UNKNOWN = 99
_CSQ_MAX = 31
_IMEI_DIGITS = 15


def csq_to_dbm(csq: int) -> int | None:
    """dBm of an ``AT+CSQ`` index (3GPP TS 27.007 8.5); None for 99 (not known).

    Raises :class:`ValueError` for anything but 0..31 or 99.
    """
    if isinstance(csq, bool) or not isinstance(csq, int):
        raise ValueError(f"csq must be an integer, got {describe(csq)}")
    if csq == CSQ_UNKNOWN:
        return None
    if not 0 <= csq <= _CSQ_MAX:
        raise ValueError(f"csq {csq} is not 0 to {_CSQ_MAX} or {CSQ_UNKNOWN}")
    return -113 + 2 * csq


def imei_is_valid(imei: str) -> bool:
    """Whether ``imei`` is 15 decimal digits whose last is the Luhn check digit (3GPP TS 23.003)."""
    if len(imei) != _IMEI_DIGITS or not imei.isascii() or not imei.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(imei)):
        digit = int(char)
        if position % 2 == 1:  # every second digit from the right, check digit excluded
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return total % 10 == 0


def parse_gsm_reading(payload: bytes, device_id: str, received_at: datetime) -> ParsedReading:
    """A GSM device's body as a reading (protocol ``gsm``); raises PayloadError when unusable."""
    obj = load_object(payload)
    rejected: list[RejectedField] = []
    found: dict[str, tuple[str, Any]] = {}
    meta = obj.get("metadata")
    for key in ("csq", "imei"):
        if isinstance(meta, dict) and key in meta:
            meta = {k: v for k, v in meta.items() if k != key}
            found[key] = (f"metadata.{key}", obj["metadata"][key])
        if key in obj:
            found[key] = (key, obj[key])  # top level wins over metadata
    rest = {k: v for k, v in obj.items() if k not in ("csq", "imei")}
    if isinstance(meta, dict):
        rest["metadata"] = meta

    dbm, csq_text = _csq(found.get("csq"), rejected)
    imei = _imei(found.get("imei"), rejected)
    reading = reading_from_object(rest, payload=payload, device_id=device_id, protocol="gsm",
                                  received_at=received_at)
    row = reading.row
    if row is not None and (imei is not None or csq_text is not None):
        extra = dict(row.extra)  # new dicts: the parser may share its empty ones
        if imei is not None:
            extra["imei"] = imei
        if csq_text is not None:
            extra["csq"] = csq_text
        meta = dict(row.meta)
        if dbm is not None:
            meta["signal_strength"] = float(dbm)
        row = row._replace(meta=meta, extra=extra)
    return reading._replace(row=row, rejected=(*reading.rejected, *rejected))


def _csq(
    found: tuple[str, Any] | None, rejected: list[RejectedField]
) -> tuple[int | None, str | None]:
    if found is None or found[1] is None:
        return None, None
    path, value = found
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        return csq_to_dbm(value), str(value)
    except ValueError as exc:
        rejected.append(RejectedField(path, str(exc)))
        return None, None


def _imei(found: tuple[str, Any] | None, rejected: list[RejectedField]) -> str | None:
    if found is None or found[1] is None:
        return None
    path, value = found
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # 15 digits fit a JSON number exactly
    if isinstance(value, str) and imei_is_valid(value):
        return value
    rejected.append(RejectedField(
        path, f"{describe(value)} is not a 15-digit IMEI with a valid Luhn check digit"
    ))
    return None


def main(
    settings: Settings, *, client_id: str | None = None, metrics_port: int | None = None
) -> int:
    """``webscada connect gsm``: the connector for ``gsm/+/telemetry``."""
    return run(settings, prefix="gsm", protocol="gsm", parser=parse_gsm_reading,
               client_id=client_id or CLIENT_ID, metrics_port=metrics_port)
