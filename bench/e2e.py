"""End to end, open loop: devices → MQTT connector or HTTP ingest → worker → stores and browser.

The worker (every role, the alarm engine with the bench's rule), the MQTT
connector(s) and the API run as ``make run`` starts them (:mod:`bench.pipeline`);
the devices are the cheap load generator of :mod:`bench.load` (20 MQTT devices,
one ``mosquitto_pub`` each, QoS 1; 20 HTTP devices posting arrays of 100).

A rate *holds* when every reading of its step is in all three stores (each
sink's ``webscada_sink_records_total``) within 5 s of the step's end, the p99
device → store of every sink is under 1 s, and no request was refused. Rates
double from a start until one does not hold, then the midpoint is tried; if
even the start does not hold, it is halved until one does. At half the best
MQTT rate one more step runs with a browser (a Socket.IO client in the rooms
of the MQTT devices): p99 device → Redis and device → browser. At the end the
stores are checked for every reading sent (:mod:`bench.stores`): none lost.

Each step prints the CPU-µs per reading of every process: the worker (by role),
the connector(s), the API, each service, the load generator, the browser.

    .venv/bin/python -m bench.e2e [--quick] [--transport mqtt|http] [--rates 2000 4000]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from typing import Any

from bench.browser import Browser
from bench.common import BenchRule, percentiles, services_cpu, wait_drained, wait_for
from bench.load import HttpLoad, MqttLoad
from bench.pipeline import SINKS, WORKER_GROUPS, Pipeline, sink_delays
from bench.stores import check
from pipeline.settings import Settings

__all__ = ["run"]

DRAIN_S = 5.0
DEVICES = 20
START = {"mqtt": 2000.0, "http": 4000.0}
PREFIX = {"mqtt": "bench-mqtt-", "http": "bench-http-"}


class _Transport:
    """One transport's generator and what it sent over the run (for the final store check)."""

    def __init__(self, name: str, load: MqttLoad | HttpLoad) -> None:
        self.name = name
        self.load = load
        self.sent = 0
        self.last_ts: dict[str, int] = {}
        self.first_us = 0
        self.last_us = 0

    def send(self, rate: float, seconds: float) -> dict[str, Any]:
        plan = self.load.prepare(rate, seconds)
        figures = self.load.send(plan)
        self.sent += figures["sent"]
        self.last_ts.update(plan.last_ts)
        self.first_us = self.first_us or round(plan.start * 1e6)
        self.last_us = max(self.last_us, *plan.last_ts.values())
        return {**figures, "prepare_cpu_us_per_reading": round(plan.prepare_cpu_s / plan.readings * 1e6, 1),
                "started_at": plan.start}

    def check(self, settings: Settings) -> dict[str, Any]:
        return check(settings, PREFIX[self.name], self.last_ts, readings=self.sent,
                     start_us=self.first_us - 1_000_000, stop_us=self.last_us + 1_000_000)


