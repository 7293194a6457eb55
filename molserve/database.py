"""The PostgreSQL database a fleet of gateways shares (`MOLSERVE_DATABASE_URL`): its schema, as
ordered migrations, and a small connection pool that takes the stores' `?` placeholders.

Jobs and uploads (`molserve.jobs.store`), API keys and rate limits (`molserve.gateway.keys`) and
each endpoint's published model versions (`molserve.registry.fleet`) live in it. Migrations are
applied by `molserve db upgrade`, and by the first process that opens the database; each runs in
a transaction of its own under an advisory lock, so gateways starting together apply it once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_MIGRATION_LOCK = 7_261_002

# Ordered migrations, each applied once (recorded in schema_migrations). Never edit one that
# has shipped: add the next.
MIGRATIONS: list[tuple[int, str]] = [
    (1, """
CREATE TABLE jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
  progress DOUBLE PRECISION NOT NULL DEFAULT 0, step TEXT, eta_s DOUBLE PRECISION, metrics TEXT,
  result TEXT, error TEXT, checkpoint TEXT, attempts INTEGER NOT NULL DEFAULT 0, pid INTEGER,
  cancel_requested INTEGER NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL,
  started DOUBLE PRECISION, finished DOUBLE PRECISION, heartbeat DOUBLE PRECISION,
  owner TEXT, token_hash TEXT, lease_owner TEXT, lease_until DOUBLE PRECISION
);
CREATE INDEX jobs_by_owner ON jobs (owner, state);
CREATE INDEX jobs_by_state ON jobs (state, created);
CREATE TABLE job_logs (job_id TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, line TEXT NOT NULL);
CREATE INDEX job_logs_by_job ON job_logs (job_id, at);
CREATE TABLE uploads (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, path TEXT NOT NULL,
  bytes BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL, last_used DOUBLE PRECISION NOT NULL,
  deleted DOUBLE PRECISION
);
CREATE INDEX uploads_by_owner ON uploads (owner, deleted);
"""),
    (2, """
CREATE TABLE registry_versions (
  endpoint TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT, reserved DOUBLE PRECISION NOT NULL,
  published DOUBLE PRECISION, withdrawn DOUBLE PRECISION, manifest TEXT,
  PRIMARY KEY (endpoint, version)
);
CREATE TABLE registry_events (
  seq BIGSERIAL PRIMARY KEY, endpoint TEXT NOT NULL, version INTEGER NOT NULL,
  action TEXT NOT NULL, at DOUBLE PRECISION NOT NULL
);
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL, scopes TEXT NOT NULL,
  rate_per_minute INTEGER NOT NULL, created TEXT NOT NULL, revoked DOUBLE PRECISION,
  changed DOUBLE PRECISION NOT NULL
);
CREATE INDEX api_keys_changed ON api_keys (changed);
CREATE TABLE rate_buckets (
  key_id TEXT PRIMARY KEY, tokens DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL,
  allowed BOOLEAN NOT NULL DEFAULT TRUE
);
"""),
]


class _PgConnection:
    """A psycopg connection that takes the store's `?` placeholders."""

    def __init__(self, connection) -> None:
        self.connection = connection

    def execute(self, sql: str, args: tuple | list = ()):
        return self.connection.execute(sql.replace("?", "%s"), tuple(args))


class Postgres:
    """A PostgreSQL database through a small connection pool (psycopg 3). A write transaction
    may take an advisory lock (`lock`: a number, or a text hashed by the server) held until it
    ends, so that checks and the changes they allow are serialized across every gateway."""

    null_safe_equal = "IS NOT DISTINCT FROM"

    def __init__(self, url: str) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import ConnectionPool

        self.url = url
        self.pool = ConnectionPool(url, min_size=1, max_size=4, open=True, timeout=30,
                                   kwargs={"autocommit": True, "row_factory": dict_row})

    @staticmethod
    def json_text(column: str, key: str) -> str:
        return f"({column}::jsonb ->> '{key}')"

    @contextmanager
    def read(self) -> Iterator[_PgConnection]:
        with self.pool.connection() as connection:
            yield _PgConnection(connection)

    @contextmanager
    def write(self, lock: str | int | None = None) -> Iterator[_PgConnection]:
        with self.pool.connection() as connection, connection.transaction():
            if isinstance(lock, int):
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
            elif lock is not None:
                connection.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            yield _PgConnection(connection)

    def initialize(self) -> None:
        upgrade(self.url)

    def close(self) -> None:
        self.pool.close()


def upgrade(url: str) -> list[int]:
    """Apply the migrations this database lacks, in order, each in a transaction of its own
    (several gateways starting at once: one applies, the others wait). Returns the versions
    applied."""
    import psycopg

    applied = []
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                           "(version INTEGER PRIMARY KEY, applied DOUBLE PRECISION NOT NULL)")
        for version, sql in MIGRATIONS:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                done = connection.execute("SELECT 1 FROM schema_migrations WHERE version = %s",
                                          (version,)).fetchone()
                if done:
                    continue
                connection.execute(sql)
                connection.execute("INSERT INTO schema_migrations (version, applied) VALUES (%s, %s)",
                                   (version, time.time()))
                applied.append(version)
    return applied


def migration_state(url: str) -> dict[str, Any]:
    """What `molserve db upgrade --check` reports: the versions applied and those missing."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        exists = connection.execute("SELECT to_regclass('schema_migrations')").fetchone()[0]
        done = ({row[0] for row in connection.execute("SELECT version FROM schema_migrations")}
                if exists else set())
    return {"applied": sorted(done), "missing": [v for v, _ in MIGRATIONS if v not in done]}


_POOLS: dict[str, Postgres] = {}


def shared(url: str) -> Postgres:
    """One pool per database in a process, migrated on first use."""
    if url not in _POOLS:
        _POOLS[url] = Postgres(url)
        _POOLS[url].initialize()
    return _POOLS[url]
