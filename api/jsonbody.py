"""Request bodies: the one place where routes read and check JSON (and the login form).

Every route that takes a body calls :func:`json_object` (the login routes with
``form=True``). The rules, refusals answered with a JSON error naming the problem:

- ``Content-Type`` must be ``application/json`` (a ``charset`` parameter must be
  ``utf-8``), else ``415``. Device routes (``devices=True``) also take a body
  without a ``Content-Type``, as many device HTTP clients send none; the login
  routes also take ``application/x-www-form-urlencoded``.
- The body is counted while it streams in: more than ``limit`` bytes (declared
  or sent) is ``413`` without reading the rest.
- ``422``: not UTF-8, not JSON, a duplicate key, a lone UTF-16 surrogate (raw or
  escaped as ``\\ud800``, in a key or a value), a NUL character, nesting deeper
  than :data:`MAX_DEPTH`, ``NaN``/``Infinity`` or a number beyond a double
  (``1e400``), an integer beyond 64 bits, or not an object.

That is I-JSON (RFC 7493) plus what PostgreSQL cannot store (NUL) and bounds on
depth and integers, so nothing a route hands on can fail later in a store or
when the answer is written. HTTP ingest has its own faster parser for readings
(:mod:`api.readings`); it shares :func:`check_json_type` with this module.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError, BadRequest, InvalidField

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "BodyTooLarge",
    "UnsupportedMediaType",
    "bounded_body",
    "check_declared_size",
    "check_json_type",
    "json_object",
    "parse_form",
    "parse_json",
]

#: Default bound of a JSON body (alarm rules, commands, devices, users are far smaller).
MAX_BODY_BYTES = 64 * 1024
#: Deepest nesting of arrays and objects accepted.
MAX_DEPTH = 32

JSON_TYPE = "application/json"
FORM_TYPE = "application/x-www-form-urlencoded"
_INT_MAX = 2**63 - 1
_INT_MAX_DIGITS = 20  # a longer integer literal is out of range whatever it says
_BAD_CHARACTER = re.compile("[\x00\ud800-\udfff]")


class BodyTooLarge(ApiError):
    status_code = 413


class UnsupportedMediaType(ApiError):
    status_code = 415


class _Refused(Exception):
    """Raised by the decoder's hooks; becomes a 422."""


def _invalid(message: str) -> InvalidField:
    return InvalidField("body", None, message)


# ---- content type ------------------------------------------------------------------------


def check_json_type(headers: Mapping[str, str], *, missing_ok: bool = False,
                    also: tuple[str, ...] = ()) -> str | None:
    """The body's media type (``application/json`` or one of ``also``), or None when the
    request names none and ``missing_ok``; :class:`UnsupportedMediaType` (415) otherwise."""
    raw = headers.get("content-type")
    if raw is None or not raw.strip():
        if missing_ok:
            return None
        raise UnsupportedMediaType("unsupported media type",
                                   f"send the body with Content-Type: {JSON_TYPE}")
    kind, _, parameters = raw.partition(";")
    kind = kind.strip().lower()
    if kind != JSON_TYPE and kind not in also:
        accepted = " or ".join((JSON_TYPE, *also))
        raise UnsupportedMediaType("unsupported media type",
                                   f"the body must be {accepted}, not {kind[:80]!r}")
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in (
                "utf-8", "utf8"):
            raise UnsupportedMediaType("unsupported media type", "JSON and forms are read as UTF-8;"
                                       f" charset {value.strip()[:40]!r} is not accepted")
    return kind


# ---- reading -------------------------------------------------------------------------------


def check_declared_size(request: Request, limit: int = MAX_BODY_BYTES) -> None:
    """413 when the request declares (``Content-Length``) more than ``limit`` bytes: a route
    may ask this before anything else, without reading the body."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge("body too large", f"{declared} bytes declared; at most {limit} are accepted")


async def bounded_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, refused with 413 as soon as more than ``limit`` bytes are declared or
    have arrived (a client may send more than it declares)."""
    check_declared_size(request, limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge("body too large", f"{size}+ bytes; at most {limit} are accepted")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("client disconnected before the body was complete") from None
    return b"".join(chunks)


async def json_object(
    request: Request, *, limit: int = MAX_BODY_BYTES, optional: bool = False,
    devices: bool = False, form: bool = False,
) -> dict[str, Any]:
    """The request's body as a checked JSON object (see the module for the rules).

    ``optional``: an empty body is ``{}`` (else 422). ``devices``: a body without
    ``Content-Type`` is read as JSON. ``form``: a urlencoded form is accepted too
    (:func:`parse_form`).
    """
    declared = request.headers.get("content-length", "")
    if optional and declared == "0":
        return {}
    kind = check_json_type(request.headers, missing_ok=devices, also=(FORM_TYPE,) if form else ())
    raw = await bounded_body(request, limit)
    if not raw:
        if optional:
            return {}
        raise _invalid("a JSON object is required")
    if kind == FORM_TYPE:
        return parse_form(raw)
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise _invalid(f"must be a JSON object, not {_kind(value)}")
    return value


# ---- parsing ---------------------------------------------------------------------------------


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {key[:60]!r}")
            seen.add(key)
    return value


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"the number {text[:40]} is beyond the range of a double")
    return value


def _int(text: str) -> int:
    value = int(text) if len(text.lstrip("-")) <= _INT_MAX_DIGITS else None
    if value is None or not -_INT_MAX - 1 <= value <= _INT_MAX:
        raise _Refused(f"the integer {text[:24]}{'...' if len(text) > 24 else ''} is beyond 64 bits")
    return value


def _constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(object_pairs_hook=_object, parse_float=_float, parse_int=_int,
                            parse_constant=_constant)


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw``, or :class:`InvalidField` (422, field ``body``) naming
    the first problem found (pure; no I/O)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        value = _DECODER.decode(text)
    except _Refused as exc:
        raise _invalid(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise _invalid(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise _invalid(f"nested deeper than {max_depth} levels") from None
    _check_tree(value, max_depth)
    return value


def _check_tree(value: Any, max_depth: int) -> None:
    """Depth, and every key and string free of NUL and lone surrogates (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, "a string")
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                raise _invalid(f"nested deeper than {max_depth} levels")
            if isinstance(item, dict):
                for key in item:
                    _check_text(key, "a key")
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str, what: str) -> None:
    found = _BAD_CHARACTER.search(text)
    if found is None:
        return
    if found[0] == "\x00":
        raise _invalid(f"{what} holds a NUL character")
    raise _invalid(f"{what} holds a lone UTF-16 surrogate ({found[0]!r}), which is not Unicode text")


def parse_form(raw: bytes) -> dict[str, Any]:
    """A urlencoded form as an object of strings, by the rules of JSON bodies: UTF-8 only,
    no name twice, no NUL."""
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                          max_num_fields=100)
    except UnicodeDecodeError:
        raise _invalid("the form is not UTF-8 text") from None
    except ValueError:
        raise _invalid("the form has too many fields") from None
    try:
        value = _object(pairs)
    except _Refused as exc:
        raise _invalid(str(exc).replace("key", "field")) from None
    for key, item in value.items():
        _check_text(key, "a field name")
        _check_text(item, "a field")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"
