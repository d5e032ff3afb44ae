"""Prometheus counters of the connectors, labelled by connector (``mqtt``, ``gsm`` ...).

They live in prometheus-client's default registry; whoever runs a connector
decides whether to expose it (:func:`serve_metrics`). The API's HTTP and
WebSocket ingest count under ``http`` and ``websocket`` and shows them on its
own ``/metrics``.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, start_http_server

__all__ = [
    "BROKER_CONNECTED",
    "DELIVERY_FAILURES",
    "MESSAGES_RECEIVED",
    "MESSAGES_REJECTED",
    "PRODUCER_BACKPRESSURE",
    "READINGS_PRODUCED",
    "RECORDS_PRODUCED",
    "serve_metrics",
]

logger = logging.getLogger(__name__)
_served: set[tuple[str, int]] = set()
_served_lock = threading.Lock()

MESSAGES_RECEIVED = Counter(
    "webscada_connector_messages_received",
    "Device messages a connector took in.",
    ["connector"],
)
RECORDS_PRODUCED = Counter(
    "webscada_connector_records_produced",
    "Records Kafka acknowledged, by topic.",
    ["connector", "topic"],
)
READINGS_PRODUCED = Counter(
    "webscada_connector_readings_produced",
    "Readings Kafka acknowledged on telemetry.raw (many to a batch record).",
    ["connector"],
)
MESSAGES_REJECTED = Counter(
    "webscada_connector_messages_rejected",
    "Messages (or fields of them) sent to the DLQ, by reason code.",
    ["connector", "reason"],
)
DELIVERY_FAILURES = Counter(
    "webscada_connector_delivery_failures",
    "Records Kafka did not acknowledge in time or refused, by topic.",
    ["connector", "topic"],
)
PRODUCER_BACKPRESSURE = Counter(
    "webscada_connector_producer_backpressure",
    "Times produce() waited because the producer's local queue was full.",
    ["connector"],
)
BROKER_CONNECTED = Gauge(
    "webscada_connector_broker_connected",
    "1 while the connector is connected and subscribed to its device-side broker.",
    ["connector"],
)


def serve_metrics(host: str, port: int) -> bool:
    """Serve the default registry on ``http://host:port/metrics`` (once per address).

    Returns False, after logging why, when the port cannot be bound: a
    connector runs on without its metrics rather than not at all.
    """
    with _served_lock:
        if (host, port) in _served:
            return True
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            logger.warning("cannot serve connector metrics on %s:%d: %s", host, port, exc)
            return False
        _served.add((host, port))
        return True
