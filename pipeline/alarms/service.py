"""The alarm engine's running state: rules, trackers and devices, kept in step with PostgreSQL.

PostgreSQL is the truth. On start the service loads the rules, the active
alarms, the shelves and the device time of each (rule, device)'s last
transition; afterwards it re-reads them every few seconds, so rule changes and
operator actions (ack, clear, shelve through the API) take effect without a
restart. Every transition goes through :class:`~pipeline.alarms.store.AlarmStore`
(conditional SQL), then its AlarmEvent is published and acknowledged by Kafka,
and only then does :meth:`AlarmService.process` return — the caller acknowledges
its input after that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from pipeline.alarms.engine import Decision, Tracker, stale_due, step
from pipeline.alarms.events import AlarmEvent
from pipeline.alarms.rules import AlarmRule
from pipeline.alarms.store import AlarmStore, StoredEvent, StoreUnavailable, Transition
from pipeline.notify import Notification, Notifier
from pipeline.producer import Outgoing
from pipeline.settings import Topics
from schemas import Telemetry
from schemas.batch import ReadingBatch, from_micros

__all__ = ["AlarmService", "notification_for"]

log = logging.getLogger(__name__)

Key = tuple[str, str]
Publish = Callable[[list[Outgoing]], Awaitable[None]]
T = TypeVar("T")

_MAX_BACKOFF_S = 10.0


@dataclass(slots=True)
class _Device:
    application_id: str | None
    heard: float  # wall clock (epoch s) the newest reading was received
    last_ts_us: int | None = None  # its device time, µs since 1970

    @property
    def last_ts(self) -> datetime | None:
        return None if self.last_ts_us is None else from_micros(self.last_ts_us)


def notification_for(rule: AlarmRule, event: AlarmEvent) -> Notification:
    """The e-mail/webhook/SMS notification telling ``rule``'s recipients about ``event``."""
    what = f"{rule.metric} {rule.operator} {rule.threshold:g}" if rule.threshold is not None else "stale data"
    subject = f"[WebSCADA] {event.severity.upper()} alarm {event.event}: {rule.name} on {event.device_id}"
    body = "\n".join([
        f"Alarm {event.event} at {event.to_json()['at']}",
        f"Rule: {rule.name} ({what})",
        f"Device: {event.device_id}",
        f"Severity: {event.severity}",
        f"State: {event.state}",
        f"Value: {event.value if event.value is not None else '-'}",
        event.message,
        f"Alarm id: {event.alarm_id}",
    ])
    return Notification(rule_id=rule.id, kind=event.event, subject=subject, body=body,
                        payload={**event.to_json(), "rule_name": rule.name},
                        emails=rule.notify_emails, webhooks=rule.notify_webhooks,
                        sms=rule.notify_sms,
                        sms_text=f"{event.severity.upper()} alarm {event.event}: {rule.name} on"
                                 f" {event.device_id}. {event.message}".strip(),
                        throttle_s=rule.notify_throttle_seconds)


