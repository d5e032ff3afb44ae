"""Protocol connectors: device data in, Avro records on Kafka out.

Run a connector by its module's ``main(settings)`` (``connectors.mqtt``,
``connectors.gsm``, ``connectors.lorawan``, ``connectors.simulator``); build on the
shared parts exported here.
"""

from connectors.buffer import ReadingBuffer
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
    ReadingRefusedError,
)
from connectors.mqtt import MqttConnector, Output, OutRecord, Parser, Translator
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
from connectors.reading import ReadingRow, encode_rows

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
    "Output",
    "ParsedReading",
    "Parser",
    "PayloadError",
    "PayloadTooLargeError",
    "ProduceError",
    "ProducerClosedError",
    "ReadingBuffer",
    "ReadingRefusedError",
    "ReadingRow",
    "RecordProducer",
    "RejectedField",
    "Translator",
    "dead_letter_for_error",
    "derive_message_id",
    "encode_rows",
    "load_object",
    "parse_reading",
    "parse_timestamp",
    "reading_from_object",
]
