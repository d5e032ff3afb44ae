"""PostgreSQL 15 from Debian's package: its own cluster under .stack/postgres."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import ClassVar

from infra.services._base import Service, StackError, apt_install, port_answers, wait_for

__all__ = ["Postgres"]

BIN = Path("/usr/lib/postgresql/15/bin")


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its tools as the postgres user then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


class Postgres(Service):
    name: ClassVar[str] = "postgres"

    @property
    def address(self) -> str:
        return f"postgresql://{self.settings.pg_host}:{self.settings.pg_port}/{self.settings.pg_database}"

    @property
    def data_dir(self) -> Path:
        return self.cluster_dir / "data"

    @property
    def cluster_dir(self) -> Path:
        """The cluster lives in .stack/postgres unless the postgres user cannot reach it.

        As root, the server runs as ``postgres``; when a folder above the checkout
        is closed to that user (a private temp dir, say), the cluster goes to a
        folder under /var/tmp named after the checkout, linked from .stack.
        """
        link = self.settings.stack_dir / self.name
        if link.is_symlink():
            return link.resolve()
        if os.geteuid() != 0 or self._reachable(self.settings.stack_dir):
            return link
        digest = hashlib.sha1(str(self.settings.stack_dir).encode()).hexdigest()[:12]
        return Path("/var/tmp") / f"webscada-{digest}" / "postgres"

    @staticmethod
    def _reachable(folder: Path) -> bool:
        """Can the postgres user traverse every existing folder down to ``folder``?"""
        chain = [p for p in (folder, *folder.parents) if p.exists()]
        return all(
            subprocess.run(_as_postgres(["test", "-x", str(p)]), capture_output=True).returncode == 0
            for p in chain
        )

    @property
    def log_path(self) -> Path:
        # Written by the server itself, so it lives where the postgres user may write.
        return self.cluster_dir / "server.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "postmaster.pid"

    def answers(self) -> bool:
        if not port_answers(self.settings.pg_host, self.settings.pg_port):
            return False
        import psycopg

        with psycopg.connect(self.settings.pg_conninfo, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def install(self) -> None:
        if not (BIN / "initdb").exists():
            apt_install("postgresql-15")

    def _prepare_dirs(self) -> None:
        cluster = self.cluster_dir
        link = self.settings.stack_dir / self.name
        cluster.mkdir(parents=True, exist_ok=True)
        if cluster != link and not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(cluster, target_is_directory=True)
        (cluster / "run").mkdir(exist_ok=True)
        self.log_path.touch()
        logs = self.settings.stack_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if not (logs / "postgres.log").is_symlink():
            (logs / "postgres.log").unlink(missing_ok=True)
            (logs / "postgres.log").symlink_to(self.log_path)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres:postgres", str(cluster)], check=True)

    def _initdb(self) -> None:
        pwfile = self.cluster_dir / "pwfile"
        pwfile.write_text(self.settings.pg_password.get_secret_value() + "\n")
        if os.geteuid() == 0:
            subprocess.run(["chown", "postgres:postgres", str(pwfile)], check=True)
        result = subprocess.run(
            _as_postgres([str(BIN / "initdb"), "-D", str(self.data_dir), "-U", self.settings.pg_user,
                          f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                          "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
            capture_output=True, text=True, cwd=self.cluster_dir,
        )
        pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {result.stderr[-1500:]}")

    def start(self) -> None:
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        options = (
            f"-c listen_addresses={self.settings.pg_host} -c port={self.settings.pg_port} "
            f"-c unix_socket_directories={self.cluster_dir / 'run'} "
            "-c max_connections=200 -c shared_buffers=256MB -c synchronous_commit=on "
            "-c fsync=on"
        )
        result = subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path),
                          "-o", options, "-w", "-t", "60", "start"]),
            capture_output=True, text=True, cwd=self.cluster_dir,
        )
        if result.returncode != 0:
            raise StackError(f"pg_ctl start failed: {result.stdout}{result.stderr}\n{self.tail_log()}")
        wait_for("PostgreSQL", self._server_up, timeout=60)
        self._ensure_database()
        wait_for("PostgreSQL", self.answers, timeout=30)

    def _server_up(self) -> bool:
        return port_answers(self.settings.pg_host, self.settings.pg_port)

    def _ensure_database(self) -> None:
        import psycopg

        s = self.settings
        admin = (f"host={s.pg_host} port={s.pg_port} dbname=postgres user={s.pg_user} "
                 f"password={s.pg_password.get_secret_value()}")
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (s.pg_database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{s.pg_database}" OWNER "{s.pg_user}"')

    def prepare(self) -> None:
        from infra.migrate import apply_migrations

        apply_migrations(self.settings)

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        subprocess.run(
            _as_postgres([str(BIN / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            capture_output=True, text=True, cwd=self.cluster_dir,
        )
