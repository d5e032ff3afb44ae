"""``webscada run`` / ``webscada stop``: the whole system on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pipeline.settings import ROOT, Settings

__all__ = ["connector_metrics_ports", "main", "stop"]

# Every protocol the simulator speaks (HTTP and WebSocket devices send through the API).
_SIMULATED = "mqtt,gsm,lorawan,http,websocket"


def _pids_file(settings: Settings) -> Path:
    return settings.stack_dir / "run.json"


def _spawn(settings: Settings, name: str, *args: str,
           env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    logs = settings.stack_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def required_components(settings: Settings) -> list[str]:
    """What a run starts, by heartbeat name: /health is 503 while one of them is down."""
    from pipeline.app import all_roles

    return ([f"worker:{role}" for role in all_roles(settings)]
            + ["connect:mqtt", "connect:gsm", "connect:lorawan", "api"])


def _api_healthy(settings: Settings) -> bool:
    url = f"http://{settings.api_host}:{settings.api_port}/health"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(json.loads(resp.read()).get("status") == "ok")
    except (OSError, ValueError):
        return False


def main(settings: Settings, *, devices: int = 5, simulate: bool = True) -> int:
    """Bring everything up, print the dashboard address, and run until Ctrl-C."""
    from infra import stack

    started = time.monotonic()
    if stack.up(settings) != 0:
        print(f"the local stack did not come up; see {settings.stack_dir / 'logs'}/", file=sys.stderr)
        return 1
    from api.usercli import ensure_admin

    login_hint = ensure_admin(settings)  # the stack ran the migrations: the users table exists
    stop(settings, quiet=True, stack_too=False)  # leftovers of an earlier run
    _retire_mqtt_connectors(settings)
    commands = _commands(settings, devices=devices, simulate=simulate)
    if settings.health_required:
        required = settings.health_required
    else:
        required = required_components(settings)
    env = {"WEBSCADA_HEALTH_REQUIRED": json.dumps(required)}
    children = {name: _spawn(settings, name, *args, env=env) for name, args in commands.items()}
    _record_pids(settings, children)
    deadline = time.monotonic() + 60
    while not _api_healthy(settings) and time.monotonic() < deadline:
        for name, child in children.items():
            if child.poll() is not None:
                print(f"{name} exited early ({child.returncode}); "
                      f"see {settings.stack_dir / 'logs' / name}.log", file=sys.stderr)
                _terminate(children)
                return 1
        time.sleep(0.5)
    took = time.monotonic() - started
    print(f"\nWebSCADA Stream is up in {took:.0f} s. Dashboard: "
          f"http://{settings.api_host}:{settings.api_port}/")
    print(login_hint)
    print(f"Logs in {settings.stack_dir / 'logs'}/. Ctrl-C (or `webscada stop` elsewhere) "
          "stops everything.", flush=True)

    stopping = False

    def on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stopping:
        time.sleep(0.5)
        for name, child in children.items():
            if child.poll() is not None and not stopping:
                print(f"{name} exited ({child.returncode}); restarting", file=sys.stderr)
                children[name] = _spawn(settings, name, *commands[name], env=env)
        _record_pids(settings, children)
    print("stopping ...", flush=True)
    _terminate(children)
    _pids_file(settings).unlink(missing_ok=True)
    stack.down(settings)
    return 0


def _commands(settings: Settings, *, devices: int, simulate: bool) -> dict[str, tuple[str, ...]]:
    """The processes of a run, by name: what each is started (and restarted) with."""
    commands: dict[str, tuple[str, ...]] = {"worker": ("worker",)}
    ports = connector_metrics_ports(settings)

    def metrics(name: str) -> tuple[str, ...]:
        return ("--metrics-port", str(ports[name])) if name in ports else ()

    # MQTT connectors share the devices' messages (settings.mqtt_share_group); each has a
    # client id, and so a broker session, of its own, the same on every run: a restarted
    # connector gets the messages the broker kept for it.
    for index in range(settings.mqtt_connectors):
        if index == 0:
            commands["connector-mqtt"] = ("connect", "mqtt", *metrics("connector-mqtt"))
        else:
            name = f"connector-mqtt-{index}"
            commands[name] = ("connect", "mqtt", "--client-id", f"{settings.mqtt_client_id}-{index}",
                              *metrics(name))
    commands["connector-gsm"] = ("connect", "gsm", *metrics("connector-gsm"))
    commands["connector-lorawan"] = ("connect", "lorawan", *metrics("connector-lorawan"))
    commands["api"] = ("api",)
    if simulate:
        commands["simulator"] = ("simulate", "--devices", str(devices), "--protocols", _SIMULATED)
    return commands


def connector_metrics_ports(settings: Settings) -> dict[str, int]:
    """The Prometheus port of each connector `webscada run` starts, by process name (none
    when ``connector_metrics_port_base`` is 0). Fixed, so that a scrape configuration
    (infra/prometheus/prometheus.yml) can list them: the first MQTT connector, gsm and
    lorawan on base, +1, +2; further MQTT connectors after them."""
    base = settings.connector_metrics_port_base
    if not base:
        return {}
    ports = {"connector-mqtt": base, "connector-gsm": base + 1, "connector-lorawan": base + 2}
    for index in range(1, settings.mqtt_connectors):
        ports[f"connector-mqtt-{index}"] = base + 2 + index
    return ports


def _retire_mqtt_connectors(settings: Settings) -> None:
    """End the broker sessions of MQTT connectors an earlier run had and this one has not:
    as members of the shared subscription they would go on collecting a share of the
    devices' messages. Each takes what was kept for it, then leaves."""
    state = settings.stack_dir / "mqtt-connectors"
    try:
        before = int(state.read_text())
    except (OSError, ValueError):
        before = 0
    retiring = [_spawn(settings, f"connector-mqtt-{index}-retire", "connect", "mqtt", "--retire",
                       "--client-id", f"{settings.mqtt_client_id}-{index}")
                for index in range(max(settings.mqtt_connectors, 1), before)]
    deadline = time.monotonic() + 120
    for child in retiring:
        try:
            child.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGTERM)
            child.wait()
    failed = [child for child in retiring if child.returncode != 0]
    if retiring:
        print(f"retired {len(retiring) - len(failed)} of {len(retiring)} MQTT connector sessions"
              " of an earlier run", flush=True)
    # A session not retired stays on record, so that the next run tries again.
    state.write_text(str(before if failed else settings.mqtt_connectors))


def _record_pids(settings: Settings, children: dict[str, subprocess.Popen[bytes]]) -> None:
    pids = {"run": os.getpid(), **{name: child.pid for name, child in children.items()}}
    _pids_file(settings).write_text(json.dumps(pids))


def _terminate(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for child in children.values():
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)


def stop(settings: Settings, *, quiet: bool = False, stack_too: bool = True) -> int:
    """Stop the processes a `webscada run` started (found in .stack/run.json), then the stack."""
    pids_file = _pids_file(settings)
    if pids_file.exists():
        pids = json.loads(pids_file.read_text())
        run_pid = pids.pop("run", None)
        if run_pid and run_pid != os.getpid() and _alive(run_pid):
            # The foreground `webscada run` stops its children and the stack itself.
            os.kill(run_pid, signal.SIGTERM)
            deadline = time.monotonic() + 60
            while _alive(run_pid) and time.monotonic() < deadline:
                time.sleep(0.3)
        for name, pid in pids.items():
            try:
                os.killpg(pid, signal.SIGTERM)
                if not quiet:
                    print(f"{name:15} stopped")
            except ProcessLookupError:
                pass
        pids_file.unlink(missing_ok=True)
    if stack_too:
        from infra import stack

        stack.down(settings)
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
