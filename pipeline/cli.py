"""The ``webscada`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.logs import configure_logging
from pipeline.settings import get_settings

__all__ = ["main"]


def _stack(args: argparse.Namespace) -> int:
    from infra import stack

    settings = get_settings()
    only = set(args.only.split(",")) if args.only else None
    if only and (unknown := only - {service.name for service in stack.services(settings)}):
        print(f"unknown service(s) {', '.join(sorted(unknown))}")
        return 2
    if args.action == "up":
        return stack.up(settings, only=only)
    if args.action == "down":
        return stack.down(settings, only=only)
    return stack.status(settings)


def _migrate(_: argparse.Namespace) -> int:
    from infra.migrate import apply_migrations

    applied = apply_migrations(get_settings())
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _worker(args: argparse.Namespace) -> int:
    from pipeline.worker import main as worker_main

    return worker_main(get_settings(), role=args.role)


def _connect(args: argparse.Namespace) -> int:
    if args.protocol == "mqtt":
        from connectors.mqtt import main as mqtt_main

        return mqtt_main(get_settings(), client_id=args.client_id, retire=args.retire,
                         metrics_port=args.metrics_port)
    if args.protocol == "gsm":
        from connectors.gsm import main as gsm_main

        return gsm_main(get_settings(), client_id=args.client_id, metrics_port=args.metrics_port)
    if args.protocol == "lorawan":
        from connectors.lorawan import main as lorawan_main

        return lorawan_main(get_settings(), client_id=args.client_id,
                            metrics_port=args.metrics_port)
    if args.protocol == "bluetooth":
        from pathlib import Path

        from connectors.bluetooth import main as bluetooth_main

        config = args.config or get_settings().ble_devices_path
        if not config:
            raise SystemExit("connect bluetooth needs --config PATH or WEBSCADA_BLE_DEVICES_PATH")
        return bluetooth_main(get_settings(), config_path=Path(config),
                              metrics_port=args.metrics_port)
    raise SystemExit(f"unknown connector {args.protocol!r}")


def _decode(args: argparse.Namespace) -> int:
    from connectors.decode import main as decode_main

    return decode_main(args.format, args.payload, bind_key=args.bind_key, mac=args.mac)


def _api(_: argparse.Namespace) -> int:
    from api.app import main as api_main

    return api_main(get_settings())


def _simulate(args: argparse.Namespace) -> int:
    from connectors.simulator import main as simulate_main

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    try:
        return simulate_main(get_settings(), devices=args.devices, interval_s=args.interval,
                             count=args.count, prefix=args.prefix, protocols=protocols,
                             api_url=args.api_url)
    except ValueError as exc:  # a bad --protocols/--devices/--count, said in words
        raise SystemExit(f"webscada simulate: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    from pipeline.run import main as run_main

    return run_main(get_settings(), devices=args.devices, simulate=not args.no_simulator)


def _stop(_: argparse.Namespace) -> int:
    from pipeline.run import stop

    return stop(get_settings())


def _user(args: argparse.Namespace) -> int:
    from api.usercli import main as user_main

    return user_main(get_settings(), args)


def _dlq(args: argparse.Namespace) -> int:
    from pipeline import dlq

    try:
        since = dlq.parse_since(args.since) if getattr(args, "since", None) else None
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    where = dlq.Filter(reason=getattr(args, "reason", None), device_id=getattr(args, "device", None),
                       stage=getattr(args, "stage", None), since=since)
    if args.action == "list":
        return dlq.main_list(get_settings(), where, limit=args.limit)
    if args.action == "show":
        return dlq.main_show(get_settings(), args.ref)
    return dlq.main_replay(get_settings(), where, dry_run=args.dry_run)


def _device(args: argparse.Namespace) -> int:
    """``webscada device cert ID``: a client certificate of the local CA for mutual TLS."""
    from infra.tls import issue_device_certificate, tls_files
    from schemas.records import DEVICE_ID_PATTERN

    if not DEVICE_ID_PATTERN.fullmatch(args.device_id):
        print(f"device id {args.device_id!r} must match {DEVICE_ID_PATTERN.pattern}")
        return 2
    settings = get_settings()
    try:
        cert, key = issue_device_certificate(settings.stack_dir, args.device_id)
    except FileNotFoundError as exc:
        print(exc)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.device_id}.pem").write_bytes(cert)
    key_path = out / f"{args.device_id}.key"
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(key)
    ca = tls_files(settings.stack_dir).ca
    print(f"{out / (args.device_id + '.pem')}\n{key_path}\n"
          f"connect with the CA {ca} to {settings.mqtt_host}:{settings.mqtt_mtls_port} (mutual TLS;"
          f" the device needs its MQTT account: register it with protocol mqtt or gsm)")
    return 0


def _status(_: argparse.Namespace) -> int:
    """``webscada status``: the services, then every process's heartbeat, as /health has them."""
    import time

    import redis

    from infra import stack
    from pipeline.heartbeat import component_health, read_components

    settings = get_settings()
    down = stack.status(settings)
    try:
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
        report = component_health(*read_components(client), now=time.time(),
                                  required=settings.health_required)
        client.close()
    except redis.RedisError as exc:
        print(f"no heartbeats: Redis unavailable ({exc})")
        return 1
    print(f"\n{'component':22} {'status':7} {'last beat':>10}  instances (pid uptime detail)")
    for name, entry in sorted(report.items()):
        last = "never" if entry["last_beat_s"] is None else f"{entry['last_beat_s']:.0f} s ago"
        shown = ", ".join(f"{i['pid']} {i['uptime_s']:.0f}s {i['detail'] or ''}".strip()
                          for i in entry["instances"])
        mark = "*" if entry["required"] else " "
        print(f"{name:21}{mark} {entry['status']:7} {last:>10}  {shown}")
        down += entry["required"] and entry["status"] != "up"
    return 1 if down else 0


