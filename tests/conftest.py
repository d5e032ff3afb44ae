"""Fixtures shared by every tier.

Integration tests talk to the real local stack. The session starts it (the
same `webscada stack up` a user runs) when any integration test is collected,
and starts the stream worker (`webscada worker`) for tests that need the
pipeline. Nothing is skipped for a missing service: a service that cannot be
started fails the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from pipeline.settings import ROOT, Settings
from tests.httpservers import SmsProvider

T = TypeVar("T")


def wait_until(check: Callable[[], T | None], *, timeout: float = 15.0, interval: float = 0.2,
               what: str = "condition") -> T:
    """Call ``check`` until it returns something truthy; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"{what} not reached within {timeout:.0f} s (last value: {last!r})")


def unique_id(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Settings:
    """The real local services, started if they are not running."""
    from infra import stack as local_stack

    assert local_stack.up(settings) == 0, "the local stack did not come up; see .stack/logs/"
    return settings


def _start(argv: list[str], log_name: str, settings: Settings,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = open(logs / log_name, "ab")
    # MQTT connectors of the tests subscribe plainly (one connector, as `make run` by
    # default): each gets every message, whatever shared sessions an earlier run left.
    defaults = {"PYTHONUNBUFFERED": "1", "WEBSCADA_MQTT_SHARE_GROUP": "",
                "WEBSCADA_MQTT_CONNECTORS": "1"}
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, **defaults, **(env or {})},
                            start_new_session=True)


def stop_process(proc: subprocess.Popen[bytes], *, timeout: float = 30) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# A killed worker's group members are dropped after this long (faust reads it from the
# environment), so a restarted worker gets its partitions back within seconds.
def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


WORKER_ENV = {"BROKER_SESSION_TIMEOUT": "10", "BROKER_HEARTBEAT_INTERVAL": "1"}


class WorkerProcess:
    """`webscada worker` (every role, one process each) as one process group, which a test may
    kill with SIGKILL and start again."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = _start([sys.executable, "-m", "pipeline.cli", "worker"], "test-worker.log",
                           self._settings, WORKER_ENV)

    def kill(self) -> None:
        """``kill -9`` of the supervisor and every role process: nothing gets to clean up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture(scope="session")
def sms_provider() -> Iterator[SmsProvider]:
    """A Twilio-compatible SMS API for the session; every worker started by the tests sends
    its alarm SMS there (its settings join ``WORKER_ENV``): alarms roles of different
    workers share the consumer group, so any of them may be the one that raises an alarm."""
    provider = SmsProvider()
    provider.start()
    WORKER_ENV.update(provider.settings())
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def worker(stack: Settings, sms_provider: SmsProvider) -> Iterator[WorkerProcess]:
    """`webscada worker` (validate, sinks, alarms, dispatcher), ready when a probe reading lands."""
    from tests.integration.helpers import influx_points, produce_telemetry, redis_latest

    proc = WorkerProcess(stack)
    proc.start()
    try:  # stopped even when it never got ready: a worker left running skews later tests
        probe = unique_id("probe")
        produce_telemetry(stack, probe, {"probe": 1.0})
        wait_until(lambda: redis_latest(stack, probe) and influx_points(stack, probe), timeout=90,
                   what="worker readiness (a probe reading in Redis and InfluxDB)")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def start_process(stack: Settings) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start a project command (``webscada ...`` arguments) in the background; stopped at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str, log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = _start([sys.executable, "-m", "pipeline.cli", *args], log_name, stack, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture
def start_scoped_process(stack: Settings) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Like ``start_process``, but stopped when the test ends; MQTT sessions of the client ids
    given as ``mqtt_client_id`` are removed from the broker afterwards (no queue left behind)."""
    started: list[subprocess.Popen[bytes]] = []
    client_ids: list[str] = []

    def start(*args: str, log_name: str, env: dict[str, str] | None = None,
              mqtt_client_id: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(env or {})
        if mqtt_client_id:
            env["WEBSCADA_MQTT_CLIENT_ID"] = mqtt_client_id
            client_ids.append(mqtt_client_id)
        proc = _start([sys.executable, "-m", "pipeline.cli", *args], log_name, stack, env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        stop_process(proc)
    from tests.integration.live import forget_mqtt_session

    for client_id in client_ids:
        forget_mqtt_session(stack, client_id)
