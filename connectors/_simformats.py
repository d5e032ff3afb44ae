"""What simulated devices put on the wire, per protocol (pure; used by the simulator and tests).

- :func:`lpp_encode`: a small Cayenne LPP encoder (the decoder lives in
  :mod:`connectors.codecs.lpp`; encoding is a device's job, so it is here);
- :func:`chirpstack_uplink` / :func:`chirpstack_status`: ChirpStack v4
  MQTT-integration events as ChirpStack publishes them;
- :func:`imei_for`, :func:`csq_for_dbm`, :func:`dev_eui_for`: identities and
  signal figures of cellular and LoRaWAN devices.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "LPP_ENCODINGS",
    "chirpstack_status",
    "chirpstack_uplink",
    "csq_for_dbm",
    "dev_eui_for",
    "imei_for",
    "lpp_encode",
]

# type name -> (LPP type id, bytes, signed, multiplier) per the Cayenne LPP reference.
LPP_ENCODINGS: dict[str, tuple[int, int, bool, int]] = {
    "digital_input": (0x00, 1, False, 1),
    "analog_input": (0x02, 2, True, 100),
    "luminosity": (0x65, 2, False, 1),
    "presence": (0x66, 1, False, 1),
    "temperature": (0x67, 2, True, 10),
    "relative_humidity": (0x68, 1, False, 2),
    "barometric_pressure": (0x73, 2, False, 10),
}


def lpp_encode(values: Sequence[tuple[int, str, float]]) -> bytes:
    """``[(channel, type name, value), ...]`` as Cayenne LPP bytes (values rounded, clamped)."""
    out = bytearray()
    for channel, name, value in values:
        type_id, size, signed, multiplier = LPP_ENCODINGS[name]
        raw = round(value * multiplier)
        low, high = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (
            0, (1 << (8 * size)) - 1)
        raw = min(high, max(low, raw))
        out += bytes([channel & 0xFF, type_id]) + raw.to_bytes(size, "big", signed=signed)
    return bytes(out)


def imei_for(serial: int, tac: str = "35693803") -> str:
    """A 15-digit IMEI: type allocation code, 6-digit serial, Luhn check digit."""
    body = f"{tac}{serial % 1_000_000:06d}"
    total = 0
    for position, char in enumerate(reversed(body)):
        digit = int(char)
        if position % 2 == 0:  # doubled: every second digit counting from the check digit
            digit = digit * 2 - 9 if digit * 2 > 9 else digit * 2
        total += digit
    return body + str((10 - total % 10) % 10)


def csq_for_dbm(dbm: float) -> int:
    """The ``AT+CSQ`` index a modem reports for ``dbm`` (3GPP TS 27.007 8.5)."""
    return max(0, min(31, round((dbm + 113) / 2)))


def dev_eui_for(name: str) -> str:
    """A stable 16-hex-digit devEUI for a simulated device name."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _device_info(dev_eui: str, application_id: str, name: str) -> dict[str, Any]:
    return {
        "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
        "applicationId": application_id, "applicationName": "Simulated sensors",
        "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad",
        "deviceProfileName": "Cayenne LPP sensor", "deviceName": name, "devEui": dev_eui,
        "deviceClassEnabled": "CLASS_A", "tags": {},
    }


def _time(now_ms: int) -> str:
    return datetime.fromtimestamp(now_ms / 1000, UTC).isoformat()


def chirpstack_uplink(
    *,
    dev_eui: str,
    application_id: str,
    name: str,
    f_cnt: int,
    now_ms: int,
    data: bytes,
    rx: Sequence[tuple[str, float, float]],
    f_port: int = 2,
) -> bytes:
    """An ``up`` event; ``rx`` lists (gateway id, rssi, snr) of the gateways that heard it."""
    event: dict[str, Any] = {
        "deduplicationId": str(uuid.uuid4()),
        "time": _time(now_ms),
        "deviceInfo": _device_info(dev_eui, application_id, name),
        "devAddr": dev_eui[-8:],
        "adr": True, "dr": 5, "fCnt": f_cnt, "fPort": f_port, "confirmed": False,
        "data": base64.b64encode(data).decode("ascii"),
        "rxInfo": [
            {"gatewayId": gateway, "uplinkId": (f_cnt * 7919 + i) % 65536, "rssi": round(rssi),
             "snr": round(snr, 1), "channel": 2, "rfChain": 1, "location": {},
             "context": "EFwMtA==", "metadata": {"region_common_name": "EU868"},
             "crcStatus": "CRC_OK"}
            for i, (gateway, rssi, snr) in enumerate(rx)
        ],
        "txInfo": {"frequency": 868500000,
                   "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7,
                                           "codeRate": "CR_4_5"}}},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def chirpstack_status(
    *, dev_eui: str, application_id: str, name: str, now_ms: int, battery: float, margin: int
) -> bytes:
    """A ``status`` event (the answer to ChirpStack's DevStatusReq)."""
    event = {
        "deduplicationId": str(uuid.uuid4()),
        "time": _time(now_ms),
        "deviceInfo": _device_info(dev_eui, application_id, name),
        "margin": margin, "externalPowerSource": False, "batteryLevelUnavailable": False,
        "batteryLevel": round(battery, 1),
    }
    return json.dumps(event, separators=(",", ":")).encode()
