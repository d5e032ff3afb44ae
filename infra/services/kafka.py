"""Apache Kafka 4.x in KRaft mode, from Maven Central jars, on the machine's Java."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import ClassVar

from infra.services._base import Service, StackError, port_answers, wait_for, which
from pipeline.settings import Topics

__all__ = ["Kafka"]

INFRA = Path(__file__).resolve().parent.parent
POM = INFRA / "kafka" / "pom.xml"
LOG4J = INFRA / "kafka" / "log4j2.properties"
KAFKA_VERSION = "4.1.1"


class Kafka(Service):
    name: ClassVar[str] = "kafka"

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.settings.kafka_bootstrap.split(",")[0].rpartition(":")
        return host or "127.0.0.1", int(port)

    @property
    def address(self) -> str:
        return self.settings.kafka_bootstrap

    @property
    def libs(self) -> Path:
        return self.settings.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    def answers(self) -> bool:
        host, port = self.host_port
        if not port_answers(host, port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.address})
        admin.list_topics(timeout=2)
        return True

    def install(self) -> None:
        marker = self.libs / ".complete"
        if marker.exists():
            return
        if which("java") is None:
            raise StackError("java not found: Kafka needs a Java 17 runtime")
        if which("mvn") is None:
            raise StackError("mvn not found: Maven resolves the Kafka jars from Maven Central")
        self.libs.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={self.libs}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"resolving Kafka jars failed: {result.stdout[-1500:]}{result.stderr[-500:]}")
        marker.write_text(KAFKA_VERSION)

    def _config(self) -> Path:
        host, port = self.host_port
        ctl = self.settings.kafka_controller_port
        data = self.state_dir / "data"
        config = self.state_dir / "server.properties"
        config.write_text(
            "\n".join([
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{host}:{ctl}",
                f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
                f"advertised.listeners=PLAINTEXT://{host}:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={data}",
                f"num.partitions={self.settings.telemetry_partitions}",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=6",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                "log.retention.hours=168",
                "log.segment.bytes=268435456",
                "",
            ])
        )
        return config

    def _java(self, main: str, *args: str, heap: str = "256m") -> list[str]:
        return [
            "java", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp", f"{self.libs}/*", main, *args,
        ]

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config = self._config()
        if not (self.state_dir / "data" / "meta.properties").exists():
            cluster_id = str(uuid.uuid4())
            # Kafka wants its own base64 uuid form; derive it from a random uuid.
            import base64

            cluster_id = base64.urlsafe_b64encode(uuid.UUID(cluster_id).bytes).decode().rstrip("=")
            result = subprocess.run(
                self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)),
                capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")
        self.spawn(self._java("kafka.Kafka", str(config), heap="1g"))
        wait_for("Kafka", self.answers, timeout=90)

    def prepare(self) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.address})
        existing = admin.list_topics(timeout=10).topics
        wanted = []
        for topic in Topics.ALL:
            if topic in existing:
                continue
            partitions = self.settings.telemetry_partitions
            if topic in Topics.TELEMETRY:
                partitions = max(partitions, 6)
            wanted.append(NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                   config={"min.insync.replicas": "1"}))
        if not wanted:
            return
        for topic, future in admin.create_topics(wanted, request_timeout=30).items():
            try:
                future.result()
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise StackError(f"creating topic {topic} failed: {exc}") from exc
