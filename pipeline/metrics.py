"""Prometheus metrics of a worker process: served on a port of its own, plus consumer lag."""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge, start_http_server

__all__ = ["CONSUMER_LAG", "measure_lag", "serve_metrics", "skip_to_end"]

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


# The newest total lag measured per consumer group (for heartbeats).
LAST_LAG: dict[str, int] = {}


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
    LAST_LAG[group] = 0
    for tp in committed.topic_partitions or []:
        end = ends[TopicPartition(tp.topic, tp.partition)].result().offset
        done = tp.offset if tp.offset >= 0 else 0
        lag[(tp.topic, tp.partition)] = max(0, end - done)
        CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(lag[(tp.topic, tp.partition)])
    LAST_LAG[group] = sum(lag.values())
    return lag


def skip_to_end(bootstrap: str, groups: list[str], topic: str, timeout: float = 10.0) -> None:
    """Commit the current end of ``topic`` for each of ``groups``: they start with the next
    record instead of the backlog (for a new agent that should not read history). The groups
    must have no member at the time (blocking; run in a thread from async code)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient, OffsetSpec

    admin = AdminClient({"bootstrap.servers": bootstrap})
    partitions = admin.list_topics(topic, timeout=timeout).topics[topic].partitions
    ends = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                              request_timeout=timeout)
    offsets = [TopicPartition(topic, tp.partition, future.result().offset) for tp, future in ends.items()]
    for group in groups:
        admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(group, offsets)])[group].result()
