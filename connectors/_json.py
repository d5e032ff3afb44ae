"""Device JSON decoded fast (orjson), and exactly as Python's ``json`` reads it.

orjson refuses a few inputs ``json`` reads: ``NaN``/``Infinity`` and numbers
beyond a double (the payload parsers report such values as rejected fields,
keeping the rest of the reading). Whatever orjson refuses goes to ``json``, so
those payloads read as they always did, and errors carry ``json``'s messages. A
lone UTF-16 surrogate escape (``"\\ud800"``) is refused although ``json`` reads
it: it cannot be encoded as UTF-8, so no record could carry it. One difference
is left: orjson reads an integer beyond 64 bits as a float (``json`` keeps it
exact); that matters only where a number becomes text (see
:func:`connectors.payload.reading_from_object`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from connectors.errors import NotJsonError

__all__ = ["loads"]

def loads(data: bytes, *, what: str = "payload") -> Any:
    """The JSON value of ``data`` (UTF-8); :class:`NotJsonError` says, of ``what``, where it breaks."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        fast_error = exc
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotJsonError(f"{what} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotJsonError(f"{what} is not JSON: {exc.msg} at byte {_byte_at(text, exc.pos)}") from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of 5000 digits, deep nesting
        raise NotJsonError(f"{what} is not JSON: {type(exc).__name__}: {exc}") from exc
    if "surrogate" in fast_error.msg:
        raise NotJsonError(f"{what} is not JSON: {fast_error.msg} at byte "
                           f"{_byte_at(text, fast_error.pos)}") from fast_error
    try:
        # Rare inputs only: orjson stopped (at a NaN, say) before it reached a lone surrogate.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotJsonError(f"{what} is not JSON: a string holds a lone surrogate "
                           f"{exc.object[exc.start:exc.end]!r}") from exc
    except (ValueError, RecursionError):
        pass  # as deep as json could read: nothing else to learn
    return value


def _byte_at(text: str, pos: int) -> int:
    return len(text[:pos].encode("utf-8", "surrogatepass"))
