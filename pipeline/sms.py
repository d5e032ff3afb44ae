"""SMS for alarm notifications: numbers, message parts, and two transports.

- :class:`HttpGateway`: a Twilio-compatible REST API (``POST
  {base}/2010-04-01/Accounts/{sid}/Messages.json``, form ``To``/``From``/``Body``,
  HTTP basic auth with the account SID and token). Twilio itself, the many
  providers that copy its API, or a gateway on the site's own network.
- :class:`SerialModem`: a GSM modem on a serial port, text mode AT commands
  (``AT+CMGF=1``, ``AT+CSCS``, ``AT+CMGS``), through pyserial. One message at a time.

Numbers are E.164 (``+`` and 7 to 15 digits). A text that does not fit one SMS
(160 characters of the GSM 7-bit alphabet, or 70 of UCS-2 when it needs any other
character) is sent as several, each starting ``(i/n) `` and fitting one SMS:
transports that concatenate parts (UDH) are not assumed.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    import serial

__all__ = ["E164", "HttpGateway", "SerialModem", "SmsError", "SmsRefused", "is_gsm7", "parts"]

E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")

# The GSM 03.38 default alphabet; the extension table's characters take two septets.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
_GSM7_EXTENDED = frozenset("^{}\\[~]|€\f")


class SmsError(Exception):
    """A message that did not go out; retrying may help."""


class SmsRefused(SmsError):
    """A message the transport refused for good (bad number, bad credentials ...)."""


def is_gsm7(text: str) -> bool:
    return all(ch in _GSM7_BASIC or ch in _GSM7_EXTENDED for ch in text)


def _length(text: str, gsm7: bool) -> int:
    if gsm7:
        return sum(2 if ch in _GSM7_EXTENDED else 1 for ch in text)
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in text)  # UTF-16 code units


def parts(text: str) -> list[str]:
    """``text`` as the SMS bodies to send: itself when it fits one, else numbered parts."""
    gsm7 = is_gsm7(text)
    single = 160 if gsm7 else 70
    if _length(text, gsm7) <= single:
        return [text]
    # Room for "(i/n) " with up to two-digit counts: 8 characters.
    room = single - 8
    chunks: list[str] = []
    current, used = "", 0
    for ch in text:
        size = _length(ch, gsm7)
        if used + size > room:
            chunks.append(current)
            current, used = "", 0
        current += ch
        used += size
    if current:
        chunks.append(current)
    chunks = chunks[:99]
    return [f"({i}/{len(chunks)}) {chunk}" for i, chunk in enumerate(chunks, 1)]


# ---- an HTTP gateway -----------------------------------------------------------------------
@dataclass(frozen=True)
class HttpGateway:
    """A Twilio-compatible messages API; ``base_url`` e.g. ``https://api.twilio.com``."""

    base_url: str
    account_sid: str
    auth_token: str
    sender: str  # the From number (or an alphanumeric sender the provider accepts)
    timeout_s: float = 10.0

    async def send(self, session: aiohttp.ClientSession, to: str, body: str) -> None:
        url = f"{self.base_url.rstrip('/')}/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        form = {"To": to, "From": self.sender, "Body": body}
        try:
            async with session.post(url, data=form, timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                                    auth=aiohttp.BasicAuth(self.account_sid, self.auth_token)) as resp:
                if resp.status < 300:
                    return
                detail = (await resp.text())[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SmsError(f"SMS gateway {self.base_url} unreachable: {exc}") from exc
        if resp.status in (408, 429) or resp.status >= 500:
            raise SmsError(f"SMS gateway answered {resp.status}: {detail}")
        raise SmsRefused(f"SMS gateway refused the message ({resp.status}): {detail}")


# ---- a serial GSM modem --------------------------------------------------------------------
class SerialModem:
    """A GSM modem on ``port`` (e.g. ``/dev/ttyUSB0``); :meth:`send` blocks (run it in a thread)."""

    def __init__(self, port: str, baudrate: int = 115200, *, timeout_s: float = 30.0) -> None:
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = timeout_s
        self._lock = threading.Lock()  # one conversation with the modem at a time

    def send(self, to: str, body: str) -> None:
        import serial

        with self._lock:
            try:
                with serial.Serial(self.port, self.baudrate, timeout=0.2) as line:
                    self._converse(line, to, body)
            except serial.SerialException as exc:
                raise SmsError(f"modem on {self.port}: {exc}") from exc

    def _converse(self, line: serial.Serial, to: str, body: str) -> None:
        self._command(line, "AT")
        self._command(line, "AT+CMGF=1")  # text mode
        if is_gsm7(body):
            self._command(line, 'AT+CSCS="GSM"')
            number, text = to, body
        else:  # UCS-2: number and text as hex of their UTF-16 big-endian bytes
            self._command(line, 'AT+CSCS="UCS2"')
            self._command(line, "AT+CSMP=17,167,0,8")
            number, text = to.encode("utf-16-be").hex().upper(), body.encode("utf-16-be").hex().upper()
        line.write(f'AT+CMGS="{number}"\r'.encode())
        self._read_until(line, (b">",), "the message prompt")
        line.write(text.encode("latin-1") + b"\x1a")  # Ctrl-Z ends the message
        answer = self._read_until(line, (b"OK", b"ERROR"), "the send result")
        if b"ERROR" in answer:
            raise SmsRefused(f"modem refused the message to {to}: {answer.decode(errors='replace').strip()}")

    def _command(self, line: serial.Serial, command: str) -> None:
        line.write(command.encode() + b"\r")
        answer = self._read_until(line, (b"OK", b"ERROR"), command)
        if b"ERROR" in answer:
            raise SmsError(f"modem answered {command} with ERROR")

    def _read_until(self, line: serial.Serial, endings: tuple[bytes, ...], what: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        seen = b""
        while time.monotonic() < deadline:
            seen += line.read(256)
            if any(ending in seen for ending in endings):
                return seen
        raise SmsError(f"modem on {self.port} did not answer {what} within {self.timeout_s:.0f} s")