class AlarmService:
    """Judges readings and silence against the rules; see the module docstring."""

    def __init__(self, store: AlarmStore, publish: Publish, *, notifier: Notifier | None = None,
                 refresh_s: float = 2.0, devices_refresh_s: float = 5.0, relay_s: float = 10.0,
                 relay_after_s: float = 15.0, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self._publish = publish
        self._notifier = notifier
        self._refresh_s = refresh_s
        self._devices_refresh_s = devices_refresh_s
        self._relay_s = relay_s
        self._relay_after_s = relay_after_s
        self._wall = wall
        self._lock = asyncio.Lock()
        self._ready = False
        self._started_at = 0.0
        self._rules: dict[str, AlarmRule] = {}
        self._signature: tuple[Any, ...] | None = None
        self._by_device: dict[str, list[AlarmRule]] = {}
        self._by_app: dict[str, list[AlarmRule]] = {}
        self._everywhere: list[AlarmRule] = []
        self._stale: list[AlarmRule] = []
        self._trackers: dict[Key, Tracker] = {}
        self._shelves: dict[Key, float] = {}
        self._devices: dict[str, _Device] = {}
        self._next = {"refresh": 0.0, "devices": 0.0, "relay": 0.0}

    # --- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Load the view from PostgreSQL (waiting for it if it is down). Idempotent."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            self._started_at = self._wall()
            await self._retry(self._load, "loading alarm state")
            if self._notifier is not None:
                await self._notifier.start()
            self._ready = True
            log.info("alarm engine: %d rule(s), %d active alarm(s)", len(self._rules),
                     sum(t.active for t in self._trackers.values()))

    async def _load(self) -> None:
        await self._load_rules(force=True)
        floors = await self.store.floors()
        for key, floor in floors.items():
            self._tracker(key).floor = floor
        await self._sync_active()
        self._shelves = await self.store.shelves()

    def tracker(self, rule_id: str, device_id: str) -> Tracker | None:
        """The engine's view of one (rule, device), if it has one."""
        return self._trackers.get((rule_id, device_id))

    # --- readings -------------------------------------------------------------------
    async def process(self, readings: ReadingBatch | Sequence[Telemetry]) -> list[AlarmEvent]:
        """Judge ``readings`` (in order); returns the events published for them."""
        batch = readings if isinstance(readings, ReadingBatch) else ReadingBatch.of(readings)
        await self.start()
        async with self._lock:
            transitions: list[Transition] = []
            for i, device_id in enumerate(batch.device_id):
                application_id = batch.application_id[i]
                self._heard(device_id, application_id, batch.received_at[i], batch.ts[i])
                ts: datetime | None = None  # only made when a rule needs it
                metrics = batch.metrics[i]
                for rule in self._rules_for(device_id, application_id):
                    value = None if rule.is_stale else metrics.get(rule.metric or "")
                    if value is None and not rule.is_stale:
                        continue
                    if ts is None:
                        ts = from_micros(batch.ts[i])
                    transition = self._judge(rule, device_id, value, ts)
                    if transition is not None:
                        transitions.append(transition)
            return await self._apply(transitions) if transitions else []

    def _judge(self, rule: AlarmRule, device_id: str, value: float | None,
               ts: datetime) -> Transition | None:
        key = (rule.id, device_id)
        tracker = self._tracker(key)
        decision = step(rule, tracker, value, ts)
        if decision is Decision.RAISE:
            if self._shelved(key):
                return None  # the condition keeps holding; it raises once the shelf expires
            tracker.set_active(True, ts)
            text = "" if value is None else f"{rule.metric} = {value:g} {rule.operator} {rule.threshold:g}"
            return Transition("raise", rule, device_id, value, ts, text)
        if decision is Decision.CLEAR:
            tracker.set_active(False, ts)
            return Transition("clear", rule, device_id, value, ts, "returned to normal")
        return None

    def _heard(self, device_id: str, application_id: str | None, received_at_us: int,
               ts_us: int) -> None:
        heard = received_at_us / 1e6
        seen = self._devices.get(device_id)
        if seen is None:
            self._devices[device_id] = _Device(application_id, heard, ts_us)
            return
        seen.heard = max(seen.heard, heard)
        if seen.last_ts_us is None or ts_us > seen.last_ts_us:
            seen.last_ts_us = ts_us
        if application_id:
            seen.application_id = application_id

    # --- the wall-clock timer ---------------------------------------------------------
    async def tick(self) -> list[AlarmEvent]:
        """Periodic work: re-read rules and alarms, raise stale-data alarms, relay the outbox."""
        await self.start()
        now = self._wall()
        async with self._lock:
            try:
                if now >= self._next["refresh"]:
                    self._next["refresh"] = now + self._refresh_s
                    await self._load_rules(force=False)
                    await self._sync_active()
                    self._shelves = await self.store.shelves()
                if self._stale and now >= self._next["devices"]:
                    self._next["devices"] = now + self._devices_refresh_s
                    await self._load_devices()
                published = await self._raise_stale(now)
                if now >= self._next["relay"]:
                    self._next["relay"] = now + self._relay_s
                    await self._relay_unpublished()
            except StoreUnavailable as exc:
                log.warning("alarm engine: %s; will try again", exc)
                return []
            return published

    async def _raise_stale(self, now: float) -> list[AlarmEvent]:
        transitions: list[Transition] = []
        for rule in self._stale:
            for device_id, seen in self._devices.items():
                if not rule.applies_to(device_id, seen.application_id):
                    continue
                key = (rule.id, device_id)
                tracker = self._tracker(key)
                last_heard = max(seen.heard, self._started_at)
                if not stale_due(rule, tracker, last_heard=last_heard, now=now) or self._shelved(key):
                    continue
                tracker.set_active(True, seen.last_ts)
                silent = now - seen.heard
                transitions.append(Transition("raise", rule, device_id, round(silent, 3), seen.last_ts,
                                              f"no reading for {silent:.0f} s"))
        return await self._apply(transitions) if transitions else []

    async def _load_devices(self) -> None:
        for device_id, application_id, last_seen in await self.store.devices():
            seen = self._devices.get(device_id)
            if seen is None:
                self._devices[device_id] = _Device(application_id, last_seen)
                continue
            seen.heard = max(seen.heard, last_seen)
            seen.application_id = seen.application_id or application_id

    # --- applying and publishing ------------------------------------------------------
    async def _apply(self, transitions: list[Transition]) -> list[AlarmEvent]:
        results = await self._retry(lambda: self.store.apply(transitions), "applying alarm transitions")
        events = [event for _, event in results if event is not None]
        if any(event is None for _, event in results):
            # Refused (already done before a replay, shelved, cleared by an operator):
            # take the store's word for what is active.
            await self._retry(self._sync_active, "re-reading active alarms")
        await self._send(events)
        return [stored.event for stored in events]

    async def _send(self, events: list[StoredEvent]) -> None:
        if not events:
            return
        await self._publish([Outgoing(Topics.ALARMS, s.event.device_id.encode(), s.event.encode())
                             for s in events])
        await self._retry(lambda: self.store.mark_published([s.outbox_id for s in events]),
                          "marking alarm events published")
        for stored in events:
            log.info("alarm %s %s: rule %s device %s (%s)", stored.event.alarm_id, stored.event.event,
                     stored.event.rule_id, stored.event.device_id, stored.event.message)
            rule = self._rules.get(stored.event.rule_id)
            notify = stored.event.event in ("raised", "cleared")
            if self._notifier is not None and rule is not None and notify:
                self._notifier.submit(notification_for(rule, stored.event))

    async def relay(self) -> None:
        """Publish the events a crash (or an API that lost Kafka) left unpublished."""
        await self.start()
        async with self._lock:
            await self._relay_unpublished()

    async def _relay_unpublished(self) -> None:
        pending = await self.store.unpublished(older_than_s=self._relay_after_s)
        if pending:
            log.warning("alarm engine: relaying %d unpublished alarm event(s)", len(pending))
            await self._send(pending)

    async def _retry(self, action: Callable[[], Awaitable[T]], what: str) -> T:
        delay = 0.5
        while True:
            try:
                return await action()
            except StoreUnavailable as exc:
                log.warning("alarm engine: %s failed: %s; retrying in %.1f s", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_BACKOFF_S)

    # --- the view ------------------------------------------------------------------------
    def _tracker(self, key: Key) -> Tracker:
        tracker = self._trackers.get(key)
        if tracker is None:
            tracker = self._trackers[key] = Tracker()
        return tracker

    def _shelved(self, key: Key) -> bool:
        until = self._shelves.get(key)
        return until is not None and until > self._wall()

    def _rules_for(self, device_id: str, application_id: str | None) -> Iterable[AlarmRule]:
        yield from self._by_device.get(device_id, ())
        if application_id is not None:
            yield from self._by_app.get(application_id, ())
        yield from self._everywhere

    async def _sync_active(self) -> None:
        active = await self.store.active()
        for key, tracker in self._trackers.items():
            if tracker.active != (key in active):
                tracker.set_active(key in active)
        for key in active:
            if key not in self._trackers:
                self._trackers[key] = Tracker(active=True)

    async def _load_rules(self, *, force: bool) -> None:
        signature = await self.store.rules_signature()
        if not force and signature == self._signature:
            return
        rules = {rule.id: rule for rule in await self.store.rules()}
        for key, tracker in list(self._trackers.items()):
            old, new = self._rules.get(key[0]), rules.get(key[0])
            if new is None and old is not None:
                del self._trackers[key]
            elif old is not None and new is not None and not old.same_condition(new):
                tracker.reset_timers()
        self._rules, self._signature = rules, signature
        self._by_device, self._by_app, self._everywhere, self._stale = {}, {}, [], []
        for rule in rules.values():
            if not rule.enabled:
                continue
            if rule.device_id is not None:
                self._by_device.setdefault(rule.device_id, []).append(rule)
            elif rule.application_id is not None:
                self._by_app.setdefault(rule.application_id, []).append(rule)
            else:
                self._everywhere.append(rule)
            if rule.is_stale:
                self._stale.append(rule)
        if self._stale:
            self._next["devices"] = 0.0
        log.info("alarm engine: %d rule(s) loaded (%d enabled)", len(rules),
                 sum(r.enabled for r in rules.values()))