class _Run:
    def __init__(self, pipeline: Pipeline, seconds: float) -> None:
        self.pipeline = pipeline
        self.seconds = seconds
        self.peak_pss: dict[str, float] = {}

    def cpu(self, transport: _Transport, browser: Browser | None) -> dict[str, float]:
        return {**self.pipeline.cpu(), **services_cpu(),
                "load generator": transport.load.cpu_seconds(),
                **({"browser": browser.cpu_seconds()} if browser else {})}

    def step(self, transport: _Transport, rate: float, browser: Browser | None = None) -> dict[str, Any]:
        pipeline = self.pipeline
        before = pipeline.metrics.scrape()
        cpu_before = self.cpu(transport, browser)
        roles_before = pipeline.role_cpu()
        sent = transport.send(rate, self.seconds)
        started = sent.pop("started_at")
        target = sent["sent"]

        def all_written() -> bool:
            now = pipeline.metrics.written()
            return all(now[s] - before[s]["written"] >= target for s in SINKS)

        sustained = wait_for(all_written, DRAIN_S, interval=0.25)
        if not sustained:
            wait_for(all_written, 90, interval=0.5)  # work the backlog off before the next step
        settled = time.time()
        for name, pss in pipeline.pss_mb().items():
            self.peak_pss[name] = max(self.peak_pss.get(name, 0.0), pss)
        cpu_after = self.cpu(transport, browser)
        cpu_us = {k: round((cpu_after[k] - cpu_before.get(k, 0.0)) / max(1, target) * 1e6)
                  for k in cpu_after}
        roles_after = pipeline.role_cpu()
        roles_us = {k: round((v - roles_before.get(k, 0.0)) / max(1, target) * 1e6)
                    for k, v in roles_after.items()}
        sinks = sink_delays(pipeline.metrics.scrape(), before)
        browser_ms = [round(v * 1000) for v in browser.between(started, settled)] if browser else []
        p99s = [s["p99_ms"] for s in sinks.values() if s["p99_ms"] is not None]
        figures: dict[str, Any] = {
            "transport": transport.name, "rate": rate, "seconds": self.seconds, **sent,
            "sustained": sustained, "sinks": sinks, "p99_all_sinks_ms": max(p99s, default=None),
            "browser": ({"events": len(browser_ms),
                         **{f"{k}_ms": v for k, v in percentiles(browser_ms).items()}}
                        if browser else None),
            "cpu_us_per_reading": cpu_us,
            "worker_cpu_us_per_reading_by_role": roles_us,
            "cores_busy": round((sum(cpu_after.values()) - sum(cpu_before.values()))
                                / (settled - started), 2),
        }
        figures["ok"] = bool(sustained and p99s and max(p99s) < 1000 and not sent.get("refused"))
        lat = " ".join(f"{s} {f['p50_ms']}/{f['p95_ms']}/{f['p99_ms']}" for s, f in sinks.items())
        seen = (f"  browser {figures['browser'].get('p50_ms')}/{figures['browser'].get('p95_ms')}/"
                f"{figures['browser'].get('p99_ms')} ({len(browser_ms)} events)" if browser else "")
        refused = f", {sent['refused']} REFUSED" if sent.get("refused") else ""
        print(f"  {transport.name:4s} {rate:7.0f}/s  sent {target:7,d}{refused}  "
              f"{'held   ' if figures['ok'] else 'NOT HELD'}  p50/p95/p99 ms: {lat}{seen}", flush=True)
        print("         CPU-µs per reading: " + ", ".join(f"{k} {v}" for k, v in cpu_us.items())
              + f"; {figures['cores_busy']:.2f} cores busy", flush=True)
        print("         worker by role: " + ", ".join(f"{k} {v}" for k, v in roles_us.items()), flush=True)
        return figures

    def search(self, transport: _Transport, start: float, cap: float) -> dict[str, Any]:
        """Double the rate while it holds; halve it while even the first does not; then try
        the midpoint between the best that held and the first that did not."""
        steps: list[dict[str, Any]] = []

        def holds(rate: float) -> bool:
            steps.append(self.step(transport, rate))
            return bool(steps[-1]["ok"])

        best, worst, rate = 0.0, 0.0, start
        while rate <= cap:
            if not holds(rate):
                worst = rate
                break
            best = rate
            rate *= 2
        while not best and rate >= 200:
            rate = round(rate / 2)
            if holds(rate):
                best = rate
        if best and worst and holds(round((best + worst) / 2)):
            best = round((best + worst) / 2)
        at_best = next(s for s in steps if s["rate"] == best) if best else None
        return {"steps": steps, "best_rate": best, "at_best": at_best}


def _warm_up(run: _Run, transports: dict[str, _Transport]) -> None:
    """Every role joined, every connection made, any old backlog worked off."""
    pipeline = run.pipeline
    base = pipeline.metrics.written()
    sent = sum(transport.send(500, 2)["sent"] for transport in transports.values())
    if not wait_for(lambda: all(v - base[s] >= sent for s, v in pipeline.metrics.written().items()),
                    120, interval=0.5):
        raise RuntimeError("the warm-up readings did not reach every sink")
    if not wait_drained(pipeline.settings, WORKER_GROUPS, timeout=300):
        raise RuntimeError("the worker did not work off the backlog of its topics within 300 s")


