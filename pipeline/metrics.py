"""Prometheus metrics of a worker process: served on a port of its own, plus consumer lag."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge, start_http_server

__all__ = ["CONSUMER_LAG", "measure_lag", "serve_metrics"]

log = logging.getLogger(__name__)

CONSUMER_LAG = Gauge("webscada_consumer_lag", "Records not yet processed by a consumer group",
                     ["group", "topic", "partition"])


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics of this process (0 disables)."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        # Another worker on this machine has the port (overlapping runs): keep working without.
        log.warning("metrics not served on %s:%d: %s", host, port, exc)
        return
    log.info("metrics on http://%s:%d/metrics", host, port)


_ADMINS: dict[str, Any] = {}


def measure_lag(bootstrap: str, group: str, timeout: float = 5.0) -> dict[tuple[str, int], int]:
    """Per partition: end offset minus the group's committed offset (blocking; run in a thread)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = _ADMINS.get(bootstrap)
    if admin is None:  # one client per process: each has its own threads and connections
        admin = _ADMINS[bootstrap] = AdminClient({"bootstrap.servers": bootstrap})
    committed = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout
    )[group].result()
    partitions = [TopicPartition(tp.topic, tp.partition) for tp in committed.topic_partitions or []]
    if not partitions:
        return {}
    ends = admin.list_offsets({tp: OffsetSpec.latest() for tp in partitions}, request_timeout=timeout)
    lag: dict[tuple[str, int], int] = {}
    for tp in committed.topic_partitions or []:
        end = ends[TopicPartition(tp.topic, tp.partition)].result().offset
        done = tp.offset if tp.offset >= 0 else 0
        lag[(tp.topic, tp.partition)] = max(0, end - done)
        CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(lag[(tp.topic, tp.partition)])
    return lag
