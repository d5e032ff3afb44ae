"""Exceptions of the connectors package.

Every :class:`PayloadError` carries a short ``code`` (a fixed label, safe as a
Prometheus label value and a DLQ detail) besides its human message, which names
the bad value.
"""

from __future__ import annotations

__all__ = [
    "BadDeviceIdError",
    "BadMessageIdError",
    "BadTimestampError",
    "BluetoothConfigError",
    "ConnectorError",
    "DecodeError",
    "NotAnObjectError",
    "NotJsonError",
    "PayloadError",
    "PayloadTooLargeError",
    "ProduceError",
    "ProducerClosedError",
    "ReadingRefusedError",
]


class ConnectorError(Exception):
    """Base of every error raised by a connector."""


class PayloadError(ConnectorError):
    """A device payload cannot become a reading; it goes to the DLQ whole."""

    code = "invalid_payload"


class PayloadTooLargeError(PayloadError):
    code = "too_large"


class NotJsonError(PayloadError):
    code = "not_json"


class NotAnObjectError(PayloadError):
    code = "not_an_object"


class BadTimestampError(PayloadError):
    code = "bad_timestamp"


class BadDeviceIdError(PayloadError):
    code = "bad_device_id"


class BadMessageIdError(PayloadError):
    code = "bad_message_id"


class ReadingRefusedError(PayloadError):
    """A parsed reading that cannot go to Kafka (e.g. it does not encode); its input goes
    to the DLQ instead."""

    code = "refused"


class ProduceError(ConnectorError):
    """Kafka refused a record outright (not a delivery failure reported later)."""


class ProducerClosedError(ProduceError):
    """A record was produced after :meth:`RecordProducer.close`."""


class DecodeError(PayloadError):
    """A binary or JSON device payload (Cayenne LPP, BTHome, Ruuvi, ChirpStack) cannot be decoded.

    The message says what is wrong and where, e.g. ``Cayenne LPP type 0x99
    unknown at byte 4``; ``offset`` is that byte offset when there is one.
    """

    code = "undecodable"

    def __init__(self, message: str, *, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class BluetoothConfigError(ConnectorError):
    """The Bluetooth connector's device file is missing, unreadable or invalid."""
