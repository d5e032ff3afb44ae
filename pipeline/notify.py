"""Alarm notifications by e-mail (SMTP), webhook and SMS, off the alarm path.

:meth:`Notifier.submit` never blocks: it puts the notification on a bounded
queue (when full, the notification is dropped, counted and logged). A
background task drains the queue and delivers each notification to each of its
recipients, at most ``concurrency`` deliveries at a time, retrying failures
with exponential backoff. SMS go through an HTTP gateway (Twilio-compatible) or
a serial GSM modem, whichever is configured (:mod:`pipeline.sms`); a text longer
than one SMS goes as numbered parts. Throttling, per recipient:

* per rule: one notification of a kind (raised, cleared) of a rule per
  ``throttle_s`` of that rule;
* overall: at most ``recipient_limit`` notifications per
  ``recipient_window_s``, whatever the rule.

Throttled notifications are counted, not queued for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiohttp
from prometheus_client import Counter

from pipeline.sms import HttpGateway, SerialModem, SmsError, SmsRefused, parts

__all__ = ["Notification", "Notifier", "NotifierConfig"]

log = logging.getLogger(__name__)

NOTIFICATIONS = Counter("webscada_alarm_notifications_total", "Alarm notifications by outcome",
                        ["channel", "outcome"])


@dataclass(frozen=True, slots=True)
class NotifierConfig:
    """Where and how notifications go; the worker builds it from the settings."""

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "webscada@localhost"
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_starttls: bool = False
    smtp_timeout_s: float = 10.0
    webhook_timeout_s: float = 5.0
    # SMS: an HTTP gateway (Twilio-compatible) when sms_gateway_url is set, else a modem
    # on sms_modem_port when that is set, else SMS recipients are skipped (logged, counted)
    sms_gateway_url: str | None = None
    sms_account_sid: str | None = None
    sms_auth_token: str | None = None
    sms_from: str = "WebSCADA"
    sms_modem_port: str | None = None
    sms_modem_baudrate: int = 115200
    queue_size: int = 1000
    concurrency: int = 4
    retries: int = 3  # attempts after the first
    retry_base_s: float = 1.0
    recipient_limit: int = 20
    recipient_window_s: float = 60.0


@dataclass(frozen=True, slots=True)
class Notification:
    """One alarm event to tell the rule's recipients about."""

    rule_id: str
    kind: str  # the alarm event: raised, cleared, ...
    subject: str
    body: str
    payload: Mapping[str, Any]  # the webhook's JSON body
    emails: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()
    sms: tuple[str, ...] = ()  # E.164 numbers
    sms_text: str = ""  # what an SMS says (short); the subject when empty
    throttle_s: float = 300.0


class _PermanentFailure(Exception):
    """A delivery that retrying cannot fix (e.g. a webhook answering 4xx)."""


@dataclass
class _Stats:
    sent: int = 0
    failed: int = 0
    throttled: int = 0
    dropped: int = 0
    by_outcome: dict[tuple[str, str], int] = field(default_factory=dict)

    def count(self, channel: str, outcome: str) -> None:
        setattr(self, outcome, getattr(self, outcome) + 1)
        self.by_outcome[(channel, outcome)] = self.by_outcome.get((channel, outcome), 0) + 1
        NOTIFICATIONS.labels(channel, outcome).inc()


