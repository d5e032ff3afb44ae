"""``webscada decode {lpp|bthome|ruuvi|chirpstack} PAYLOAD``: a payload in, its reading as JSON out.

Binary formats take hex (spaces and a ``0x`` prefix allowed), ChirpStack the
uplink event JSON; ``-`` reads the payload from standard input. Prints
``{"metrics": {...}, "metadata": {...}}`` (ChirpStack adds ``device_id``); a
malformed payload exits with status 2 and says on stderr what is wrong and where.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from typing import Any

from connectors.codecs import (
    Decoded,
    DecodeError,
    decode_bthome,
    decode_lpp,
    decode_ruuvi,
    parse_uplink,
)
from schemas.records import iso_utc

__all__ = ["FORMATS", "main"]

FORMATS = ("lpp", "bthome", "ruuvi", "chirpstack")

_HEX_DIGIT = re.compile(r"[0-9a-fA-F]")
_MALFORMED = 2


def main(fmt: str, payload: str, *, bind_key: str | None = None, mac: str | None = None) -> int:
    """Decode and print; 0 on success, 2 on a malformed payload (message on stderr).

    ``bind_key`` (32 hex digits) and ``mac`` (``AA:BB:CC:DD:EE:FF``) decrypt
    an encrypted BTHome advertisement.
    """
    try:
        text = sys.stdin.read() if payload == "-" else payload
        result = _decode(fmt, text, bind_key=bind_key, mac=mac)
    except (DecodeError, ValueError) as exc:
        print(f"webscada decode {fmt}: {exc}", file=sys.stderr)
        return _MALFORMED
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


def _decode(fmt: str, text: str, *, bind_key: str | None, mac: str | None) -> dict[str, Any]:
    if fmt == "chirpstack":
        return _uplink(text)
    decoders: dict[str, Callable[[bytes], Decoded]] = {
        "lpp": decode_lpp,
        "ruuvi": decode_ruuvi,
        "bthome": lambda data: decode_bthome(
            data,
            bind_key=_hex(bind_key, "bind key") if bind_key else None,
            mac=_hex(mac.replace(":", "").replace("-", ""), "MAC") if mac else None,
        ),
    }
    if fmt not in decoders:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    return decoders[fmt](_hex(text, "payload")).to_json()


def _hex(text: str, what: str) -> bytes:
    """Hex text to bytes, or :class:`ValueError` naming the first bad character's position."""
    digits = "".join(text.split())
    if digits[:2].lower() == "0x":
        digits = digits[2:]
    if not digits:
        raise ValueError(f"{what} is empty")
    for index, char in enumerate(digits):
        if not _HEX_DIGIT.fullmatch(char):
            raise ValueError(
                f"{what} is not hex: {char!r} at hex digit {index} (byte {index // 2})"
            )
    if len(digits) % 2:
        raise ValueError(
            f"{what} has an odd number of hex digits ({len(digits)}):"
            f" byte {len(digits) // 2} is incomplete"
        )
    return bytes.fromhex(digits)


def _uplink(text: str) -> dict[str, Any]:
    uplink = parse_uplink(text.encode("utf-8"))
    meta = uplink.metadata
    metadata: dict[str, Any] = {
        "application_id": uplink.application_id,
        "message_id": uplink.message_id,
        "time": iso_utc(uplink.ts) if uplink.ts else None,
        "f_cnt": uplink.f_cnt,
        "f_port": uplink.f_port,
        "signal_strength": meta.signal_strength,
        "snr": meta.snr,
        "gateway_id": meta.gateway_id,
        "dev_addr": meta.extra.get("dev_addr"),
        "device_name": meta.extra.get("device_name"),
        "ignored": dict(uplink.ignored) or None,
    }
    return {
        "device_id": uplink.device_id,
        "metrics": dict(uplink.metrics),
        "metadata": {k: v for k, v in metadata.items() if v is not None},
    }
