"""End to end, open loop: devices → connector or HTTP ingest → worker → stores and browser.

Starts its own worker (every role, the alarm engine with a rule that raises and
clears), MQTT connector and API against the running local stack, then drives
simulated devices at fixed rates. Send times are scheduled in advance and each
reading carries its scheduled time as its device timestamp, so a pipeline (or
a sender) that falls behind shows up as latency instead of a lower send rate.

- MQTT: one publisher for all devices, QoS 1, ``devices/{id}/telemetry``.
- HTTP: registered devices POST batches (one request per device every 200 ms
  with the readings scheduled in it) to ``/api/devices/{id}/telemetry``.

Latency from device time to Redis, InfluxDB and PostgreSQL comes from each
sink's ``webscada_sink_delay_seconds`` histogram (device time → write confirmed,
per reading; quantiles interpolated inside buckets, as Prometheus does); to the
browser from a Socket.IO client in the devices' rooms (per event, exact). The devices
and the browser are in :mod:`bench.clients`.
A rate is *sustained* when every reading sent in the step is in all three
stores within 5 s of the step's end. Rates double from a start until one is not
sustained or its p99 passes 1 s, then the midpoint is tried, then half the best.

    .venv/bin/python -m bench.e2e [--quick]
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.clients import Browser, HttpDevices, MqttDevices
from bench.common import (
    BenchRule,
    Proc,
    cpu_seconds,
    percentiles,
    services_cpu,
    tree_pids,
    wait_drained,
    wait_for,
)
from pipeline.app import all_roles
from pipeline.settings import Settings

__all__ = ["run"]

SINKS = ("redis", "influxdb", "postgres")
DRAIN_S = 5.0
# highest summed PSS seen per process tree (sampled as each step settles)
PEAK_PSS: dict[str, float] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


# --- sink histograms ---------------------------------------------------------------------------
class SinkMetrics:
    """Scrapes the delay histogram and record counter of each sink role's /metrics."""

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


def _delta(after: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, Any]:
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


