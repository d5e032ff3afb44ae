"""The one settings object, read from the environment (prefix ``WEBSCADA_``) at start-up."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["TOPICS", "Settings", "Topics", "get_settings"]

ROOT = Path(__file__).resolve().parent.parent


def _default_stack_dir() -> Path:
    """Where the local stack keeps its state: ``.stack/`` of a checkout (ROOT holds the
    project's pyproject.toml), else, installed from a wheel, the user's data folder
    (``$XDG_DATA_HOME/webscada``, by default ``~/.local/share/webscada``)."""
    try:
        checkout = 'name = "webscada-stream"' in (ROOT / "pyproject.toml").read_text()
    except OSError:
        checkout = False
    if checkout:
        return ROOT / ".stack"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "webscada"


class Topics:
    """Kafka topic names (part of the contract: other programs rely on them)."""

    RAW = "telemetry.raw"
    VALID = "telemetry.valid"
    DLQ = "telemetry.dlq"
    ALARMS = "alarms"
    COMMANDS = "commands"
    COMMAND_STATUS = "commands.status"
    SYSTEM = "system"

    ALL = (RAW, VALID, DLQ, ALARMS, COMMANDS, COMMAND_STATUS, SYSTEM)
    TELEMETRY = (RAW, VALID, DLQ)


TOPICS = Topics


class Settings(BaseSettings):
    """Every knob of the system; each is overridable by ``WEBSCADA_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="WEBSCADA_", extra="ignore")

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_controller_port: int = 9093
    telemetry_partitions: int = Field(6, ge=1)

    # PostgreSQL
    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_database: str = "webscada"
    pg_user: str = "webscada"
    pg_password: SecretStr = SecretStr("webscada")

    # Redis
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_latest_ttl_s: int = Field(300, ge=1)

    # InfluxDB
    influx_url: str = "http://127.0.0.1:8086"
    influx_org: str = "webscada"
    influx_bucket: str = "telemetry"
    influx_token: SecretStr = SecretStr("webscada-dev-token")
    influx_admin_password: SecretStr = SecretStr("webscada-dev-password")

    # MQTT
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    mqtt_client_id: str = "webscada-connector-mqtt"
    # MQTT connector processes `webscada run` starts. More than one share the devices'
    # messages through $share/{mqtt_share_group or "webscada"}/devices/+/telemetry. One, with
    # a plain persistent subscription, by default: Mosquitto 2.0 does not restore shared
    # subscriptions when it restarts, so readings published between its restart and the
    # connectors' resubscription are PUBACKed to the device and dropped (a plain persistent
    # subscription is restored and queues them). Share only with a broker that keeps them.
    mqtt_connectors: int = Field(1, ge=1, le=16)
    mqtt_share_group: str = Field("", pattern=r"^[^/+#]*$")
    # Devices and services log in (pipeline/mqtt_accounts.py). True lets clients without
    # an account publish and subscribe as the simulator may: for a lab, never a network.
    mqtt_allow_anonymous: bool = False
    # TLS listeners of the local broker (certificates from .stack/tls, infra/tls.py): devices
    # with a password on mqtt_tls_port, devices with a client certificate (common name =
    # device id, `webscada device cert ID`) on mqtt_mtls_port. 0 leaves one out.
    mqtt_tls_port: int = Field(8883, ge=0, le=65535)
    mqtt_mtls_port: int = Field(8884, ge=0, le=65535)
    # The production profile: the broker's listener on mqtt_port speaks TLS too (no plain
    # MQTT anywhere) and every service checks it with mqtt_ca_file (default .stack/tls/ca.pem).
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    # The API gives MQTT/GSM devices their broker accounts (as webscada-admin). False for a
    # broker whose accounts are managed elsewhere.
    mqtt_manage_accounts: bool = True

    # Components (heartbeat names: worker:<role>, connect:<protocol>, api) that /health counts
    # as required: one down or stale makes it 503. `webscada run` names what it starts.
    health_required: list[str] = []

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # HTTPS (and WSS) straight from uvicorn: a certificate and its key, e.g. the local CA's
    # .stack/tls/server.pem and server.key; unset: plain HTTP (behind a TLS proxy, say)
    api_tls_certfile: Path | None = None
    api_tls_keyfile: Path | None = None

    # Pipeline behaviour
    auto_register: bool = True
    # readings per store write (a sink splits bigger batches)
    sink_batch_size: int = Field(5000, ge=1)
    # Kafka records a stream agent takes at once (each record a batch of many readings)
    stream_batch_records: int = Field(100, ge=1)
    sink_batch_within_s: float = Field(0.2, gt=0)
    # how long a connector gathers the readings of a partition into one batch record: longer
    # means fewer, bigger batches for the broker and every consumer downstream, for that much
    # latency (50 ms: 8 % less CPU than 20 ms at 5,000 MQTT readings/s, p99 to the stores
    # alike, since the agents' own batching windows are longer)
    connector_linger_ms: int = Field(50, ge=0, le=1000)
    # validate is on every reading's path to the browser and to every sink: it batches briefly
    validate_batch_within_s: float = Field(0.1, gt=0)
    max_future_skew_s: float = Field(300.0, ge=0)
    profile_refresh_s: float = Field(5.0, gt=0)
    # Extra stream agents: ["role=module:function", ...] (JSON list in the environment)
    extra_agents: list[str] = Field(default_factory=list)

    # HTTP / WebSocket device ingest
    ingest_max_body_bytes: int = Field(262_144, ge=1024)
    ingest_max_readings: int = Field(100, ge=1)
    ingest_rate_limit: int = Field(600, ge=1)
    ingest_rate_window_s: int = Field(60, ge=1)
    ingest_idempotency_ttl_s: int = Field(86_400, ge=60)
    ingest_ack_timeout_s: float = Field(1.0, gt=0)

    # Alarm notifications (SMTP e-mail and webhooks)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_from: str = "webscada@localhost"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    # SMS of alarm notifications (pipeline/sms.py): a Twilio-compatible HTTP gateway, or a
    # GSM modem on a serial port when no gateway is set
    sms_gateway_url: str | None = None
    sms_account_sid: str | None = None
    sms_auth_token: SecretStr | None = None
    sms_from: str = "WebSCADA"
    sms_modem_port: str | None = None
    sms_modem_baudrate: int = Field(115200, gt=0)
    webhook_timeout_s: float = Field(5.0, gt=0)
    notify_queue_size: int = Field(1000, ge=1)
    notify_retries: int = Field(3, ge=0)
    notify_recipient_limit: int = Field(20, ge=1)
    notify_recipient_window_s: float = Field(60.0, gt=0)

    # Command dispatcher
    command_batch_size: int = Field(200, ge=1)
    command_expiry_interval_s: float = Field(1.0, gt=0)
    command_puback_timeout_s: float = Field(10.0, gt=0)
    command_sent_wait_s: float = Field(5.0, ge=0)

    # Bluetooth LE connector: TOML/JSON file mapping addresses to device ids
    ble_devices_path: Path | None = None

    # Prometheus /metrics of worker roles: role i listens on metrics_port_base + i (0: off)
    metrics_host: str = "127.0.0.1"
    metrics_port_base: int = Field(9300, ge=0)
    # ... and of the connectors `webscada run` starts (0: off): the first MQTT connector on
    # connector_metrics_port_base, gsm on +1, lorawan on +2, MQTT connector i >= 1 on +2+i
    connector_metrics_port_base: int = Field(9400, ge=0)

    # Local stack: services' data, logs, run state (WEBSCADA_STACK_DIR)
    stack_dir: Path = Field(default_factory=_default_stack_dir)
    cache_dir: Path = Path.home() / ".cache" / "webscada"
    log_level: str = "info"
    # text: readable lines; json: one JSON object a line with the process's role (pipeline.logs)
    log_format: Literal["text", "json"] = "text"

    @property
    def pg_conninfo(self) -> str:
        return (
            f"host={self.pg_host} port={self.pg_port} dbname={self.pg_database} "
            f"user={self.pg_user} password={self.pg_password.get_secret_value()}"
        )


@cache
def get_settings() -> Settings:
    """The settings of this process, built once at the edge."""
    return Settings()
