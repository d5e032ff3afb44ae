"""Protocol connectors: device data in, Avro records on Kafka out.

Run a connector by its module's ``main(settings)`` (``connectors.mqtt``,
``connectors.gsm``, ``connectors.lorawan``, ``connectors.simulator``); build on the
shared parts exported here.
"""

from connectors.errors import (
    BadDeviceIdError,
    BadMessageIdError,
    BadTimestampError,
    ConnectorError,
    NotAnObjectError,
    NotJsonError,
    PayloadError,
    PayloadTooLargeError,
    ProduceError,
    ProducerClosedError,
)
from connectors.mqtt import MqttConnector, OutRecord, Parser, Translator
from connectors.payload import (
    MAX_PAYLOAD_BYTES,
    ParsedReading,
    RejectedField,
    dead_letter_for_error,
    derive_message_id,
    load_object,
    parse_reading,
    parse_timestamp,
    reading_from_object,
)
from connectors.producer import Delivery, DeliveryCallback, RecordProducer

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "BadDeviceIdError",
    "BadMessageIdError",
    "BadTimestampError",
    "ConnectorError",
    "Delivery",
    "DeliveryCallback",
    "MqttConnector",
    "NotAnObjectError",
    "NotJsonError",
    "OutRecord",
    "ParsedReading",
    "Parser",
    "PayloadError",
    "PayloadTooLargeError",
    "ProduceError",
    "ProducerClosedError",
    "RecordProducer",
    "RejectedField",
    "Translator",
    "dead_letter_for_error",
    "derive_message_id",
    "load_object",
    "parse_reading",
    "parse_timestamp",
    "reading_from_object",
]
