"""Alarm notifications delivered to a real SMTP server (aiosmtpd) and a real HTTP receiver (aiohttp)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from pipeline.notify import Notification, Notifier, NotifierConfig
from tests.conftest import free_port

pytestmark = pytest.mark.integration


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Any]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[_Mailbox, int]]:
    mailbox = _Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield mailbox, controller.port
    finally:
        controller.stop()


class _Hooks:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.flaky_failures = 2
        self.flaky_calls = 0


@pytest.fixture
async def webhooks() -> AsyncIterator[tuple[_Hooks, int]]:
    hooks = _Hooks()

    async def hook(request: web.Request) -> web.Response:
        hooks.received.append(await request.json())
        return web.Response(status=204)

    async def flaky(request: web.Request) -> web.Response:
        hooks.flaky_calls += 1
        if hooks.flaky_calls <= hooks.flaky_failures:
            return web.Response(status=503)
        hooks.received.append(await request.json())
        return web.Response(status=200)

    async def gone(request: web.Request) -> web.Response:
        hooks.flaky_calls += 1
        return web.Response(status=404)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/flaky", flaky)
    app.router.add_post("/gone", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield hooks, port
    finally:
        await runner.cleanup()


def _note(rule_id: str = "rule-1", kind: str = "raised", *, emails: tuple[str, ...] = (),
          webhooks: tuple[str, ...] = (), throttle_s: float = 300.0) -> Notification:
    return Notification(rule_id=rule_id, kind=kind, subject=f"[WebSCADA] MAJOR alarm {kind}: {rule_id}",
                        body=f"alarm {kind}", payload={"event": kind, "rule_id": rule_id},
                        emails=emails, webhooks=webhooks, throttle_s=throttle_s)


async def _settle(notifier: Notifier) -> None:
    async with asyncio.timeout(20):
        await asyncio.sleep(0.05)
        while notifier.busy:  # noqa: ASYNC110 - polling the notifier's public state is the point
            await asyncio.sleep(0.05)


async def test_email_and_webhook_delivered_and_throttled_per_rule(
        smtp: tuple[_Mailbox, int], webhooks: tuple[_Hooks, int]) -> None:
    mailbox, smtp_port = smtp
    hooks, http_port = webhooks
    notifier = Notifier(NotifierConfig(smtp_port=smtp_port, smtp_from="scada@example.com"))
    await notifier.start()
    try:
        url = f"http://127.0.0.1:{http_port}/hook"
        recipients = ("ops@example.com", "boss@example.com")
        assert notifier.submit(_note(emails=recipients, webhooks=(url,)))
        await _settle(notifier)
        assert sorted(to for tos, _ in mailbox.messages for to in tos) == sorted(recipients)
        message = mailbox.messages[0][1]
        assert message["From"] == "scada@example.com"
        assert message["Subject"] == "[WebSCADA] MAJOR alarm raised: rule-1"
        assert hooks.received == [{"event": "raised", "rule_id": "rule-1"}]

        # The same rule and kind again within the rule's throttle: nothing sent.
        for _ in range(5):
            notifier.submit(_note(emails=recipients, webhooks=(url,)))
        # Another kind of the same rule, and another rule, still go out.
        notifier.submit(_note(kind="cleared", emails=recipients[:1]))
        notifier.submit(_note(rule_id="rule-2", webhooks=(url,)))
        await _settle(notifier)
        assert len(mailbox.messages) == 3
        assert mailbox.messages[2][1]["Subject"].endswith("alarm cleared: rule-1")
        assert [h["rule_id"] for h in hooks.received] == ["rule-1", "rule-2"]
        assert notifier.stats.throttled == 15 and notifier.stats.sent == 5
    finally:
        await notifier.close()


async def test_per_recipient_limit_across_rules(smtp: tuple[_Mailbox, int]) -> None:
    mailbox, smtp_port = smtp
    notifier = Notifier(NotifierConfig(smtp_port=smtp_port, recipient_limit=3, recipient_window_s=60))
    await notifier.start()
    try:
        for i in range(6):
            notifier.submit(_note(rule_id=f"rule-{i}", emails=("ops@example.com",)))
        notifier.submit(_note(rule_id="rule-9", emails=("other@example.com",)))
        await _settle(notifier)
        assert sorted(tos[0] for tos, _ in mailbox.messages) == ["ops@example.com"] * 3 + [
            "other@example.com"]
        assert notifier.stats.throttled == 3
    finally:
        await notifier.close()


async def test_failed_deliveries_are_retried_with_backoff(
        smtp: tuple[_Mailbox, int], webhooks: tuple[_Hooks, int]) -> None:
    hooks, http_port = webhooks
    dead_port = free_port()  # nothing listens there
    notifier = Notifier(NotifierConfig(smtp_port=dead_port, retries=2, retry_base_s=0.05))
    await notifier.start()
    try:
        notifier.submit(_note(webhooks=(f"http://127.0.0.1:{http_port}/flaky",)))
        notifier.submit(_note(rule_id="rule-mail", emails=("ops@example.com",)))
        await _settle(notifier)
        assert hooks.flaky_calls == 3 and len(hooks.received) == 1  # two 503s, then delivered
        assert notifier.stats.sent == 1 and notifier.stats.failed == 1  # the mail: 3 attempts, refused

        hooks.flaky_calls = 0
        notifier.submit(_note(rule_id="rule-gone", webhooks=(f"http://127.0.0.1:{http_port}/gone",)))
        await _settle(notifier)
        assert hooks.flaky_calls == 1  # a 404 is not retried
        assert notifier.stats.failed == 2
    finally:
        await notifier.close()


async def test_submit_never_blocks_and_counts_overflow(smtp: tuple[_Mailbox, int]) -> None:
    mailbox, smtp_port = smtp
    notifier = Notifier(NotifierConfig(smtp_port=smtp_port, queue_size=2))
    await notifier.start()
    try:
        started = time.perf_counter()
        accepted = [notifier.submit(_note(rule_id=f"r{i}", emails=(f"u{i}@example.com",)))
                    for i in range(10)]
        assert time.perf_counter() - started < 0.1
        assert accepted == [True, True] + [False] * 8
        assert notifier.stats.dropped == 8
        await _settle(notifier)
        assert len(mailbox.messages) == 2
    finally:
        await notifier.close()
