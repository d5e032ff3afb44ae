"""Prometheus metrics of the API process and the ``/metrics`` route.

Metrics are declared once per process (prometheus-client's default registry);
declaring them does no I/O.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from api.openapi import describe

__all__ = [
    "DEPENDENCY_UP",
    "E2E_LATENCY",
    "INGESTED",
    "KAFKA_END_OFFSET",
    "KAFKA_LAG",
    "LIVE_CONFLATED",
    "LIVE_DROPPED",
    "LIVE_EVENTS",
    "LIVE_SENT",
    "SOCKETIO_CLIENTS",
    "TAIL_RECORDS",
    "TAIL_RESTARTS",
    "TAIL_SKIPPED",
    "WS_CLIENTS",
    "WS_DROPPED",
    "WS_FRAMES",
    "metrics_endpoint",
]

TAIL_RECORDS = Counter(
    "webscada_api_tail_records_total", "Kafka records read by the live tail", ["topic"]
)
TAIL_SKIPPED = Counter(
    "webscada_api_tail_skipped_total",
    "Records the live tail could not decode or route, and skipped",
    ["topic"],
)
TAIL_RESTARTS = Counter(
    "webscada_api_tail_restarts_total", "Times the live tail reconnected to Kafka"
)
LIVE_EVENTS = Counter(
    "webscada_api_socketio_events_total", "Socket.IO events emitted", ["event"]
)
SOCKETIO_CLIENTS = Gauge("webscada_api_socketio_clients", "Connected Socket.IO clients")
WS_CLIENTS = Gauge("webscada_api_ws_topic_clients", "Open /ws/topics connections", ["topic"])
WS_FRAMES = Counter("webscada_api_ws_frames_total", "Frames sent on /ws/topics", ["topic"])
WS_DROPPED = Counter(
    "webscada_api_ws_dropped_total",
    "Frames dropped (oldest first) because a /ws/topics client read too slowly",
    ["topic"],
)
DEPENDENCY_UP = Gauge(
    "webscada_api_dependency_up", "1 when the last /health check found it up", ["dependency"]
)

LIVE_SENT = Counter(
    "webscada_api_socketio_sent_total", "Socket.IO events written to clients", ["event"]
)
LIVE_CONFLATED = Counter(
    "webscada_api_socketio_conflated_total",
    "Events merged into a newer one while a slow client's outbox waited",
    ["event"],
)
LIVE_DROPPED = Counter(
    "webscada_api_socketio_dropped_total",
    "Events dropped (oldest first) because a client's outbox was full",
    ["event"],
)
INGESTED = Counter(
    "webscada_telemetry_ingested_total",
    "Validated readings seen on telemetry.valid, by protocol (rate() is the ingest rate)",
    ["protocol"],
)
E2E_LATENCY = Histogram(
    "webscada_e2e_latency_seconds",
    "From device time (ts) to a stage of the pipeline",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
KAFKA_LAG = Gauge(
    "webscada_kafka_consumer_lag",
    "Records not yet committed by a consumer group, summed over a topic's partitions",
    ["group", "topic"],
)
KAFKA_END_OFFSET = Gauge(
    "webscada_kafka_topic_end_offset",
    "Sum of a topic's partition end offsets (rate() of telemetry.dlq is the DLQ rate)",
    ["topic"],
)


@describe(content_type="text/plain", response={"type": "string"}, errors=())
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of the API: ingest rate per protocol, end-to-end latency,
    consumer lag per group, topic end offsets (DLQ rate), live-stream figures."""
    stats = getattr(request.app.state, "kafka_stats", None)  # set by the lifespan
    if stats is not None:
        await stats.refresh()
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
