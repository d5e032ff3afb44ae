"""Prometheus counters of the connectors, labelled by connector (``mqtt``, ``gsm`` ...).

They live in prometheus-client's default registry; whoever runs a connector
decides whether to expose it (e.g. ``prometheus_client.start_http_server``).
"""

from __future__ import annotations

from prometheus_client import Counter

__all__ = [
    "DELIVERY_FAILURES",
    "MESSAGES_RECEIVED",
    "MESSAGES_REJECTED",
    "PRODUCER_BACKPRESSURE",
    "RECORDS_PRODUCED",
]

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
