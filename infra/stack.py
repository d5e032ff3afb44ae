"""`webscada stack up|down|status`: the local stack, idempotent, on loopback."""

from __future__ import annotations

import time

from infra.services import InfluxDB, Kafka, Mosquitto, Postgres, Redis, Service, StackError
from pipeline.settings import Settings

__all__ = ["down", "services", "status", "up"]


def services(settings: Settings) -> list[Service]:
    return [
        Postgres(settings),
        Redis(settings),
        Mosquitto(settings),
        Kafka(settings),
        InfluxDB(settings),
    ]


def _answers(service: Service) -> bool:
    try:
        return service.answers()
    except Exception:
        return False


def up(settings: Settings, *, only: set[str] | None = None) -> int:
    """Install what is missing, reuse what answers, start the rest, wait for each."""
    settings.stack_dir.mkdir(parents=True, exist_ok=True)
    failures = 0
    for service in services(settings):
        if only and service.name not in only:
            continue
        started = time.monotonic()
        try:
            if _answers(service):
                verb = "already running"
            else:
                service.install()
                service.start()
                verb = "started"
            service.prepare()
        except StackError as exc:
            failures += 1
            print(f"{service.name:10} FAILED   {exc}\n{service.tail_log(15)}", flush=True)
            continue
        took = time.monotonic() - started
        print(f"{service.name:10} up       {service.address:38} {verb} ({took:.1f} s)", flush=True)
    return 1 if failures else 0


def down(settings: Settings, *, only: set[str] | None = None) -> int:
    for service in reversed(services(settings)):
        if only and service.name not in only:
            continue
        try:
            service.stop()
        except Exception as exc:
            print(f"{service.name:10} stop failed: {exc}")
            continue
        print(f"{service.name:10} stopped")
    return 0


def status(settings: Settings) -> int:
    down_count = 0
    for service in services(settings):
        state = "up" if _answers(service) else "down"
        down_count += state == "down"
        print(f"{service.name:10} {state:8} {service.address}")
    return 1 if down_count else 0
