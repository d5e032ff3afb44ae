"""The headline table: the figures of issue 10's Targets table, measured, beside their targets.

:func:`rows` reads them from a run's results (a figure whose section did not
run or failed is "—"); :func:`markdown` renders them as the table
``make bench`` prints and README.md shows.
"""

from __future__ import annotations

from typing import Any

__all__ = ["markdown", "rows"]


def _n(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _share(rate: float | None, raw: float | None) -> str:
    return f" ({rate / raw:.1%} of raw Kafka)" if rate and raw else ""


def rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """``{"figure", "measured", "target", "met"}`` per row (``met`` None: no target)."""
    ceiling = results.get("ceiling") or {}
    raw = (ceiling.get("single") or {}).get("records_per_s")
    batched = (ceiling.get("batched") or {}).get("readings_per_s")
    drain = results.get("drain") or {}
    e2e = results.get("e2e") or {}
    mqtt, http = e2e.get("mqtt") or {}, e2e.get("http") or {}
    mqtt_best, http_best = mqtt.get("best_rate"), http.get("best_rate")
    mqtt_cpu = (mqtt.get("at_best") or {}).get("cpu_us_per_reading") or {}
    http_cpu = (http.get("at_best") or {}).get("cpu_us_per_reading") or {}
    half = mqtt.get("at_half") or {}
    redis_p99 = ((half.get("sinks") or {}).get("redis") or {}).get("p99_ms")
    browser_p99 = (half.get("browser") or {}).get("p99_ms")
    pss = (e2e.get("peak_pss_mb") or {}).get("worker")
    drain_rate = drain.get("readings_per_s")

    def complete(section: dict[str, Any]) -> bool:
        return bool((section.get("stores") or {}).get("complete"))

    workers = [drain.get("worker_cpu_us_per_reading"), mqtt_cpu.get("worker"), http_cpu.get("worker")]
    out: list[dict[str, Any]] = [
        {"figure": "MQTT readings/s into all three stores, none lost, alarms on",
         "measured": _n(mqtt_best) + _share(mqtt_best, raw), "target": "≥ 5,000 (≥ 5 % of raw Kafka)",
         "met": bool(mqtt_best and raw and mqtt_best >= 5000 and mqtt_best / raw >= 0.05
                     and complete(mqtt))},
        {"figure": "HTTP (arrays of 100) readings/s into all three stores",
         "measured": _n(http_best) + _share(http_best, raw), "target": "≥ 10,000",
         "met": bool(http_best and http_best >= 10_000 and complete(http))},
        {"figure": "pipeline alone, telemetry.raw → all stores + alarms",
         "measured": _n(drain_rate) + _share(drain_rate, raw), "target": "≥ 20,000",
         "met": bool(drain_rate and drain_rate >= 20_000 and complete(drain))},
        {"figure": "worker CPU-µs per reading (alone / MQTT / HTTP, at the best rates)",
         "measured": " / ".join(_n(v) for v in workers), "target": "≤ 100",
         "met": all(v is not None and v <= 100 for v in workers)},
        {"figure": "MQTT connector CPU-µs per message (at the best MQTT rate)",
         "measured": _n(mqtt_cpu.get("connector_mqtt")), "target": "≤ 120",
         "met": mqtt_cpu.get("connector_mqtt") is not None and mqtt_cpu["connector_mqtt"] <= 120},
        {"figure": f"device → Redis p99 at half the best MQTT rate ({_n(half.get('rate'))}/s)",
         "measured": f"{_n(redis_p99)} ms", "target": "—", "met": None},
        {"figure": f"device → browser p99 at half the best MQTT rate ({_n(half.get('rate'))}/s)",
         "measured": f"{_n(browser_p99)} ms", "target": "≤ 250 ms",
         "met": browser_p99 is not None and browser_p99 <= 250},
        {"figure": f"worker PSS (peak, {e2e.get('worker_processes', '—')} processes)",
         "measured": f"{_n(pss)} MiB", "target": "≤ 300 MiB", "met": pss is not None and pss <= 300},
        {"figure": "raw Kafka produce + consume, one reading per record (same run)",
         "measured": f"{_n(raw)}/s (as batches: {_n(batched)} readings/s)", "target": "—", "met": None},
        {"figure": "load generator CPU-µs per reading (MQTT / HTTP, at the best rates)",
         "measured": f"{_n(mqtt_cpu.get('load generator'))} / {_n(http_cpu.get('load generator'))}",
         "target": "—", "met": None},
    ]
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = ["| figure | measured | target | met |", "|---|---|---|---|"]
    for row in table:
        met = "—" if row["met"] is None else ("yes" if row["met"] else "no")
        lines.append(f"| {row['figure']} | {row['measured']} | {row['target']} | {met} |")
    return "\n".join(lines)