def _parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = argparse.ArgumentParser(prog="webscada", description="WebSCADA Stream")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, help="debug|info|warning (default: settings)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("stack", help="install, start, stop or check the local services")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--only", help="comma-separated services (postgres,redis,mosquitto,kafka,influxdb)")
    p.set_defaults(func=_stack)

    p = sub.add_parser("migrate", help="apply the SQL migrations not yet applied")
    p.set_defaults(func=_migrate)

    p = sub.add_parser("worker", help="run the stream agents (validate, the sinks, alarms, commands)")
    p.add_argument("--role", default="all",
                   help="all (default: one process per role), validate, sink-redis, "
                        "sink-influxdb, sink-postgres, alarms, dispatcher, or an extra agent's role")
    p.set_defaults(func=_worker)

    p = sub.add_parser("connect", help="run a protocol connector")
    p.add_argument("protocol", choices=["mqtt", "gsm", "lorawan", "bluetooth"])
    p.add_argument("--client-id", help="mqtt, gsm, lorawan: MQTT client id (its persistent session)")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on this port of WEBSCADA_METRICS_HOST (127.0.0.1)")
    p.add_argument("--retire", action="store_true",
                   help="mqtt: take what the broker kept for this client id, then end its session")
    p.add_argument("--config", help="bluetooth: TOML or JSON file mapping addresses to device ids")
    p.set_defaults(func=_connect)

    p = sub.add_parser("decode", help="decode a device payload and print its reading as JSON")
    p.add_argument("format", choices=["lpp", "bthome", "ruuvi", "chirpstack"])
    p.add_argument("payload", help="hex (lpp, bthome, ruuvi) or uplink JSON (chirpstack); - reads stdin")
    p.add_argument("--bind-key", help="bthome: the 32-hex-digit key of an encrypted device")
    p.add_argument("--mac", help="bthome: the device address, e.g. 54:48:E6:8F:80:A5 (for decryption)")
    p.set_defaults(func=_decode)

    p = sub.add_parser("api", help="run the API and dashboard (uvicorn)")
    p.set_defaults(func=_api)

    p = sub.add_parser("simulate", help="simulated devices sending telemetry")
    p.add_argument("--protocols", default="mqtt",
                   help="comma-separated: mqtt,gsm,lorawan,http,websocket (default: mqtt)")
    p.add_argument("--api-url", help="http, websocket: the API (default: settings' api_host:api_port)")
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    p.add_argument("--count", type=int, default=None, help="readings per device, then stop")
    p.add_argument("--prefix", default="sim")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("run", help="stack up + worker + connector + API + simulator")
    p.add_argument("--devices", type=int, default=5)
    p.add_argument("--no-simulator", action="store_true")
    p.set_defaults(func=_run)

    p = sub.add_parser("dlq", help="list, show or replay dead letters")
    dlq_sub = p.add_subparsers(dest="action", required=True)
    for name, helptext in (("list", "dead letters with reason and source"),
                           ("replay", "send matching dead letters back to their source")):
        q = dlq_sub.add_parser(name, help=helptext)
        q.add_argument("--reason", help="substring of the reason (case-insensitive)")
        q.add_argument("--device", help="device id")
        q.add_argument("--stage", help="e.g. agent.validate, connector.mqtt")
        q.add_argument("--since", help="relative (-10m, -2h, -1d, -1w) or ISO-8601 with zone")
        if name == "list":
            q.add_argument("--limit", type=int, default=50)
        else:
            q.add_argument("--dry-run", action="store_true")
    q = dlq_sub.add_parser("show", help="one dead letter in full, as JSON")
    q.add_argument("ref", help="PARTITION:OFFSET, as `dlq list` prints it")
    p.set_defaults(func=_dlq)

    p = sub.add_parser("device", help="device credentials: client certificates for mutual TLS")
    device_sub = p.add_subparsers(dest="action", required=True)
    q = device_sub.add_parser("cert", help="issue a client certificate (common name = device id)")
    q.add_argument("device_id")
    q.add_argument("--out", default=".", help="folder for ID.pem and ID.key (default: here)")
    p.set_defaults(func=_device)

    p = sub.add_parser("status", help="the services and every process's heartbeat (as /health)")
    p.set_defaults(func=_status)

    p = sub.add_parser("stop", help="stop what `webscada run` started, and the stack")
    p.set_defaults(func=_stop)

    p = sub.add_parser("user", help="add users, grant applications, change passwords")
    from api.usercli import add_arguments as user_arguments  # argparse only; no I/O

    user_arguments(p)
    p.set_defaults(func=_user)
    return parser


def _role(args: argparse.Namespace) -> str:
    """What this process is, for its logs: ``worker:validate``, ``connect:mqtt``, ``api`` ..."""
    detail = {"worker": "role", "connect": "protocol", "stack": "action", "dlq": "action"}.get(args.command)
    value = getattr(args, detail, None) if detail else None
    return f"{args.command}:{value}" if value else str(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(get_settings(), role=_role(args), level=args.log_level)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
