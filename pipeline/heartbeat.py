"""Heartbeats: every long-running process says, every few seconds, that it is alive.

Each worker role, connector and API process runs a :class:`Heartbeat` thread that
writes ``webscada:heartbeat:{component}:{host}:{pid}`` in Redis (JSON: component,
host, pid, version, start and beat times, and its own queue depth or consumer lag
under ``detail``) with a TTL of three intervals, and records the component in the
hash ``webscada:components`` (component → last beat, no TTL), so that a component
that stopped beating is remembered as *down* rather than forgotten.

:func:`component_health` turns what Redis holds into each component's state:

- ``up``: a beat newer than two intervals;
- ``stale``: the newest beat is older than that but its key has not expired yet;
- ``down``: no beat at all, but one within ``FORGET_S`` (a day): a component not
  heard of for a day is dropped from the report (it was removed on purpose).

A thread rather than a task: connectors are threaded, and a thread beats even
while its process's event loop is busy (a loop stuck for long does not beat in
the API, which is what ``stale`` is for there).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import redis
import redis.asyncio

from pipeline import __version__

__all__ = ["COMPONENTS_KEY", "FORGET_S", "INTERVAL_S", "KEY_PREFIX", "Heartbeat", "component_health",
           "read_components", "read_components_async"]

log = logging.getLogger(__name__)

KEY_PREFIX = "webscada:heartbeat:"
COMPONENTS_KEY = "webscada:components"
INTERVAL_S = 5.0
FORGET_S = 86400.0

Detail = Callable[[], Mapping[str, Any]]


class Heartbeat:
    """Beats for ``component`` (e.g. ``worker:validate``, ``connect:mqtt``, ``api``) until stopped."""

    def __init__(self, redis_url: str, component: str, *, interval_s: float = INTERVAL_S,
                 detail: Detail | None = None) -> None:
        self.component = component
        self.interval_s = interval_s
        self._detail = detail
        self._client = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._host = socket.gethostname()
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return f"{KEY_PREFIX}{self.component}:{self._host}:{os.getpid()}"

    def start(self) -> Heartbeat:
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.component}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and take this process's beat away (a clean stop is not a failure)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval_s + 2)
        try:
            self._client.delete(self.key)
        except redis.RedisError:
            pass
        self._client.close()

    def beat(self) -> None:
        now = time.time()
        detail: Mapping[str, Any] = {}
        if self._detail is not None:
            try:
                detail = self._detail()
            except Exception as exc:  # a report must never stop the beat
                detail = {"error": str(exc)[:200]}
        body = {"component": self.component, "host": self._host, "pid": os.getpid(),
                "version": __version__, "started_at": self._started, "at": now,
                "uptime_s": round(now - self._started, 1), "detail": dict(detail)}
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self.key, json.dumps(body), ex=max(1, round(self.interval_s * 3)))
        pipe.hset(COMPONENTS_KEY, self.component, str(now))
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.beat()
            except redis.RedisError as exc:
                log.debug("heartbeat of %s not written: %s", self.component, exc)
            self._stop.wait(self.interval_s)


def _parsed(known: Mapping[Any, Any], raws: list[Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    components = {(k.decode() if isinstance(k, bytes) else str(k)): float(v) for k, v in known.items()}
    beats = []
    for raw in raws:
        if raw is None:  # expired between the scan and the read
            continue
        try:
            beats.append(json.loads(raw))
        except ValueError:
            continue
    return components, beats


def read_components(client: redis.Redis) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The components ever heard of (→ last beat) and every live beat (blocking)."""
    known: Mapping[Any, Any] = client.hgetall(COMPONENTS_KEY)  # type: ignore[assignment]
    keys = list(client.scan_iter(match=f"{KEY_PREFIX}*", count=500))
    raws: list[Any] = client.mget(keys) if keys else []  # type: ignore[assignment]
    return _parsed(known, raws)


async def read_components_async(client: redis.asyncio.Redis) -> tuple[dict[str, float],
                                                                      list[dict[str, Any]]]:
    """:func:`read_components` with an asyncio client (the API's)."""
    known: Mapping[Any, Any] = await client.hgetall(COMPONENTS_KEY)  # type: ignore[misc]
    keys = [key async for key in client.scan_iter(match=f"{KEY_PREFIX}*", count=500)]
    raws: list[Any] = await client.mget(keys) if keys else []
    return _parsed(known, raws)


def component_health(known: Mapping[str, float], beats: list[dict[str, Any]], *, now: float,
                     interval_s: float = INTERVAL_S,
                     required: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Per component: ``status`` (up/stale/down), whether it is ``required``, its live
    ``instances`` (host, pid, version, uptime, age of the beat, detail) and ``last_beat_s``
    ago (None: never heard of; a required component never heard of is down)."""
    report: dict[str, dict[str, Any]] = {}
    by_component: dict[str, list[dict[str, Any]]] = {}
    for beat in beats:
        by_component.setdefault(str(beat.get("component")), []).append(beat)
    for component in sorted(set(known) | set(by_component)):
        live = by_component.get(component, [])
        last = max([float(b.get("at", 0)) for b in live] + [known.get(component, 0.0)])
        if not live and now - last > FORGET_S:
            continue
        fresh = [b for b in live if now - float(b.get("at", 0)) <= 2 * interval_s]
        status = "up" if fresh else "stale" if live else "down"
        instances = [{"host": b.get("host"), "pid": b.get("pid"), "version": b.get("version"),
                      "uptime_s": b.get("uptime_s"), "age_s": round(now - float(b.get("at", 0)), 1),
                      "detail": b.get("detail", {})}
                     for b in sorted(live, key=lambda b: int(b.get("pid", 0)))]
        report[component] = {"status": status, "last_beat_s": round(now - last, 1),
                             "instances": instances}
    wanted = set(required)
    for component in wanted - set(report):
        report[component] = {"status": "down", "last_beat_s": None, "instances": []}
    return {name: {**entry, "required": name in wanted} for name, entry in sorted(report.items())}
