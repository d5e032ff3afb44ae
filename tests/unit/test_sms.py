"""SMS: numbers, parts, the HTTP gateway against a real local server, the modem on a pty."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from pipeline.notify import Notification, Notifier, NotifierConfig
from pipeline.sms import E164, HttpGateway, SerialModem, SmsError, SmsRefused, is_gsm7, parts


# ---- numbers and parts -----------------------------------------------------------------------
@pytest.mark.parametrize(("number", "ok"), [
    ("+4915112345678", True), ("+12025550123", True), ("+1234567", True),
    ("4915112345678", False), ("+0151234567", False), ("+49 151 1234", False), ("+1234", False),
    ("+1234567890123456", False), ("+49151abc", False),
])
def test_e164(number: str, ok: bool) -> None:
    assert bool(E164.fullmatch(number)) is ok


def test_one_sms_when_it_fits() -> None:
    assert parts("x" * 160) == ["x" * 160]
    assert parts("é" * 160) == ["é" * 160]  # é is in the GSM 7-bit alphabet
    assert parts("€" * 80) == ["€" * 80]  # an extension character takes two septets: 160
    assert parts("Ж" * 70) == ["Ж" * 70]  # needs UCS-2: 70 characters


def test_longer_texts_go_as_numbered_parts_that_each_fit() -> None:
    for text, limit in (("a" * 400, 160), ("€" * 100, 160), ("Ж" * 200, 70), ("🔥" * 40, 70)):
        sent = parts(text)
        assert len(sent) > 1
        assert all(part.startswith(f"({i}/{len(sent)}) ") for i, part in enumerate(sent, 1))
        assert "".join(part.split(" ", 1)[1] for part in sent) == text
        for part in sent:
            units = (sum(2 if ch in "^{}\\[~]|€\f" else 1 for ch in part) if is_gsm7(part)
                     else len(part.encode("utf-16-le")) // 2)
            assert units <= limit, (part, units)


# ---- the HTTP gateway ------------------------------------------------------------------------
class _Provider:
    """A Twilio-like messages API that checks the account, the token and the form."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        self.fail_next = 0

    async def messages_route(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(b"AC123:secret-token").decode()
        if request.match_info["sid"] != "AC123" or request.headers.get("Authorization") != expected:
            return web.json_response({"message": "Authenticate"}, status=401)
        if self.fail_next:
            self.fail_next -= 1
            return web.json_response({"message": "busy"}, status=503)
        form = await request.post()
        if not E164.fullmatch(str(form.get("To", ""))) or not form.get("Body"):
            return web.json_response({"message": "invalid To"}, status=400)
        self.messages.append({k: str(v) for k, v in form.items()})
        return web.json_response({"sid": f"SM{len(self.messages)}", "status": "queued"}, status=201)


@pytest.fixture
async def provider() -> AsyncIterator[tuple[_Provider, str]]:
    state = _Provider()
    app = web.Application()
    app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", state.messages_route)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield state, f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_the_gateway_posts_the_form_with_the_account(provider: tuple[_Provider, str]) -> None:
    state, url = provider
    async with aiohttp.ClientSession() as session:
        await HttpGateway(url, "AC123", "secret-token", "+15005550006").send(
            session, "+4915112345678", "Pump 3 pressure high")
        assert state.messages == [{"To": "+4915112345678", "From": "+15005550006",
                                   "Body": "Pump 3 pressure high"}]
        with pytest.raises(SmsRefused, match="401"):
            await HttpGateway(url, "AC123", "wrong", "x").send(session, "+4915112345678", "x")
        state.fail_next = 1
        with pytest.raises(SmsError, match="503") as busy:
            await HttpGateway(url, "AC123", "secret-token", "x").send(session, "+4915112345678", "x")
        assert not isinstance(busy.value, SmsRefused)  # worth retrying


async def test_the_notifier_sends_sms_with_retries_and_throttling(
        provider: tuple[_Provider, str]) -> None:
    state, url = provider
    notifier = Notifier(NotifierConfig(sms_gateway_url=url, sms_account_sid="AC123",
                                       sms_auth_token="secret-token", sms_from="+15005550006",
                                       retry_base_s=0.05))
    await notifier.start()
    try:
        state.fail_next = 1  # the first attempt meets a busy provider
        note = Notification(rule_id="r1", kind="raised", subject="[critical] boiler hot",
                            body="", payload={}, sms=("+4915112345678",), throttle_s=3600,
                            sms_text="[critical] boiler hot\n" + "x" * 300)
        assert notifier.submit(note)
        assert notifier.submit(note)  # the same rule and kind again: throttled
        for _ in range(100):
            if not notifier.busy:
                break
            await asyncio.sleep(0.05)
    finally:
        await notifier.close()
    bodies = [m["Body"] for m in state.messages]
    assert len(bodies) == 3 and [b[:6] for b in bodies] == ["(1/3) ", "(2/3) ", "(3/3) "]
    assert bodies[0].startswith("(1/3) [critical] boiler hot\n")
    assert notifier.stats.by_outcome == {("sms", "sent"): 1, ("sms", "throttled"): 1}


# ---- the modem ---------------------------------------------------------------------------------
class _Modem:
    """The far end of a pseudo-terminal, answering AT commands as a GSM modem does."""

    def __init__(self, *, refuse_send: bool = False) -> None:
        self.master, slave = os.openpty()
        self.port = os.ttyname(slave)
        self._slave = slave
        self.refuse_send = refuse_send
        self.commands: list[str] = []
        self.sent: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _answer(self, text: str) -> None:
        os.write(self.master, text.encode())

    def _serve(self) -> None:
        buffer = b""
        number: str | None = None
        while not self._stop.is_set():
            try:
                buffer += os.read(self.master, 1024)
            except OSError:
                return
            while True:
                if number is not None:  # the message text, up to Ctrl-Z
                    if b"\x1a" not in buffer:
                        break
                    text, buffer = buffer.split(b"\x1a", 1)
                    self.sent.append((number, text.decode("latin-1")))
                    number = None
                    self._answer("\r\nERROR\r\n" if self.refuse_send else "\r\n+CMGS: 7\r\n\r\nOK\r\n")
                    continue
                if b"\r" not in buffer:
                    break
                line, buffer = buffer.split(b"\r", 1)
                command = line.decode().strip()
                if not command:
                    continue
                self.commands.append(command)
                if command.startswith("AT+CMGS="):
                    number = command.split("=", 1)[1].strip('"')
                    self._answer("\r\n> ")
                elif command in ("AT", "AT+CMGF=1", 'AT+CSCS="GSM"', 'AT+CSCS="UCS2"',
                                 "AT+CSMP=17,167,0,8"):
                    self._answer("\r\nOK\r\n")
                else:
                    self._answer("\r\nERROR\r\n")

    def close(self) -> None:
        self._stop.set()
        os.close(self._slave)
        os.close(self.master)


@pytest.fixture
def modem() -> Iterator[_Modem]:
    far_end = _Modem()
    yield far_end
    far_end.close()


def test_the_modem_sends_in_text_mode(modem: _Modem) -> None:
    SerialModem(modem.port, timeout_s=5).send("+4915112345678", "Boiler hot")
    assert modem.commands[:3] == ["AT", "AT+CMGF=1", 'AT+CSCS="GSM"']
    assert modem.sent == [("+4915112345678", "Boiler hot")]


def test_the_modem_sends_other_alphabets_as_ucs2(modem: _Modem) -> None:
    SerialModem(modem.port, timeout_s=5).send("+74951234567", "Котёл")
    number, text = modem.sent[0]
    assert bytes.fromhex(number).decode("utf-16-be") == "+74951234567"
    assert bytes.fromhex(text).decode("utf-16-be") == "Котёл"
    assert 'AT+CSCS="UCS2"' in modem.commands


def test_a_modem_that_answers_error_refuses_the_message() -> None:
    far_end = _Modem(refuse_send=True)
    try:
        with pytest.raises(SmsRefused, match="ERROR"):
            SerialModem(far_end.port, timeout_s=5).send("+4915112345678", "Boiler hot")
    finally:
        far_end.close()


def test_no_modem_at_the_port_is_an_error_worth_retrying() -> None:
    with pytest.raises(SmsError) as failed:
        SerialModem("/dev/does-not-exist", timeout_s=1).send("+4915112345678", "x")
    assert not isinstance(failed.value, SmsRefused)


def test_a_silent_modem_times_out(tmp_path: Any) -> None:
    master, slave = os.openpty()
    try:
        with pytest.raises(SmsError, match="did not answer AT"):
            SerialModem(os.ttyname(slave), timeout_s=1).send("+4915112345678", "x")
    finally:
        os.close(slave)
        os.close(master)
