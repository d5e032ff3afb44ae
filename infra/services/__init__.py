"""The services of the local stack, in start order."""

from infra.services._base import Service, StackError
from infra.services.influxdb import InfluxDB
from infra.services.kafka import Kafka
from infra.services.mosquitto import Mosquitto
from infra.services.postgres import Postgres
from infra.services.redis import Redis

__all__ = ["InfluxDB", "Kafka", "Mosquitto", "Postgres", "Redis", "Service", "StackError"]
