"""The job store: a small interface, implemented on SQLite in WAL mode.

Several processes use it at once (the gateway's runner and each job's own process), so every
change is one short transaction. A PostgreSQL store for multi-gateway deployments would
implement the same methods.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

FINAL = ("succeeded", "failed", "cancelled")  # a job in one of these states never changes again


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL,
  progress REAL NOT NULL DEFAULT 0, step TEXT, eta_s REAL, metrics TEXT, result TEXT,
  error TEXT, checkpoint TEXT, attempts INTEGER NOT NULL DEFAULT 0, pid INTEGER,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  created REAL NOT NULL, started REAL, finished REAL, heartbeat REAL
);
CREATE TABLE IF NOT EXISTS job_logs (
  job_id TEXT NOT NULL, at REAL NOT NULL, line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_logs_by_job ON job_logs (job_id, at);
"""

_JSON_FIELDS = ("params", "metrics", "result", "checkpoint")


class SQLiteJobStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for name in _JSON_FIELDS:
            job[name] = json.loads(job[name]) if job[name] else None
        job["cancel_requested"] = bool(job["cancel_requested"])
        return job

    def create(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        job_id = uuid.uuid4().hex[:16]
        with self._connect() as db:
            db.execute("INSERT INTO jobs (id, kind, state, params, created) VALUES (?, ?, 'queued', ?, ?)",
                       (job_id, kind, json.dumps(params), time.time()))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._connect() as db:
            return self._row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def update(self, job_id: str, **fields: Any) -> None:
        if not fields:
            return
        columns, values = [], []
        for name, value in fields.items():
            columns.append(f"{name} = ?")
            values.append(json.dumps(value) if name in _JSON_FIELDS and value is not None else value)
        with self._connect() as db:
            db.execute(f"UPDATE jobs SET {', '.join(columns)} WHERE id = ?", (*values, job_id))

    def log(self, job_id: str, line: str) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO job_logs (job_id, at, line) VALUES (?, ?, ?)",
                       (job_id, time.time(), line[:2000]))

    def logs(self, job_id: str, limit: int = 200) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT at, line FROM job_logs WHERE job_id = ? ORDER BY at DESC LIMIT ?",
                              (job_id, limit)).fetchall()
        return [f"{time.strftime('%H:%M:%S', time.gmtime(r['at']))} {r['line']}" for r in reversed(rows)]

    def claim_queued(self) -> dict[str, Any] | None:
        """Atomically move the oldest queued job to running and return it."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' AND cancel_requested = 0 "
                             "ORDER BY created LIMIT 1").fetchone()
            if row is None:
                db.execute("COMMIT")
                return None
            now = time.time()
            db.execute("UPDATE jobs SET state = 'running', started = COALESCE(started, ?), heartbeat = ?, "
                       "attempts = attempts + 1 WHERE id = ?", (now, now, row["id"]))
            db.execute("COMMIT")
        return self.get(row["id"])

    def running(self) -> list[dict[str, Any]]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}
