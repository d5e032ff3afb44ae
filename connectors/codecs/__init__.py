"""Payload codecs: binary and JSON device formats in, typed readings out.

Each decoder is a lookup table plus a small loop and raises
:class:`~connectors.errors.DecodeError` naming the problem and its byte.
"""

from connectors.codecs._types import Decoded, MetadataValue
from connectors.codecs.bthome import BTHOME_UUID, decode_bthome
from connectors.codecs.chirpstack import (
    EVENT_KINDS,
    ChirpstackEvent,
    Uplink,
    downlink_payload,
    parse_event,
    parse_uplink,
)
from connectors.codecs.lpp import decode_lpp
from connectors.codecs.ruuvi import RUUVI_COMPANY_ID, decode_ruuvi
from connectors.errors import DecodeError

__all__ = [
    "BTHOME_UUID",
    "EVENT_KINDS",
    "RUUVI_COMPANY_ID",
    "ChirpstackEvent",
    "DecodeError",
    "Decoded",
    "MetadataValue",
    "Uplink",
    "decode_bthome",
    "decode_lpp",
    "decode_ruuvi",
    "downlink_payload",
    "parse_event",
    "parse_uplink",
]
