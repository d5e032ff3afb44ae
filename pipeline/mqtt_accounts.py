"""Who may connect to Mosquitto, and what each account may publish and subscribe.

Mosquitto's own dynamic-security plugin holds the accounts; nothing else is asked
on a connection or a message. Two kinds:

- **Service accounts** (``SERVICE_ACCOUNTS``): the connectors, the command
  dispatcher, the simulator (and the tools that act as devices, such as the bench
  and ``webscada dlq replay``), ChirpStack's MQTT integration, and ``webscada-admin``,
  which alone may change the accounts. Their passwords are random and live in
  ``<stack_dir>/mqtt-<account>-password`` (mode 0600), written by ``webscada stack
  up``; every process reads its own from there.
- **Device accounts**: a device registered with protocol ``mqtt`` or ``gsm`` gets
  one when it is created, user name = device id, password = its API key (the key
  is rotated together). Its role (``device:<id>``) lets it publish its readings
  and its command answers and subscribe to its own command topic, nothing else.
  Mosquitto 2.0's plugin has no ``%u`` substitution in its ACLs, hence one role per
  device. The plugin disconnects a device whose account is deleted or whose
  password changes, at once.

:func:`broker_config` builds the plugin's file before the broker starts (the
service accounts, the anonymous group, the devices already registered kept);
:class:`AccountAdmin` changes it while the broker runs, through the plugin's
``$CONTROL/dynamic-security/v1`` topic.

A publish that an account may not make is dropped by the broker. Over MQTT 3.1.1
the device still gets its PUBACK (the protocol has no refusal); over MQTT 5 the
PUBACK carries reason code 0x87, "not authorized". Either way nothing of it
reaches the pipeline.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paho.mqtt.client as paho

    from pipeline.settings import Settings

__all__ = [
    "ANONYMOUS_GROUP",
    "DEVICE_PROTOCOLS",
    "SERVICE_ACCOUNTS",
    "AccountAdmin",
    "AccountError",
    "ServiceAccount",
    "broker_ca",
    "broker_config",
    "command_line",
    "credentials",
    "device_acls",
    "device_role",
    "login",
    "password_path",
    "reserved_usernames",
    "service_password",
]

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
ANONYMOUS_GROUP = "anonymous-lab"
#: Protocols whose devices talk MQTT themselves (LoRaWAN devices reach us through ChirpStack).
DEVICE_PROTOCOLS = frozenset({"mqtt", "gsm"})
_PREFIXES = {"mqtt": "devices", "gsm": "gsm"}
_ITERATIONS = 1000


class AccountError(RuntimeError):
    """The broker could not be reached, or refused a change of its accounts."""


@dataclass(frozen=True)
class ServiceAccount:
    """A service's MQTT user name and what it may send (``publish``) and subscribe to."""

    username: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()

    @property
    def role(self) -> str:
        return f"service:{self.username}"


_DEVICE_TELEMETRY = ("devices/+/telemetry", "gsm/+/telemetry")
_DEVICE_ACKS = ("devices/+/commands/ack", "gsm/+/commands/ack")
_DEVICE_COMMANDS = ("devices/+/commands", "gsm/+/commands")
_LORAWAN_EVENTS = "application/+/device/+/event/+"
_LORAWAN_DOWN = "application/+/device/+/command/+"

SERVICE_ACCOUNTS: dict[str, ServiceAccount] = {
    "admin": ServiceAccount("webscada-admin", publish=(f"{CONTROL_TOPIC}",),
                            subscribe=(RESPONSE_TOPIC,)),
    # readings of MQTT and GSM devices, ChirpStack's uplinks; LoRaWAN downlinks go out from it
    "connector": ServiceAccount("webscada-connector", publish=(_LORAWAN_DOWN,),
                                subscribe=(*_DEVICE_TELEMETRY, _LORAWAN_EVENTS)),
    "dispatcher": ServiceAccount("webscada-dispatcher", publish=(*_DEVICE_COMMANDS, _LORAWAN_DOWN),
                                 subscribe=(*_DEVICE_ACKS, _LORAWAN_EVENTS)),
    # speaks for any device: the simulator, the bench, `webscada dlq replay`, tests
    "simulator": ServiceAccount("webscada-simulator",
                                publish=(*_DEVICE_TELEMETRY, *_DEVICE_ACKS, _LORAWAN_EVENTS),
                                subscribe=(*_DEVICE_COMMANDS, _LORAWAN_DOWN)),
    "chirpstack": ServiceAccount("chirpstack", publish=(_LORAWAN_EVENTS,), subscribe=(_LORAWAN_DOWN,)),
}


def reserved_usernames() -> frozenset[str]:
    """User names no device may take."""
    return frozenset(account.username for account in SERVICE_ACCOUNTS.values())


def password_path(settings: Settings, account: str) -> Path:
    return settings.stack_dir / f"mqtt-{account}-password"