def run(settings: Settings, *, quick: bool = False, pipeline: Pipeline | None = None,
        transports: tuple[str, ...] = ("mqtt", "http"), rates: list[float] | None = None,
        connectors: int | None = None) -> dict[str, Any]:
    """The rate search over each transport (or just ``rates``), then MQTT at half its best
    rate with the browser; figures of every step. ``connectors``: MQTT connector processes
    (default: as many as ``make run`` starts, ``mqtt_connectors``)."""
    connectors = connectors or settings.mqtt_connectors
    own = pipeline is None
    pipeline = pipeline or Pipeline(settings, uuid.uuid4().hex[:6])
    run_ = _Run(pipeline, 6.0 if quick else 10.0)
    rule = BenchRule(settings)
    loads: dict[str, _Transport] = {}
    result: dict[str, Any] = {"step_seconds": run_.seconds, "drain_seconds": DRAIN_S,
                              "connectors": connectors, "devices": DEVICES}
    try:
        pipeline.start_worker()
        pipeline.start_ingest(connectors)
        if "mqtt" in transports:
            loads["mqtt"] = _Transport("mqtt", MqttLoad(
                settings, [f"{PREFIX['mqtt']}{n:02d}" for n in range(DEVICES)]))
        if "http" in transports:
            loads["http"] = _Transport("http", HttpLoad(
                pipeline.base_url, pipeline.token(), [f"{PREFIX['http']}{n:02d}" for n in range(DEVICES)],
                "bench"))
        pipeline.check_alive()
        _warm_up(run_, loads)
        alarms_before = rule.alarms()
        print(f"end to end (open loop, {run_.seconds:.0f} s per rate; device → store p50/p95/p99 ms):",
              flush=True)
        for name, transport in loads.items():
            if rates:
                result[name] = {"steps": [run_.step(transport, rate) for rate in rates]}
                continue
            result[name] = run_.search(transport, START[name] / (2 if quick else 1),
                                       16_000 if quick else 64_000)
        if "mqtt" in loads and result["mqtt"].get("best_rate"):
            half = round(result["mqtt"]["best_rate"] / 2)
            browser = Browser(pipeline.base_url, pipeline.token(),
                              loads["mqtt"].load.devices)
            try:
                result["mqtt"]["at_half"] = run_.step(loads["mqtt"], half, browser=browser)
            finally:
                browser.close()
        pipeline.check_alive()
        for name, transport in loads.items():
            result[name]["stores"] = stores = transport.check(settings)
            print(f"  {name}: {stores['readings']:,} readings sent in all, InfluxDB holds "
                  f"{stores['influxdb_points']:,}; Redis {stores['redis_devices_complete']} and "
                  f"PostgreSQL {stores['postgres_devices_complete']} of {stores['devices']} devices "
                  f"up to date: {'none lost' if stores['complete'] else 'INCOMPLETE'}", flush=True)
        result["alarms_raised"] = rule.alarms() - alarms_before
        result["peak_pss_mb"] = {k: round(v, 1) for k, v in run_.peak_pss.items()}
        result["peak_rss_mb"] = {k: round(v, 1) for k, v in pipeline.peak_rss_mb().items()}
        result["worker_processes"] = pipeline.worker_processes()
    finally:
        for transport in loads.values():
            if isinstance(transport.load, MqttLoad):
                transport.load.close()
        rule.retire()
        if own:
            pipeline.close()
    for name in loads:
        part = result[name]
        if "best_rate" in part:
            print(f"  {name}: highest rate that holds: {part['best_rate']:,.0f} readings/s", flush=True)
    half = result.get("mqtt", {}).get("at_half")
    if half:
        print(f"  at half the best MQTT rate ({half['rate']:,.0f}/s): p99 device → Redis "
              f"{half['sinks']['redis']['p99_ms']} ms, device → browser {half['browser'].get('p99_ms')} ms",
              flush=True)
    pss = result["peak_pss_mb"]
    print("  peak PSS MiB: " + ", ".join(f"{k} {v}" for k, v in pss.items())
          + f" ({result['worker_processes']} worker processes); {result['alarms_raised']} alarms raised",
          flush=True)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="End-to-end open-loop benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rates", type=float, nargs="+", help="run just these rates (readings/s)")
    parser.add_argument("--transport", choices=("mqtt", "http"), action="append",
                        help="only this transport (repeatable)")
    parser.add_argument("--connectors", type=int,
                        help="MQTT connector processes (default: WEBSCADA_MQTT_CONNECTORS, as make run)")
    args = parser.parse_args()
    print(json.dumps(run(Settings(), quick=args.quick, rates=args.rates,
                         transports=tuple(args.transport or ("mqtt", "http")),
                         connectors=args.connectors), indent=2, default=str))
