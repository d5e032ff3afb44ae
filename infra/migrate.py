"""Versioned SQL migrations (infra/migrations/NNNN_name.sql), each applied once."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.settings import Settings

__all__ = ["MIGRATIONS", "apply_migrations"]

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def apply_migrations(settings: Settings) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; returns their names.

    Each file runs in its own transaction together with its bookkeeping row, and
    an advisory lock keeps two starting processes from applying the same file.
    A file changed after it was applied is reported, never re-run.
    """
    import psycopg

    applied_now: list[str] = []
    with psycopg.connect(settings.pg_conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(727274)")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL, sha256 text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0]: row[1] for row in
                    conn.execute("SELECT version, sha256 FROM schema_migrations")}
            for path in sorted(MIGRATIONS.glob("*.sql")):
                version = int(path.name.split("_", 1)[0])
                sql = path.read_text(encoding="utf-8")
                digest = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version] != digest:
                        raise RuntimeError(
                            f"migration {path.name} changed after it was applied; "
                            "add a new migration instead of editing it"
                        )
                    continue
                with conn.transaction():
                    conn.execute(sql)  # type: ignore[arg-type]
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, sha256) VALUES (%s, %s, %s)",
                        (version, path.name, digest),
                    )
                applied_now.append(path.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(727274)")
    return applied_now