def service_password(settings: Settings, account: str, *, create: bool = False) -> str:
    """The password of service account ``account`` (a key of ``SERVICE_ACCOUNTS``).

    ``create`` makes one (random, file mode 0600) when there is none yet: only
    ``webscada stack up`` does, before the broker learns it.
    """
    if account not in SERVICE_ACCOUNTS:
        raise KeyError(f"no MQTT service account {account!r}; one of {', '.join(SERVICE_ACCOUNTS)}")
    path = password_path(settings, account)
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise AccountError(f"no password for MQTT account {account!r} at {path}:"
                               " `webscada stack up` writes it") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(24)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(password + "\n")
    return password


def credentials(settings: Settings, account: str) -> tuple[str, str]:
    """User name and password of service account ``account``."""
    return SERVICE_ACCOUNTS[account].username, service_password(settings, account)


def broker_ca(settings: Settings) -> str | None:
    """The CA file to check the broker with when ``mqtt_tls`` (its listener on ``mqtt_port``
    speaks TLS), else None."""
    if not settings.mqtt_tls:
        return None
    return str(settings.mqtt_ca_file or settings.stack_dir / "tls" / "ca.pem")


def command_line(settings: Settings, account: str) -> list[str]:
    """``mosquitto_pub``/``mosquitto_sub`` options logging in as service account ``account``
    (the password shows in the process list: for tools on a developer's machine)."""
    username, password = credentials(settings, account)
    ca = broker_ca(settings)
    return ["-u", username, "-P", password, *(["--cafile", ca] if ca else [])]


def login(client: paho.Client, settings: Settings, account: str) -> None:
    """Give a paho client the credentials of service account ``account`` (and TLS to the
    broker when ``mqtt_tls``)."""
    client.username_pw_set(*credentials(settings, account))
    ca = broker_ca(settings)
    if ca is not None:
        client.tls_set(ca_certs=ca)


# ---- ACLs ------------------------------------------------------------------------------------
def _acls(publish: tuple[str, ...], subscribe: tuple[str, ...], *,
          shared: bool = False) -> list[dict[str, Any]]:
    """``shared``: the subscriptions may also be shared ones (``$share/<group>/...``), which
    Mosquitto 2.0 checks with their prefix."""
    # Receiving is allowed by default, but not the plugin's answers on $CONTROL: those are
    # allowed here for what the account subscribes to.
    return ([{"acltype": "publishClientSend", "topic": topic, "allow": True} for topic in publish]
            + [{"acltype": "subscribePattern", "topic": topic, "allow": True} for topic in subscribe]
            + [{"acltype": "subscribePattern", "topic": f"$share/+/{topic}", "allow": True}
               for topic in subscribe if shared and not topic.startswith("$")]
            + [{"acltype": "publishClientReceive", "topic": topic, "allow": True}
               for topic in subscribe if topic.startswith("$")])


def device_role(device_id: str) -> str:
    return f"device:{device_id}"


def device_acls(device_id: str, protocol: str) -> list[dict[str, Any]]:
    """A device's own topics: its readings and command answers out, its commands in."""
    prefix = _PREFIXES[protocol]
    return _acls((f"{prefix}/{device_id}/telemetry", f"{prefix}/{device_id}/commands/ack"),
                 (f"{prefix}/{device_id}/commands",))