class Notifier:
    """Delivers notifications in the background; see the module docstring."""

    def __init__(self, config: NotifierConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or NotifierConfig()
        self.stats = _Stats()
        self._clock = clock
        self._queue: asyncio.Queue[Notification] | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()
        self._handling = False  # the drain task holds a notification not yet handed out
        self._last_sent: dict[tuple[str, str, str], float] = {}  # (rule, kind, recipient) → time
        self._recent: dict[str, deque[float]] = {}  # recipient → send times in the window
        cfg = self.config
        self._gateway = (HttpGateway(cfg.sms_gateway_url, cfg.sms_account_sid or "",
                                     cfg.sms_auth_token or "", cfg.sms_from)
                         if cfg.sms_gateway_url else None)
        self._modem = (SerialModem(cfg.sms_modem_port, cfg.sms_modem_baudrate)
                       if cfg.sms_modem_port and not cfg.sms_gateway_url else None)

    async def start(self) -> None:
        if self._task is not None:
            return
        self._queue = asyncio.Queue(self.config.queue_size)
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.webhook_timeout_s))
        self._task = asyncio.create_task(self._drain(), name="webscada-notifier")

    def submit(self, notification: Notification) -> bool:
        """Queue ``notification``; False (counted, logged) when the queue is full or not started."""
        if not (notification.emails or notification.webhooks or notification.sms):
            return True
        if self._queue is None:
            log.warning("notifier not started; notification for rule %s dropped", notification.rule_id)
            self.stats.count("queue", "dropped")
            return False
        try:
            self._queue.put_nowait(notification)
        except asyncio.QueueFull:
            self.stats.count("queue", "dropped")
            log.warning("notification queue full (%d); dropped %s notification of rule %s",
                        self.config.queue_size, notification.kind, notification.rule_id)
            return False
        return True

    @property
    def busy(self) -> bool:
        """Whether notifications are queued or being delivered."""
        queued = self._queue is not None and not self._queue.empty()
        return queued or bool(self._deliveries) or self._handling

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for delivery in list(self._deliveries):
            delivery.cancel()
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._queue = None

    # --- background ---------------------------------------------------------------
    async def _drain(self) -> None:
        assert self._queue is not None
        slots = asyncio.Semaphore(self.config.concurrency)
        while True:
            notification = await self._queue.get()
            self._handling = True
            targets = [("email", to) for to in notification.emails]
            targets += [("webhook", url) for url in notification.webhooks]
            targets += [("sms", number) for number in notification.sms]
            for channel, target in targets:
                if not self._admit(notification, target):
                    self.stats.count(channel, "throttled")
                    log.info("%s to %s throttled (rule %s, %s)", channel, target,
                             notification.rule_id, notification.kind)
                    continue
                await slots.acquire()
                task = asyncio.create_task(self._deliver(channel, target, notification))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
                task.add_done_callback(lambda _: slots.release())
            self._handling = False

    def _admit(self, notification: Notification, recipient: str) -> bool:
        now = self._clock()
        key = (notification.rule_id, notification.kind, recipient)
        last = self._last_sent.get(key)
        if last is not None and now - last < notification.throttle_s:
            return False
        recent = self._recent.setdefault(recipient, deque())
        while recent and now - recent[0] >= self.config.recipient_window_s:
            recent.popleft()
        if len(recent) >= self.config.recipient_limit:
            return False
        recent.append(now)
        self._last_sent[key] = now
        return True

    async def _deliver(self, channel: str, target: str, notification: Notification) -> None:
        delay = self.config.retry_base_s
        for attempt in range(self.config.retries + 1):
            try:
                if channel == "email":
                    await asyncio.to_thread(self._send_mail, target, notification)
                elif channel == "sms":
                    await self._send_sms(target, notification)
                else:
                    await self._post(target, notification)
            except (_PermanentFailure, SmsRefused) as exc:
                log.warning("%s to %s failed for good: %s", channel, target, exc)
                break
            except (OSError, smtplib.SMTPException, aiohttp.ClientError, TimeoutError,
                    SmsError) as exc:
                if attempt == self.config.retries:
                    log.warning("%s to %s failed after %d attempts: %s", channel, target, attempt + 1, exc)
                    break
                log.info("%s to %s failed (%s); retrying in %.1f s", channel, target, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self.stats.count(channel, "sent")
                return
        self.stats.count(channel, "failed")

    def _send_mail(self, to: str, notification: Notification) -> None:
        cfg = self.config
        message = EmailMessage()
        message["From"] = cfg.smtp_from
        message["To"] = to
        message["Subject"] = notification.subject
        message.set_content(notification.body)
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_s) as smtp:
            if cfg.smtp_starttls:
                smtp.starttls()
            if cfg.smtp_username:
                smtp.login(cfg.smtp_username, cfg.smtp_password or "")
            smtp.send_message(message)

    async def _send_sms(self, number: str, notification: Notification) -> None:
        text = (notification.sms_text or notification.subject)[:1000]
        if self._gateway is not None:
            assert self._http is not None
            for part in parts(text):
                await self._gateway.send(self._http, number, part)
        elif self._modem is not None:
            for part in parts(text):
                await asyncio.to_thread(self._modem.send, number, part)
        else:
            raise SmsRefused("no SMS transport configured (WEBSCADA_SMS_GATEWAY_URL or"
                             " WEBSCADA_SMS_MODEM_PORT)")

    async def _post(self, url: str, notification: Notification) -> None:
        assert self._http is not None
        async with self._http.post(url, json=dict(notification.payload)) as resp:
            if resp.status < 300:
                return
            detail = f"HTTP {resp.status} from {url}"
            if resp.status in (408, 429) or resp.status >= 500:
                raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status,
                                                  message=detail)
            raise _PermanentFailure(detail)
