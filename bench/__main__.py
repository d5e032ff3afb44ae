"""``make bench``: every benchmark in one run, against the local stack (started if down).

Sections, in order: the reference workload (before), the machine's Kafka
ceiling (raw confluent-kafka and Kafka's own producer performance tool), the
sink batching matrix, the stage ladder, the open-loop end-to-end runs over MQTT
and HTTP, and the reference workload again (after). Prints each figure as it
comes and a summary with the ratios and the issue's targets, and writes all of
it to ``bench/results/bench-<time>.json`` (and ``latest.json``).

    .venv/bin/python -m bench [--quick] [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bench import ceiling, e2e, ladder, reference, sinks
from bench.common import RESULTS
from infra import stack
from pipeline.settings import ROOT, Settings

SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {
    "ceiling": ceiling.run,
    "sinks": sinks.run,
    "ladder": ladder.run,
    "e2e": e2e.run,
}

def _machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as info:
            model = next((line.split(":", 1)[1].strip() for line in info
                          if line.startswith("model name")), "")
    except OSError:
        pass
    memory_kb = 0
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"host": platform.node(), "cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(memory_kb / 2**20, 1), "python": platform.python_version(),
            "kernel": platform.release(), "commit": commit,
            "note": "every service (Kafka, PostgreSQL, Redis, InfluxDB, Mosquitto), the pipeline "
                    "and the simulated devices share this machine"}


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Ratios, normalised figures and the targets, from the sections that ran."""
    summary: dict[str, Any] = {}
    before, after = results.get("reference_before"), results.get("reference_after")
    if before and after:
        summary["reference_drift"] = round(after["records_per_cpu_second"]
                                           / before["records_per_cpu_second"] - 1, 3)
        reference_rate = (before["records_per_cpu_second"] + after["records_per_cpu_second"]) / 2
    else:
        reference_rate = None
    run = results.get("e2e")
    if run:
        best = max(run["mqtt"]["best_rate_p99_under_1s"], run["http"]["best_rate_p99_under_1s"])
        summary["best_rate"] = {"mqtt": run["mqtt"]["best_rate_p99_under_1s"],
                                "http": run["http"]["best_rate_p99_under_1s"]}
        summary["browser_p99_ms_at_half_rate"] = {
            "mqtt": run["mqtt"]["browser_p99_ms_at_half_rate"],
            "http": run["http"]["browser_p99_ms_at_half_rate"]}
        summary["worker_rss_mb"] = run["peak_rss_mb"]["worker"]
        summary["worker_pss_mb"] = run["peak_pss_mb"].get("worker")
        if reference_rate:
            # readings/s per 1,000 reference encodes per CPU-second: comparable across machines
            summary["best_rate_per_reference_k"] = round(best / (reference_rate / 1000), 2)
        raw = (results.get("ceiling") or {}).get("raw") or {}
        perf = (results.get("ceiling") or {}).get("perf_tool") or {}
        if raw.get("produce_consume_rate"):
            summary["share_of_raw_produce_consume"] = round(best / raw["produce_consume_rate"], 4)
        if perf.get("records_per_second"):
            summary["share_of_perf_tool"] = round(best / perf["records_per_second"], 4)
        browser_half = [v for v in summary["browser_p99_ms_at_half_rate"].values() if v is not None]
        summary["targets"] = {
            "readings_per_s_all_sinks_alarms_on": {"target": 5000, "measured": best,
                                                   "met": best >= 5000},
            "browser_p99_ms_at_half_rate": {"target": 500, "measured": min(browser_half, default=None),
                                            "met": bool(browser_half) and min(browser_half) < 500},
            "share_of_raw_ceiling": {"target": 0.25,
                                     "measured": summary.get("share_of_raw_produce_consume"),
                                     "met": (summary.get("share_of_raw_produce_consume") or 0) >= 0.25},
            # The worker is one process per role: summed RSS counts the pages they share
            # (interpreter, libraries) once per process; PSS counts each page once.
            "worker_memory_mb_pss": {"target": 500, "measured": summary["worker_pss_mb"],
                                     "met": (summary["worker_pss_mb"] or 1e9) < 500},
            "worker_memory_mb_summed_rss": {"target": 500, "measured": summary["worker_rss_mb"],
                                            "met": summary["worker_rss_mb"] < 500},
        }
    return summary


def _print_summary(results: dict[str, Any], summary: dict[str, Any]) -> None:
    print("\nsummary", flush=True)
    if "reference_drift" in summary:
        print(f"  reference workload drift over the run: {summary['reference_drift']:+.1%} "
              "(figures of a run with a large drift are not comparable)")
    if "best_rate" in summary:
        rates = summary["best_rate"]
        print(f"  highest rate with every reading in Redis, InfluxDB and PostgreSQL, alarm engine "
              f"on, p99 < 1 s: MQTT {rates['mqtt']:.0f}/s, HTTP {rates['http']:.0f}/s")
        raw = results.get("ceiling", {}).get("raw", {})
        perf = results.get("ceiling", {}).get("perf_tool", {})
        if "share_of_raw_produce_consume" in summary:
            print(f"  = {summary['share_of_raw_produce_consume']:.2%} of raw confluent-kafka "
                  f"produce+consume ({raw.get('produce_consume_rate'):,}/s)")
        if "share_of_perf_tool" in summary:
            print(f"  = {summary['share_of_perf_tool']:.2%} of kafka-producer-perf-test "
                  f"({perf.get('records_per_second'):,.0f}/s)")
        if "best_rate_per_reference_k" in summary:
            print(f"  normalised: {summary['best_rate_per_reference_k']} readings/s per 1,000 "
                  "reference encodes per CPU-second")
        for name, target in summary["targets"].items():
            print(f"  target {name}: {target['target']} -> measured {target['measured']}"
                  f" {'MET' if target['met'] else 'NOT MET'}")
    print(flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    settings = Settings()
    if stack.up(settings) != 0:
        print("the local stack did not come up; see .stack/logs/", file=sys.stderr)
        return 1
    started = time.monotonic()
    results: dict[str, Any] = {"machine": _machine(), "quick": args.quick,
                               "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                               "command": "python -m bench " + " ".join(argv or sys.argv[1:])}
    print(f"bench on {results['machine']['cpus']} x {results['machine']['cpu_model']}, "
          f"{results['machine']['memory_gib']} GiB, commit {results['machine']['commit']}\n", flush=True)
    failed: list[str] = []
    results["reference_before"] = reference.run(settings, quick=args.quick)
    for name, section in SECTIONS.items():
        if args.only and name not in args.only:
            continue
        print(f"\n== {name}", flush=True)
        section_started = time.monotonic()
        try:
            results[name] = section(settings, quick=args.quick)
        except Exception as exc:  # one broken section must not hide the others' figures
            failed.append(name)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        results.setdefault("section_seconds", {})[name] = round(time.monotonic() - section_started, 1)
    print(flush=True)
    results["reference_after"] = reference.run(settings, quick=args.quick)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["summary"] = summarise({k: v for k, v in results.items()
                                    if not (isinstance(v, dict) and "error" in v)})
    _print_summary(results, results["summary"])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    text = json.dumps(results, indent=2, default=str)
    out.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    print(f"{results['seconds']:.0f} s in all; figures in {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