def _hashed(password: str) -> dict[str, Any]:
    """The plugin's stored form of a password: PBKDF2-SHA512, base64 hash and salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return {"password": base64.b64encode(digest).decode(), "salt": base64.b64encode(salt).decode(),
            "iterations": _ITERATIONS}


def broker_config(settings: Settings, existing: dict[str, Any] | None = None) -> dict[str, Any]:
    """The dynamic-security plugin's file: service accounts (passwords from their files),
    the anonymous group (allowed the simulator's topics when ``mqtt_allow_anonymous``),
    and every other client and role of ``existing`` (the devices) kept as they were."""
    services = {account.username for account in SERVICE_ACCOUNTS.values()}
    service_roles = {account.role for account in SERVICE_ACCOUNTS.values()} | {ANONYMOUS_GROUP}
    old = existing or {}
    clients = [c for c in old.get("clients", []) if c.get("username") not in services]
    roles = [r for r in old.get("roles", []) if r.get("rolename") not in service_roles]
    for name, account in SERVICE_ACCOUNTS.items():
        clients.append({"username": account.username, "textname": f"WebSCADA service {name}",
                        "roles": [{"rolename": account.role}],
                        **_hashed(service_password(settings, name, create=True))})
        roles.append({"rolename": account.role,
                      "acls": _acls(account.publish, account.subscribe, shared=True)})
    lab = SERVICE_ACCOUNTS["simulator"]
    anonymous_acls = _acls(lab.publish, lab.subscribe) if settings.mqtt_allow_anonymous else []
    roles.append({"rolename": ANONYMOUS_GROUP, "acls": anonymous_acls})
    groups = [g for g in old.get("groups", []) if g.get("groupname") != ANONYMOUS_GROUP]
    groups.append({"groupname": ANONYMOUS_GROUP, "roles": [{"rolename": ANONYMOUS_GROUP}],
                   "clients": []})
    return {
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
        "anonymousGroup": ANONYMOUS_GROUP,
        "clients": clients,
        "groups": groups,
        "roles": roles,
    }


# ---- changes while the broker runs ------------------------------------------------------------
class AccountAdmin:
    """Device accounts, changed through the plugin's control topic as ``webscada-admin``.

    Each call opens one short MQTT connection, sends its commands in one message
    and waits for the plugin's answer (blocking: call it from a thread in async code).
    """

    def __init__(self, settings: Settings, *, timeout_s: float = 5.0) -> None:
        self._settings = settings
        self._timeout_s = timeout_s

    # the device operations ---------------------------------------------------------------
    def add_device(self, device_id: str, protocol: str, password: str) -> None:
        """Create (or replace) the device's account; a connected session of it is closed."""
        role = device_role(device_id)
        self._call([{"command": "deleteClient", "username": device_id},
                    {"command": "deleteRole", "rolename": role},
                    {"command": "createRole", "rolename": role, "acls": device_acls(device_id, protocol)},
                    {"command": "createClient", "username": device_id, "password": password,
                     "roles": [{"rolename": role}]}],
                   tolerate={"deleteClient", "deleteRole"})

    def set_password(self, device_id: str, password: str) -> bool:
        """A new password (its connected sessions are closed); False if it has no account."""
        answers = self._call([{"command": "setClientPassword", "username": device_id,
                               "password": password}], tolerate={"setClientPassword"})
        return "error" not in answers[0]

    def remove_device(self, device_id: str) -> None:
        """Delete the device's account and role (closing its sessions); no error if absent."""
        self._call([{"command": "deleteClient", "username": device_id},
                    {"command": "deleteRole", "rolename": device_role(device_id)}],
                   tolerate={"deleteClient", "deleteRole"})

    def device_accounts(self) -> set[str]:
        """User names of every device account the broker holds."""
        answers = self._call([{"command": "listClients", "verbose": False, "count": -1, "offset": 0}])
        names = answers[0].get("data", {}).get("clients", [])
        return {name for name in names if isinstance(name, str)} - reserved_usernames()

    # the protocol ----------------------------------------------------------------------------
    def _call(self, commands: list[dict[str, Any]], *,
              tolerate: frozenset[str] | set[str] = frozenset()) -> list[dict[str, Any]]:
        """Send ``commands``; their answers in order. An answer with an error raises
        :class:`AccountError` unless its command is in ``tolerate``."""
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        tag = uuid.uuid4().hex
        for i, command in enumerate(commands):
            command["correlationData"] = f"{tag}:{i}"
        answered = threading.Event()
        subscribed = threading.Event()
        refused: list[str] = []
        answers: dict[str, dict[str, Any]] = {}

        def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
            if reason.is_failure:
                refused.append(str(reason))
                subscribed.set()
            else:
                client.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(client: paho.Client, userdata: Any, mid: int, reasons: Any,
                         properties: Any) -> None:
            subscribed.set()

        def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
            try:
                body = json.loads(message.payload)
            except ValueError:
                return
            for answer in body.get("responses", []):
                if str(answer.get("correlationData", "")).startswith(f"{tag}:"):
                    answers[answer["correlationData"]] = answer
            if len(answers) == len(commands):
                answered.set()

        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"webscada-admin-{tag[:12]}",
                             clean_session=True)
        login(client, self._settings, "admin")
        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        try:
            client.connect(self._settings.mqtt_host, self._settings.mqtt_port, keepalive=10)
        except OSError as exc:
            raise AccountError(f"MQTT broker at {self._settings.mqtt_host}:"
                               f"{self._settings.mqtt_port} unreachable: {exc}") from exc
        client.loop_start()
        try:
            if not subscribed.wait(self._timeout_s):
                raise AccountError("MQTT broker did not answer the admin's subscribe")
            if refused:
                raise AccountError(f"MQTT broker refused the admin account: {refused[0]}")
            client.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            if not answered.wait(self._timeout_s):
                raise AccountError("MQTT broker's dynamic-security plugin did not answer")
        finally:
            client.disconnect()
            client.loop_stop()
        ordered = [answers[f"{tag}:{i}"] for i in range(len(commands))]
        for command, answer in zip(commands, ordered, strict=True):
            if "error" in answer and command["command"] not in tolerate:
                raise AccountError(f"MQTT broker refused {command['command']}: {answer['error']}")
        return ordered
