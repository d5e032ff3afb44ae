"""Real HTTP servers for tests, each on a free port in its own thread (aiohttp)."""

from __future__ import annotations

import asyncio
import base64
import threading
from typing import Self

from aiohttp import web

__all__ = ["SmsProvider", "ThreadedHttpServer"]


class ThreadedHttpServer:
    """A real HTTP server (aiohttp) on a free port in its own thread; :meth:`routes` says
    what it answers. A context manager, or :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        self.routes(app)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class SmsProvider(ThreadedHttpServer):
    """A Twilio-compatible messages API that records the SMS sent through it;
    :meth:`settings` are the worker's settings that send them here."""

    SID, TOKEN = "AC-test", "sms-token"

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[dict[str, str]] = []

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self._messages)

    async def _messages(self, request: web.Request) -> web.Response:
        if request.match_info["sid"] != self.SID or request.headers.get("Authorization") != \
                _basic(self.SID, self.TOKEN):
            return web.json_response({"message": "Authenticate"}, status=401)
        form = await request.post()
        self.messages.append({k: str(v) for k, v in form.items()})
        return web.json_response({"sid": f"SM{len(self.messages)}"}, status=201)

    def settings(self) -> dict[str, str]:
        return {"WEBSCADA_SMS_GATEWAY_URL": f"http://127.0.0.1:{self.port}",
                "WEBSCADA_SMS_ACCOUNT_SID": self.SID, "WEBSCADA_SMS_AUTH_TOKEN": self.TOKEN,
                "WEBSCADA_SMS_FROM": "+15005550006"}
