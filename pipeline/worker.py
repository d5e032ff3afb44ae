"""``webscada worker``: run one role's Faust app, or supervise one process per role.

The supervisor imports what the roles run and then forks them, so that the
imported code and data are one copy in memory for all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import signal
import threading
import time

from pipeline.settings import Settings

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(settings: Settings, *, role: str = "all") -> int:
    if role == "all":
        return _supervise(settings)
    return _run_role(settings, role)


def _run_role(settings: Settings, role: str) -> int:
    import asyncio

    import uvloop
    from faust.worker import Worker

    from pipeline.app import all_roles, create_app
    from pipeline.logs import set_role
    from pipeline.metrics import serve_metrics

    roles = all_roles(settings)
    if settings.metrics_port_base and role in roles:
        serve_metrics(settings.metrics_host, settings.metrics_port_base + roles.index(role))
    (settings.stack_dir / "faust").mkdir(parents=True, exist_ok=True)
    # uvloop before anything makes a loop: its callbacks and sockets cost about a
    # quarter less CPU than asyncio's own loop for the same records.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(role, settings)
    set_role(f"worker:{role}")
    from pipeline.heartbeat import Heartbeat
    from pipeline.metrics import LAST_LAG

    group = f"webscada-{role}"
    Heartbeat(settings.redis_url, f"worker:{role}", detail=lambda: {"lag": LAST_LAG.get(group)}).start()
    # Faust sets up its own (text) logging unless told not to: JSON logs keep pipeline.logs'
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True,
                    override_logging=settings.log_format != "json")
    # Faust's terminal spinner, at log levels WARNING and above, sets the root logger to
    # DEBUG so that it can spin on every record: every debug line of aiokafka then became a
    # LogRecord (a fifth of a role's CPU at low rates). Logs go to files here: no spinner.
    worker.spinner = None
    worker.execute_from_commandline()  # returns only via SystemExit
    return 0


def _preload(settings: Settings) -> None:
    """Import what every role runs (Faust, the Kafka clients, the stores' clients, every
    agent module) once, in the supervisor: the role processes forked from it share those
    pages (~90 MiB of a role's ~105) instead of each holding its own copy."""
    import aiokafka  # noqa: F401
    import faust
    import faust.sensors
    import faust.tables
    import faust.transport.drivers.aiokafka
    import faust.web
    import faust.worker  # noqa: F401
    import uvloop  # noqa: F401

    from pipeline.app import _registrars, all_roles

    _registrars()
    all_roles(settings)  # extra agents' modules too
    import pipeline.alarms.agent
    import pipeline.sinks.influxdb
    import pipeline.sinks.postgres
    import pipeline.sinks.redis  # noqa: F401


def _name_process(role: str) -> None:
    """Name the process after its role (what ``ps -o comm`` and ``/proc/PID/comm`` show):
    a forked role keeps the supervisor's command line."""
    try:
        libc = ctypes.CDLL(None)
        libc.prctl(15, role.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _fork(settings: Settings, role: str) -> int:
    """Start ``role`` in a child forked from this (preloaded, single-threaded) process."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        _name_process(role)
        code = _run_role(settings, role)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        log.exception("worker role %s failed", role)
    finally:
        logging.shutdown()
        os._exit(code)


def _exited(pid: int) -> int | None:
    """The exit status of child ``pid`` when it has ended, else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return -1
    return os.waitstatus_to_exitcode(status) if done else None


def _supervise(settings: Settings) -> int:
    """One process per role, forked after the shared imports; a role that dies is
    restarted (with a pause)."""
    from pipeline.app import all_roles

    roles = all_roles(settings)
    _preload(settings)
    if threading.active_count() > 1:  # forking a process with threads is unsafe
        raise RuntimeError("the worker supervisor started a thread before forking its roles")
    gc.freeze()  # the preloaded objects stay out of the children's collections (and pages)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = {role: _fork(settings, role) for role in roles}
    restarts = dict.fromkeys(roles, 0.0)
    while not stopping:
        time.sleep(0.5)
        for role, pid in list(children.items()):
            if stopping:
                break
            code = _exited(pid)
            if code is None:
                continue
            log.error("worker role %s exited with %s; restarting", role, code)
            pause = 1.0 if time.monotonic() - restarts[role] > 60 else 10.0
            time.sleep(pause)
            restarts[role] = time.monotonic()
            children[role] = _fork(settings, role)
    alive = [pid for pid in children.values() if _exited(pid) is None]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _exited(pid) is None]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return 0
