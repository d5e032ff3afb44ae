"""``make bench``: the pipeline measured against the local stack (started if down).

Sections, in order: the reference workload (before); the raw Kafka rate of
this machine (``ceiling``); the pipeline alone, telemetry.raw pre-filled and
drained into all three stores (``drain``); end to end over MQTT and HTTP with
the cheap load generator (``mqtt``, ``http``); the reference workload again
(after). Every figure is printed as it comes; then the headline table (issue
10's targets, measured); everything goes to ``bench/results/bench-<time>.json``
(and ``latest.json``). What each section measures and how: docs/performance.md.

    .venv/bin/python -m bench [--quick] [--only ceiling drain mqtt http] [--connectors N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from bench import ceiling, drain, e2e, headline, reference
from bench.common import RESULTS
from bench.pipeline import Pipeline
from infra import stack
from pipeline.settings import ROOT, Settings

SECTIONS = ("ceiling", "drain", "mqtt", "http")


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
                    "and the load generator share this machine"}


def _section(results: dict[str, Any], failed: list[str], name: str, call: Any) -> None:
    print(f"\n== {name}", flush=True)
    started = time.monotonic()
    try:
        results[name] = call()
    except Exception as exc:  # one broken section must not hide the others' figures
        failed.append(name)
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    results.setdefault("section_seconds", {})[name] = round(time.monotonic() - started, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: fewer readings, 6 s steps (rates come out too high)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--connectors", type=int,
                        help="MQTT connector processes (default: WEBSCADA_MQTT_CONNECTORS, as make run)")
    args = parser.parse_args(argv)
    chosen = args.only or SECTIONS
    settings = Settings()
    if stack.up(settings) != 0:
        print("the local stack did not come up; see .stack/logs/", file=sys.stderr)
        return 1
    started = time.monotonic()
    results: dict[str, Any] = {"machine": _machine(), "quick": args.quick,
                               "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                               "command": "python -m bench " + " ".join(argv or sys.argv[1:])}
    machine = results["machine"]
    print(f"bench on {machine['cpus']} x {machine['cpu_model']}, {machine['memory_gib']} GiB, "
          f"commit {machine['commit']}\n", flush=True)
    failed: list[str] = []
    results["reference_before"] = reference.run(settings, quick=args.quick)
    if "ceiling" in chosen:
        _section(results, failed, "ceiling", lambda: ceiling.run(
            settings, quick=args.quick, batch_readings=drain.batch_readings(settings)))
    transports = tuple(t for t in ("mqtt", "http") if t in chosen)
    if "drain" in chosen or transports:
        # One worker for both sections: started (and warmed up) once.
        try:
            pipeline = Pipeline(settings, uuid.uuid4().hex[:6])
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        try:
            if "drain" in chosen:
                _section(results, failed, "drain",
                         lambda: drain.run(settings, quick=args.quick, pipeline=pipeline))
            if transports:
                _section(results, failed, "e2e", lambda: e2e.run(
                    settings, quick=args.quick, pipeline=pipeline, transports=transports,
                    connectors=args.connectors))
        finally:
            pipeline.close()
    print(flush=True)
    results["reference_after"] = reference.run(settings, quick=args.quick)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["headline"] = headline.rows(results)
    table = headline.markdown(results["headline"])
    print(f"\nheadline (commit {machine['commit']}, {results['started_at'][:10]}"
          f"{', --quick: not comparable' if args.quick else ''}):\n\n{table}\n", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    text = json.dumps(results, indent=2, default=str)
    out.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    before, after = (results[k]["records_per_cpu_second"] for k in ("reference_before", "reference_after"))
    print(f"reference workload {before:,} records/CPU-s before, {after:,} after ({after / before - 1:+.1%}:"
          " figures of a run with a large drift are not comparable)", flush=True)
    print(f"{results['seconds']:.0f} s in all; figures in {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
