"""Redis 7 from Debian's redis-server package, with its data under .stack/redis."""

from __future__ import annotations

import subprocess
from typing import ClassVar
from urllib.parse import urlparse

from infra.services._base import Service, StackError, apt_install, port_answers, wait_for, which

__all__ = ["Redis"]


class Redis(Service):
    name: ClassVar[str] = "redis"

    @property
    def host_port(self) -> tuple[str, int]:
        url = urlparse(self.settings.redis_url)
        return url.hostname or "127.0.0.1", url.port or 6379

    @property
    def address(self) -> str:
        return self.settings.redis_url

    def answers(self) -> bool:
        host, port = self.host_port
        if not port_answers(host, port):
            return False
        import redis

        client = redis.Redis(host=host, port=port, socket_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def install(self) -> None:
        if which("redis-server") is None:
            apt_install("redis-server")

    def start(self) -> None:
        host, port = self.host_port
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        binary = which("redis-server")
        if binary is None:
            raise StackError("redis-server not found")
        result = subprocess.run(
            [binary, "--bind", host, "--port", str(port), "--dir", str(self.state_dir),
             "--daemonize", "yes", "--pidfile", str(self.pid_path),
             "--logfile", str(self.log_path), "--appendonly", "yes",
             "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"redis-server failed to start: {result.stderr}")
        wait_for("Redis", self.answers, timeout=30)
