"""The system under test, started as ``make run`` starts it, against the running local stack.

- the worker (``webscada worker``: a supervisor and one process per role, the
  alarm engine included), whose sink roles serve ``/metrics``;
- the MQTT connector process(es) (``webscada connect mqtt``) and the API
  (``webscada api``), for the end-to-end runs.

:class:`SinkMetrics` reads each sink role's ``webscada_sink_records_total``
(readings written) and ``webscada_sink_delay_seconds`` (device time → write
confirmed, per reading; quantiles interpolated inside buckets, as Prometheus
does).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.common import Proc, cpu_seconds, role_pids, tree_pids, wait_for
from pipeline.app import all_roles
from pipeline.mqtt_accounts import login
from pipeline.settings import Settings, Topics

__all__ = ["SINKS", "WORKER_GROUPS", "WORKER_ROLES", "Pipeline", "SinkMetrics", "sink_delays"]

SINKS = ("redis", "influxdb", "postgres")
# the roles every reading passes (the dispatcher and extra agents idle meanwhile)
WORKER_ROLES = ("validate", "sink-redis", "sink-influxdb", "sink-postgres", "alarms")
# their consumer groups and the topic each consumes
WORKER_GROUPS = {f"webscada-{role}": Topics.RAW if role == "validate" else Topics.VALID
                 for role in WORKER_ROLES}
_QUIET = {"WEBSCADA_LOG_LEVEL": "warning"}


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SinkMetrics:
    """Scrapes the delay histogram and the written counter of each sink role's /metrics."""

    def __init__(self, settings: Settings) -> None:
        roles = all_roles(settings)
        self._urls = {sink: f"http://{settings.metrics_host}:"
                            f"{settings.metrics_port_base + roles.index(f'sink-{sink}')}/metrics"
                      for sink in SINKS}

    def scrape(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sink, url in self._urls.items():
            text = httpx.get(url, timeout=5).text
            buckets: list[tuple[float, float]] = []
            written = 0.0
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "webscada_sink_delay_seconds_bucket":
                        buckets.append((float(sample.labels["le"]), sample.value))
                    elif sample.name == "webscada_sink_records_total":
                        written += sample.value
            out[sink] = {"buckets": sorted(buckets), "written": written}
        return out

    def written(self) -> dict[str, float]:
        return {sink: figures["written"] for sink, figures in self.scrape().items()}

    def answers(self) -> bool:
        try:
            self.scrape()
        except (httpx.HTTPError, OSError):
            return False
        return True


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile of cumulative ``(le, count)`` buckets (interpolated)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_le, lower_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower_le
            if count == lower_count:
                return le
            return lower_le + (le - lower_le) * (rank - lower_count) / (count - lower_count)
        lower_le, lower_count = le, count
    return lower_le


def sink_delays(after: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per sink, readings written and p50/p95/p99 device → store (ms) between two scrapes."""
    figures: dict[str, Any] = {}
    for sink in SINKS:
        old = dict(before[sink]["buckets"])
        buckets = [(le, count - old.get(le, 0.0)) for le, count in after[sink]["buckets"]]
        figures[sink] = {
            "written": int(after[sink]["written"] - before[sink]["written"]),
            **{name: None if (v := _quantile(q, buckets)) is None else round(v * 1000)
               for name, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))},
        }
    return figures


class Pipeline:
    """Worker, MQTT connector(s) and API of the bench (each started on demand)."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        roles = all_roles(settings)
        taken = [settings.metrics_port_base + i for i in range(len(roles))
                 if _port_taken(settings.metrics_port_base + i)]
        if taken:
            raise RuntimeError(f"ports {taken} are in use: stop `make run` (or another worker) first")
        self.settings = settings
        self.run_id = run_id
        self.metrics = SinkMetrics(settings)
        self.worker: Proc | None = None
        self.connectors: list[Proc] = []
        self.api: Proc | None = None
        self.base_url = ""
        self._username = f"bench-{run_id}"
        self._password = ""

    # --- the worker ----------------------------------------------------------------------------
    def start_worker(self) -> None:
        """Start every role and wait until the sinks serve their metrics."""
        if self.worker is not None:
            return
        self.worker = Proc.start("worker", "worker", settings=self.settings, env=_QUIET)
        if not wait_for(self.metrics.answers, 120, interval=1):
            raise RuntimeError("the worker's sink metrics did not come up; see .stack/logs/bench-worker.log")

    def role_cpu(self) -> dict[str, float]:
        """CPU seconds so far of each worker role process, and of the supervisor."""
        assert self.worker is not None
        cpu: dict[str, float] = {}
        for role, pid in role_pids(self.worker.pid).items():
            try:
                cpu[role] = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        cpu["supervisor"] = cpu_seconds(self.worker.pid)
        return cpu

    def _signal_roles(self, signum: int) -> None:
        assert self.worker is not None
        for pid in role_pids(self.worker.pid).values():
            os.kill(pid, signum)

    def freeze(self) -> None:
        """Stop every role process where it stands (SIGSTOP): warm, joined, consuming nothing."""
        self._signal_roles(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_roles(signal.SIGCONT)

    # --- ingest ------------------------------------------------------------------------------------
    def start_ingest(self, connectors: int) -> None:
        """Start ``connectors`` MQTT connector processes (sharing the devices' messages through
        a shared subscription when more than one) and the API (once)."""
        if self.api is not None:
            return
        # A share group of the bench's own: a persistent session of another group (an earlier
        # `make run`, a test) must not be handed a share of the bench's messages.
        share = {"WEBSCADA_MQTT_SHARE_GROUP": f"bench-{self.run_id}"} if connectors > 1 else {}
        for i in range(connectors):
            self.connectors.append(Proc.start(
                f"connector-{i}", "connect", "mqtt", "--client-id", self._client_id(i),
                settings=self.settings, env={**_QUIET, **share}))
        port = _free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        # Rate limiting is per device and request; the bench's few devices send far more
        # than a real one would.
        self.api = Proc.start("api", "api", settings=self.settings, env={
            **_QUIET, "WEBSCADA_API_PORT": str(port), "WEBSCADA_INGEST_RATE_LIMIT": "100000000"})
        if not wait_for(lambda: _port_taken(port), 60):
            raise RuntimeError("the API did not start; see .stack/logs/bench-api.log")
        from api.passwords import Passwords

        self._password = secrets.token_urlsafe(12)
        with psycopg.connect(self.settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
                         (self._username, Passwords().hash(self._password)))

    def token(self) -> str:
        """A fresh access token of the bench's admin user (they live 15 minutes)."""
        response = httpx.post(f"{self.base_url}/api/auth/token", timeout=15,
                              json={"username": self._username, "password": self._password})
        response.raise_for_status()
        return str(response.json()["access_token"])

    def _client_id(self, i: int) -> str:
        return f"webscada-bench-{self.run_id}-{i}"

    # --- all of it -------------------------------------------------------------------------------
    def processes(self) -> dict[str, list[Proc]]:
        procs: dict[str, list[Proc]] = {}
        if self.worker is not None:
            procs["worker"] = [self.worker]
        if self.connectors:
            procs["connector_mqtt"] = self.connectors
        if self.api is not None:
            procs["api"] = [self.api]
        return procs

    def check_alive(self) -> None:
        for name, procs in self.processes().items():
            if not all(proc.alive() for proc in procs):
                raise RuntimeError(f"bench {name} exited; see .stack/logs/bench-*.log")

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the worker (all processes), the connectors and the API."""
        return {name: sum(proc.cpu_seconds() for proc in procs)
                for name, procs in self.processes().items()}

    def pss_mb(self) -> dict[str, float]:
        """Summed PSS (MiB) of each process tree now."""
        return {name: sum(proc.pss_mb() for proc in procs) for name, procs in self.processes().items()}

    def peak_rss_mb(self) -> dict[str, float]:
        return {name: sum(sum(proc.peak_rss_mb().values()) for proc in procs)
                for name, procs in self.processes().items()}

    def worker_processes(self) -> int:
        return len(tree_pids(self.worker.pid)) if self.worker is not None else 0

    def close(self) -> None:
        for proc in [*self.connectors, *([self.api] if self.api else []),
                     *([self.worker] if self.worker else [])]:
            proc.stop()
        with psycopg.connect(self.settings.pg_conninfo, autocommit=True) as conn:
            if self.api is not None:
                conn.execute("DELETE FROM users WHERE username = %s", (self._username,))
            # The bench's devices (thousands, all named bench-...) would otherwise crowd the
            # dashboard's device list and every later test that reads it.
            conn.execute("DELETE FROM devices WHERE id LIKE 'bench-%'")
        for i in range(len(self.connectors)):
            # A persistent session left behind would collect device messages for days.
            forget = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self._client_id(i),
                                 clean_session=True)
            login(forget, self.settings, "connector")
            forget.connect(self.settings.mqtt_host, self.settings.mqtt_port)
            forget.disconnect()
