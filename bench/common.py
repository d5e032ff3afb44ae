"""What every benchmark section shares: processes, CPU time, memory, percentiles, the alarm rule.

CPU figures are process CPU time (user + system, all threads) read from
``/proc/<pid>/stat``, so a busy shared machine changes wall times but hardly the
CPU a process spends per reading. Memory is the kernel's peak resident set
(``VmHWM``) of each process, and its proportional set size (PSS), which counts
pages shared between processes once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.readings import ALARM_METRIC, ALARM_THRESHOLD
from pipeline.settings import ROOT, Settings

__all__ = [
    "RESULTS",
    "BenchRule",
    "Proc",
    "cpu_seconds",
    "peak_rss_mb",
    "percentiles",
    "pss_mb",
    "role_pids",
    "service_pids",
    "services_cpu",
    "thread_cpu_seconds",
    "tree_pids",
    "wait_drained",
    "wait_for",
]

RESULTS = Path(__file__).resolve().parent / "results"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, reaped_children: bool = False) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads), with those of
    its exited, waited-for children if ``reaped_children`` (PostgreSQL's closed backends)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICK


def thread_cpu_seconds(native_id: int) -> float:
    """User + system CPU seconds so far of one thread of this process (its native id)."""
    with open(f"/proc/self/task/{native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` in MiB (VmHWM), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def pss_mb(pid: int) -> float:
    """Proportional set size of ``pid`` in MiB: its private memory plus its share of pages it
    shares with other processes (libraries, copy-on-write), so summing over processes counts
    each page once. 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


def tree_pids(pid: int) -> list[int]:
    """``pid`` and every descendant still alive."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def role_pids(worker: int) -> dict[str, int]:
    """The role processes under the worker supervisor ``worker``, by role: forked by it
    and named after their role (``/proc/PID/comm``), or ``webscada worker --role R``."""
    roles: dict[str, int] = {}
    for pid in tree_pids(worker):
        if pid == worker:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as raw:
                argv = raw.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/comm") as comm:
                name = comm.read().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if "--role" in argv[:-1]:
            roles[argv[argv.index("--role") + 1]] = pid
        elif "worker" in argv and not name.startswith("python"):
            roles[name] = pid
    return roles


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of ``values`` as ``{"p50": ..., ...}`` (empty input: empty dict)."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for point in points:
        rank = max(1, min(len(ordered), round(point / 100 * len(ordered) + 0.5)))
        out[f"p{point:g}"] = ordered[rank - 1]
    return out


@dataclass
class Proc:
    """A project command (``webscada ...`` arguments) in its own process group."""

    popen: subprocess.Popen[bytes]
    name: str

    @classmethod
    def start(cls, name: str, *args: str, settings: Settings,
              env: dict[str, str] | None = None) -> Proc:
        logs = settings.stack_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"bench-{name}.log", "ab") as log:
            popen = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        return cls(popen, name)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """CPU seconds of the process and all its live descendants."""
        total = 0.0
        for pid in tree_pids(self.pid):
            try:
                total += cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                pass
        return total

    def peak_rss_mb(self) -> dict[int, float]:
        """Peak resident MiB of the process and each live descendant, by pid."""
        return {pid: peak_rss_mb(pid) for pid in tree_pids(self.pid)}

    def pss_mb(self) -> float:
        """Summed proportional set size (MiB) of the process and its live descendants now."""
        return sum(pss_mb(pid) for pid in tree_pids(self.pid))

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait()


def wait_for(check: Callable[[], object], timeout: float, interval: float = 0.25) -> bool:
    """Poll ``check`` until it returns something truthy; False after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


SERVICES = {
    "kafka": lambda cmd: "kafka.Kafka" in cmd,
    "postgres": lambda cmd: cmd.startswith("postgres") or "/postgres " in cmd or cmd.startswith("postgres:"),
    "redis": lambda cmd: cmd.startswith("redis-server") or "/redis-server" in cmd,
    "influxdb": lambda cmd: "influxd" in cmd.split(" ", 1)[0],
    "mosquitto": lambda cmd: "mosquitto" in cmd.split(" ", 1)[0],
}


def service_pids() -> dict[str, list[int]]:
    """The pids of each local service (every PostgreSQL backend included), by service name."""
    found: dict[str, list[int]] = {name: [] for name in SERVICES}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as raw:
                cmd = raw.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for name, matches in SERVICES.items():
            if cmd and matches(cmd):
                found[name].append(int(entry))
                break
    return found


def services_cpu() -> dict[str, float]:
    """CPU seconds so far of each local service (all its processes that are alive now)."""
    total: dict[str, float] = {}
    for name, pids in service_pids().items():
        seconds = 0.0
        for pid in pids:
            try:
                seconds += cpu_seconds(pid, reaped_children=True)
            except (FileNotFoundError, ProcessLookupError):
                pass
        total[name] = seconds
    return total


def wait_drained(settings: Settings, groups: dict[str, str], timeout: float) -> bool:
    """Whether each group (→ the topic it consumes) committed the end of every partition of
    that topic, within ``timeout``. Offsets a group may hold for other topics (left by an
    experiment under the same group name) do not count."""
    from pipeline.metrics import measure_lag

    def drained() -> bool:
        for group, topic in groups.items():
            lag = {tp: n for tp, n in measure_lag(settings.kafka_bootstrap, group).items()
                   if tp[0] == topic}
            if not lag or any(lag.values()):
                return False
        return True

    return wait_for(drained, timeout, interval=0.5)


class BenchRule:
    """The bench's alarm rule, on every device: ``bench_level > 26.5`` (deadband 1), which
    the bench's readings cross now and then (see :mod:`bench.readings`)."""

    def __init__(self, settings: Settings) -> None:
        self._conninfo = settings.pg_conninfo
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            row = conn.execute(
                "INSERT INTO alarm_rules (name, application_id, metric, operator, threshold, deadband)"
                " VALUES (%s, NULL, %s, '>', %s, 1) RETURNING id",
                (f"bench {ALARM_METRIC}", ALARM_METRIC, ALARM_THRESHOLD)).fetchone()
        assert row is not None
        self.id = str(row[0])

    def alarms(self) -> int:
        """How many alarms the rule has raised so far."""
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM alarms WHERE rule_id = %s", (self.id,)).fetchone()
        return int(row[0]) if row else 0

    def retire(self) -> None:
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            conn.execute("UPDATE alarm_rules SET enabled = false, deleted_at = now() WHERE id = %s",
                         (self.id,))
