"""Prometheus metrics of the API process and the ``/metrics`` route.

Metrics are declared once per process (prometheus-client's default registry);
declaring them does no I/O.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, generate_latest
from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "DEPENDENCY_UP",
    "LIVE_EVENTS",
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


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
