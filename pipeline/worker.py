"""``webscada worker``: run one role's Faust app, or supervise one process per role."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
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
    from pipeline.metrics import serve_metrics

    roles = all_roles(settings)
    if settings.metrics_port_base and role in roles:
        serve_metrics(settings.metrics_host, settings.metrics_port_base + roles.index(role))
    (settings.stack_dir / "faust").mkdir(parents=True, exist_ok=True)
    # uvloop before anything makes a loop: its callbacks and sockets cost about a
    # quarter less CPU than asyncio's own loop for the same records.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = create_app(role, settings)
    worker = Worker(app, loglevel=settings.log_level.upper(), quiet=True)
    # Faust's terminal spinner, at log levels WARNING and above, sets the root logger to
    # DEBUG so that it can spin on every record: every debug line of aiokafka then became a
    # LogRecord (a fifth of a role's CPU at low rates). Logs go to files here: no spinner.
    worker.spinner = None
    worker.execute_from_commandline()  # returns only via SystemExit
    return 0


def _spawn(role: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "--role", role])


def _supervise(settings: Settings) -> int:
    """One process per role; a role that dies is restarted (with a pause)."""
    from pipeline.app import all_roles

    roles = all_roles(settings)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = {role: _spawn(role) for role in roles}
    restarts = dict.fromkeys(roles, 0.0)
    while not stopping:
        time.sleep(0.5)
        for role, child in list(children.items()):
            code = child.poll()
            if code is None or stopping:
                continue
            log.error("worker role %s exited with %s; restarting", role, code)
            pause = 1.0 if time.monotonic() - restarts[role] > 60 else 10.0
            time.sleep(pause)
            restarts[role] = time.monotonic()
            children[role] = _spawn(role)
    for child in children.values():
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
    return 0
