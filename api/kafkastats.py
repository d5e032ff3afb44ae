"""Kafka figures for ``/metrics``: consumer lag per group and topic end offsets.

Read on scrape, at most every ``min_interval_s`` (a scrape in between gets the
figures of the last refresh), within a timeout so that a Kafka outage makes
``/metrics`` stale rather than slow.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from api.metrics import KAFKA_END_OFFSET, KAFKA_LAG
from pipeline.settings import Topics

__all__ = ["KafkaStats"]

log = logging.getLogger(__name__)


class KafkaStats:
    """Refreshes :data:`KAFKA_LAG` and :data:`KAFKA_END_OFFSET` from the cluster."""

    def __init__(self, bootstrap: str, *, min_interval_s: float = 10.0,
                 timeout_s: float = 3.0) -> None:
        self._bootstrap = bootstrap
        self._min_interval_s = min_interval_s
        self._timeout_s = timeout_s
        self._last = -float("inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._last < self._min_interval_s:
                return
            self._last = time.monotonic()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self._collect()
            except (KafkaError, TimeoutError, OSError) as exc:
                log.info("metrics: Kafka figures not refreshed: %r", exc)

    async def _collect(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap,
                                    client_id="webscada-api-metrics")
        consumer = AIOKafkaConsumer(bootstrap_servers=self._bootstrap, group_id=None,
                                    enable_auto_commit=False, client_id="webscada-api-metrics")
        await admin.start()
        try:
            await consumer.start()
            committed: dict[str, dict[TopicPartition, int]] = {}
            for group_id, *_ in await admin.list_consumer_groups():
                offsets = await admin.list_consumer_group_offsets(group_id)
                committed[group_id] = {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}
            partitions = {tp for offsets in committed.values() for tp in offsets}
            # Topics nobody consumes (the DLQ) count too: ask the cluster for their partitions.
            for described in await admin.describe_topics(list(Topics.ALL)):
                for partition in described.get("partitions") or ():
                    partitions.add(TopicPartition(described["topic"], partition["partition"]))
            ends: dict[TopicPartition, int] = await consumer.end_offsets(list(partitions))
        finally:
            await consumer.stop()
            await admin.close()
        per_topic: dict[str, int] = collections.Counter()
        for tp, end in ends.items():
            per_topic[tp.topic] += end
        for topic, total in per_topic.items():
            KAFKA_END_OFFSET.labels(topic).set(total)
        for group_id, offsets in committed.items():
            lag: dict[str, int] = collections.Counter()
            for tp, offset in offsets.items():
                lag[tp.topic] += max(0, ends.get(tp, offset) - offset)
            for topic, value in lag.items():
                KAFKA_LAG.labels(group_id, topic).set(value)