# --- the run -------------------------------------------------------------------------------------
class Pipeline:
    """Worker, MQTT connector and API of the bench, with an admin's token."""

    def __init__(self, settings: Settings, run_id: str) -> None:
        roles = all_roles(settings)
        taken = [settings.metrics_port_base + i for i in range(len(roles))
                 if _port_taken(settings.metrics_port_base + i)]
        if taken:
            raise RuntimeError(f"ports {taken} are in use: stop `make run` (or another worker) first")
        self.settings = settings
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.client_id = f"webscada-bench-{run_id}"
        quiet = {"WEBSCADA_LOG_LEVEL": "warning"}
        self.worker = Proc.start("worker", "worker", settings=settings, env=quiet)
        self.connector = Proc.start("connector", "connect", "mqtt", settings=settings,
                                    env={**quiet, "WEBSCADA_MQTT_CLIENT_ID": self.client_id})
        self.api = Proc.start("api", "api", settings=settings, env={
            **quiet, "WEBSCADA_API_PORT": str(self.port), "WEBSCADA_INGEST_RATE_LIMIT": "1000000",
            "WEBSCADA_INGEST_MAX_READINGS": "1000"})
        self.username = f"bench-{run_id}"
        self.token = ""

    def login(self) -> None:
        from api.passwords import Passwords

        if not wait_for(lambda: _port_taken(self.port), 60):
            raise RuntimeError("the API did not start; see .stack/logs/bench-api.log")
        password = secrets.token_urlsafe(12)
        with psycopg.connect(self.settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("INSERT INTO users (username, password_hash, role) VALUES (%s, %s, 'admin')",
                         (self.username, Passwords().hash(password)))
        response = httpx.post(f"{self.base_url}/api/auth/token", timeout=15,
                              json={"username": self.username, "password": password})
        response.raise_for_status()
        self.token = str(response.json()["access_token"])

    def processes(self) -> dict[str, Proc]:
        return {"worker": self.worker, "connector_mqtt": self.connector, "api": self.api}

    def close(self) -> None:
        for proc in (self.connector, self.api, self.worker):
            proc.stop()
        with psycopg.connect(self.settings.pg_conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM users WHERE username = %s", (self.username,))
        forget = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             clean_session=True)
        forget.connect(self.settings.mqtt_host, self.settings.mqtt_port)
        forget.disconnect()


def _worker_roles(worker: Proc) -> dict[str, float]:
    """CPU seconds so far of each role process of the worker, by role."""
    roles: dict[str, float] = {}
    for pid in tree_pids(worker.pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as raw:
                argv = raw.read().decode(errors="replace").split("\0")
            if "--role" in argv:
                roles[f"  {argv[argv.index('--role') + 1]}"] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return roles


def _cpu(procs: dict[str, Proc]) -> dict[str, float]:
    """CPU seconds so far of the bench's processes, the services and this process (the devices
    and the browser)."""
    return {**{name: proc.cpu_seconds() for name, proc in procs.items()}, **services_cpu(),
            "bench devices + browser": time.process_time()}


def _step(name: str, rate: float, seconds: float, send: Callable[[float, float], dict[str, Any]],
          metrics: SinkMetrics, browser: Browser, procs: dict[str, Proc]) -> dict[str, Any]:
    before = metrics.scrape()
    cpu_before = _cpu(procs)
    roles_before = _worker_roles(procs["worker"])
    started = time.time()
    sent = send(rate, seconds)
    ended = time.time()
    target = sent["sent"]

    def all_written() -> bool:
        now = metrics.scrape()
        return all(now[s]["written"] - before[s]["written"] >= target for s in SINKS)

    sustained = wait_for(all_written, DRAIN_S, interval=0.25)
    if not sustained:
        wait_for(all_written, 60, interval=0.5)  # let the backlog drain before the next step
    settled = time.time()
    for proc_name, proc in procs.items():
        PEAK_PSS[proc_name] = max(PEAK_PSS.get(proc_name, 0.0), proc.pss_mb())
    cpu_after = _cpu(procs)
    cpu_us = {k: round((cpu_after[k] - cpu_before.get(k, 0.0)) / max(1, target) * 1e6)
              for k in cpu_after}
    roles_after = _worker_roles(procs["worker"])
    roles_us = {k.strip(): round((v - roles_before.get(k, 0.0)) / max(1, target) * 1e6)
                for k, v in roles_after.items()}
    sinks = _delta(metrics.scrape(), before)
    browser_lat = [round(v * 1000) for v in browser.between(started, settled)]
    figures = {
        "transport": name, "rate": rate, "seconds": round(ended - started, 1), **sent,
        "sustained": sustained, "sinks": sinks,
        "browser": {"events": len(browser_lat),
                    **{f"{k}_ms": v for k, v in percentiles(browser_lat).items()}},
        "cpu_us_per_reading": cpu_us,
        "cpu_us_per_reading_total": sum(cpu_us.values()),
        "worker_cpu_us_per_reading_by_role": roles_us,
        "cpu_busy": round((sum(cpu_after.values()) - sum(cpu_before.values())) / (settled - started), 2),
    }
    p99s = [s["p99_ms"] for s in sinks.values() if s["p99_ms"] is not None]
    figures["p99_all_sinks_ms"] = max(p99s) if p99s else None
    figures["ok"] = bool(sustained and p99s and max(p99s) < 1000)
    lat = " ".join(f"{s} {f['p50_ms']}/{f['p95_ms']}/{f['p99_ms']}" for s, f in sinks.items())
    b = figures["browser"]
    print(f"  {name:4s} {rate:7.0f}/s  sent {target:6d}  {'sustained' if sustained else 'BEHIND   '}"
          f"  p50/p95/p99 ms: {lat}  browser {b.get('p50_ms')}/{b.get('p95_ms')}/{b.get('p99_ms')}"
          f" ({b['events']} events)", flush=True)
    print("         CPU-µs per reading: " + ", ".join(f"{k} {v}" for k, v in cpu_us.items())
          + f"; total {figures['cpu_us_per_reading_total']}, {figures['cpu_busy']:.2f} cores busy",
          flush=True)
    print("         worker by role: " + ", ".join(f"{k} {v}" for k, v in roles_us.items()), flush=True)
    return figures


def _ladder_of_rates(name: str, start: float, cap: float, seconds: float,
                     send: Callable[[float, float], dict[str, Any]], metrics: SinkMetrics,
                     browser: Browser, procs: dict[str, Proc]) -> dict[str, Any]:
    """Double the rate while it holds; halve it while even the first does not; then try the
    midpoint between the best that held and the first that did not, and half the best."""
    steps: list[dict[str, Any]] = []

    def step(rate: float) -> bool:
        steps.append(_step(name, rate, seconds, send, metrics, browser, procs))
        return bool(steps[-1]["ok"])

    best, worst, rate = 0.0, 0.0, start
    while rate <= cap:
        if not step(rate):
            worst = rate
            break
        best = rate
        rate *= 2
    while not best and rate >= 100:
        rate = round(rate / 2)
        if step(rate):
            best = rate
    if best and worst and step(round((best + worst) / 2)):
        best = round((best + worst) / 2)
    half = round(best / 2)
    at_half = next((s for s in steps if s["rate"] == half), None)
    if half and at_half is None:
        step(half)
        at_half = steps[-1]
    return {"steps": steps, "best_rate_p99_under_1s": best,
            "half_rate": half, "browser_p99_ms_at_half_rate": at_half and at_half["browser"].get("p99_ms"),
            "sinks_p99_ms_at_half_rate": at_half and at_half["p99_all_sinks_ms"],
            "cpu_us_per_reading_at_best": next(
                (s["cpu_us_per_reading"] for s in steps if s["rate"] == best), None)}


def run(settings: Settings, *, quick: bool = False, rates: list[float] | None = None,
        transports: tuple[str, ...] = ("mqtt", "http")) -> dict[str, Any]:
    """The rate search over both transports, or with ``rates`` just those fixed rates."""
    run_id = uuid.uuid4().hex[:6]
    application_id = f"bench-{run_id}"
    seconds = 6.0 if quick else 12.0
    pipeline = Pipeline(settings, run_id)
    rule = BenchRule(settings, None, metric="bench_level")
    browser: Browser | None = None
    mqtt_devices: MqttDevices | None = None
    result: dict[str, Any] = {"step_seconds": seconds, "drain_seconds": DRAIN_S}
    try:
        pipeline.login()
        metrics = SinkMetrics(settings)
        if not wait_for(lambda: _safe(metrics.scrape), 90, interval=1):
            raise RuntimeError("the worker's sink metrics did not come up; see .stack/logs/bench-worker.log")
        mqtt_devices = MqttDevices(settings, f"bench-{run_id}", 50)
        http_devices = HttpDevices(pipeline.base_url, pipeline.token, f"bench-{run_id}", 10,
                                   application_id)
        browser = Browser(pipeline.base_url, pipeline.token,
                          mqtt_devices.devices + [d for d, _ in http_devices.devices])
        for proc in pipeline.processes().values():
            if not proc.alive():
                raise RuntimeError(f"bench {proc.name} exited; see .stack/logs/bench-{proc.name}.log")
        # Warm-up: every role joined and every connection made before anything is timed.
        mqtt_devices.send(100, 3)
        if not wait_for(lambda: all(v["written"] >= 300 for v in metrics.scrape().values()), 120):
            raise RuntimeError("the warm-up readings did not reach every sink")
        # Whatever was waiting in the topics (an earlier run's readings) is worked off first.
        groups = [f"webscada-{role}" for role in ("validate", "sink-redis", "sink-influxdb",
                                                  "sink-postgres", "alarms")]
        if not wait_drained(settings, groups, timeout=300):
            raise RuntimeError("the worker did not work off the backlog in its topics within 300 s")
        print(f"end to end (open loop, {seconds:.0f} s per rate; sink latency p50/p95/p99 in ms):",
              flush=True)
        cap = 4000 if quick else 16000
        senders = {"mqtt": mqtt_devices.send, "http": http_devices.send}
        for name in transports:
            if rates:
                result[name] = {"steps": [_step(name, rate, seconds, senders[name], metrics, browser,
                                                pipeline.processes()) for rate in rates]}
            else:
                result[name] = _ladder_of_rates(name, 250, cap, seconds, senders[name], metrics,
                                                browser, pipeline.processes())
        result["alarms_raised"] = rule.alarms()
        result["peak_rss_mb"] = {name: round(sum(proc.peak_rss_mb().values()), 1)
                                 for name, proc in pipeline.processes().items()}
        result["peak_rss_mb_worker_roles"] = sorted(
            round(v, 1) for v in pipeline.worker.peak_rss_mb().values())
        result["peak_pss_mb"] = {name: round(v, 1) for name, v in PEAK_PSS.items()}
    finally:
        if browser is not None:
            browser.close()
        if mqtt_devices is not None:
            mqtt_devices.close()
        rule.retire()
        pipeline.close()
    for name in transports:
        part = result[name]
        if rates:
            continue
        print(f"  {name}: highest rate with every reading in all sinks and p99 < 1 s: "
              f"{part['best_rate_p99_under_1s']:.0f} readings/s; at half that "
              f"({part['half_rate']}/s) p99 to the browser {part['browser_p99_ms_at_half_rate']} ms, "
              f"to the slowest sink {part['sinks_p99_ms_at_half_rate']} ms", flush=True)
    rss, pss = result["peak_rss_mb"], result["peak_pss_mb"]
    print(f"  peak RSS MiB (sum over processes): worker {rss['worker']} (supervisor and roles "
          f"{result['peak_rss_mb_worker_roles']}), MQTT connector {rss['connector_mqtt']}, API "
          f"{rss['api']}; PSS (shared pages counted once): worker {pss.get('worker')}, MQTT "
          f"connector {pss.get('connector_mqtt')}, API {pss.get('api')};"
          f" {result['alarms_raised']} alarms raised", flush=True)
    return result


def _safe(call: Callable[[], object]) -> object:
    try:
        return call()
    except (httpx.HTTPError, OSError):
        return None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="End-to-end open-loop benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rates", type=float, nargs="+", help="run just these rates (readings/s)")
    parser.add_argument("--transport", choices=("mqtt", "http"), action="append",
                        help="only this transport (repeatable)")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick, rates=args.rates,
                         transports=tuple(args.transport or ("mqtt", "http"))), indent=2))
