"""The job store: one interface, on SQLite (WAL; the default, for one machine) or PostgreSQL (a
fleet of gateways on several machines: `MOLSERVE_DATABASE_URL=postgresql://...`).

Several processes use it at once (the gateways' runners and each job's own process), so every
change is one short transaction. The SQL is the same for both databases but for a few spellings
(`_SQLite`, `molserve.database.Postgres`); PostgreSQL's schema changes ship as ordered
migrations (`molserve.database.MIGRATIONS`, applied by `molserve db upgrade` and on first open).

Each job and upload records its owner (the key that created it, `molserve.gateway.security`
says who that is) so that listing, quotas and the queue's fairness are per owner; an anonymous
job keeps only the SHA-256 of its token. SQLite databases written before jobs had owners are
migrated in place when opened (their jobs have no owner, which only admins see).

A job runs exactly once at a time, by lease: a claim moves it to `running` and records who runs
it (`lease_owner`: host, process and a random tag) and until when (`lease_until`) in the same
transaction; the process running it renews the lease while it works and every change it makes
names the lease it holds, so a process that lost its lease changes nothing. A lease that
expires (its process and machine died, or stalled) is the only way a job returns to the queue,
and every state change names the state it expects (compare-and-set): cancel, finish and
recovery cannot undo one another. Quotas and the concurrency cap are checked inside the
transaction that acts on them (on PostgreSQL claims are serialized by an advisory lock, and the
row taken is locked `FOR UPDATE SKIP LOCKED`).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from molserve.database import Postgres

FINAL = ("succeeded", "failed", "cancelled")  # a job in one of these states never changes again
ACTIVE = ("queued", "running")  # a job in one of these states may still read its input
LEASE_S = 30.0  # a claim's lease: renewed every third of it by the process running the job
_JSON_FIELDS = ("params", "metrics", "result", "checkpoint")
_CLAIM_LOCK = 7_261_001  # PostgreSQL advisory lock serializing claims (any number, fixed)


def new_lease() -> str:
    """A lease holder's name: host, process and a random tag (unique across machines)."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class QuotaFull(Exception):
    """A quota checked inside the transaction that would pass it: `which`, `used`, `limit`."""

    def __init__(self, which: str, used: int, limit: int) -> None:
        super().__init__(f"{which}: {used} of {limit}")
        self.which, self.used, self.limit = which, used, limit


_SQLITE_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS uploads (
  id TEXT PRIMARY KEY, owner TEXT NOT NULL, filename TEXT NOT NULL, path TEXT NOT NULL,
  bytes INTEGER NOT NULL, created REAL NOT NULL, last_used REAL NOT NULL, deleted REAL
);
CREATE INDEX IF NOT EXISTS uploads_by_owner ON uploads (owner, deleted);
"""
# Columns added to SQLite stores after the first release: added to older databases on open.
_ADDED_COLUMNS = {"owner": "TEXT", "token_hash": "TEXT", "lease_owner": "TEXT", "lease_until": "REAL"}

class _SQLite:
    """One SQLite file; a write transaction is BEGIN IMMEDIATE (it serializes all writers)."""

    null_safe_equal = "IS"

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def json_text(column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        return db

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def write(self, lock: str | int | None = None) -> Iterator[sqlite3.Connection]:
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def initialize(self) -> None:
        # Several processes may open the store at the same moment (`serve --workers N`): a
        # journal-mode switch or schema upgrade racing another one's is retried, not fatal.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(100):
            try:
                self._initialize()
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == 99:
                    raise
                time.sleep(0.05)

    def _initialize(self) -> None:
        with self.read() as db:
            if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SQLITE_SCHEMA)
        # Several processes may open an old store at once: the check and the upgrade happen in
        # one write transaction, so only the first one alters.
        with self.write() as db:
            present = {row["name"] for row in db.execute("PRAGMA table_info(jobs)")}
            for column, kind in _ADDED_COLUMNS.items():
                if column not in present:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
            db.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, state)")


class JobStore:
    """Jobs, their logs, and uploads (see the module docstring)."""

    def __init__(self, database: _SQLite | Postgres) -> None:
        self.db = database
        database.initialize()

    @staticmethod
    def _row(row: Any) -> dict[str, Any] | None:
        if row is None:
            return None
        job = dict(row)
        for name in _JSON_FIELDS:
            job[name] = json.loads(job[name]) if job[name] else None
        job["cancel_requested"] = bool(job["cancel_requested"])
        return job

    def create(self, kind: str, params: dict[str, Any], *, owner: str | None = None,
               token_hash: str | None = None, max_queued: int | None = None) -> dict[str, Any]:
        """Queue a job; with `max_queued`, refused (QuotaFull) when its owner already has that
        many queued, counted in the same transaction as the insert."""
        job_id = uuid.uuid4().hex[:16]
        with self.db.write(lock=f"owner:{owner}") as db:
            if max_queued is not None:
                queued = db.execute(f"SELECT COUNT(*) AS n FROM jobs WHERE owner {self.db.null_safe_equal} ? "
                                    "AND state = 'queued'", (owner,)).fetchone()["n"]
                if queued >= max_queued:
                    raise QuotaFull("queued_jobs", queued, max_queued)
            db.execute("INSERT INTO jobs (id, kind, state, params, created, owner, token_hash) "
                       "VALUES (?, ?, 'queued', ?, ?, ?, ?)",
                       (job_id, kind, json.dumps(params), time.time(), owner, token_hash))
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self.db.read() as db:
            return self._row(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def list(self, limit: int = 100, owner: str | None = None) -> list[dict[str, Any]]:
        """The newest jobs; with `owner`, only that owner's."""
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        with self.db.read() as db:
            rows = db.execute(f"SELECT * FROM jobs {where} ORDER BY created DESC LIMIT ?",
                              (*args, limit)).fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def active_counts(self, owner: str) -> dict[str, int]:
        """The owner's queued and running jobs, for quotas."""
        with self.db.read() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs WHERE owner = ? AND state IN "
                              "('queued', 'running') GROUP BY state", (owner,)).fetchall()
        return {"queued": 0, "running": 0, **{r["state"]: r["n"] for r in rows}}

    def update(self, job_id: str, **fields: Any) -> None:
        """Change fields unconditionally (records no state change a lease holder could lose:
        progress is `renew`/`transition`'s, with the lease)."""
        self.transition(job_id, None, **fields)

    def transition(self, job_id: str, expected: tuple[str, ...] | None, *, lease: str | None = None,
                   **fields: Any) -> bool:
        """Change `fields` only if the job is in one of the `expected` states (None: any) and,
        with `lease`, still held by that lease: a compare-and-set. True when it changed."""
        if not fields:
            return False
        columns, values = [], []
        for name, value in fields.items():
            columns.append(f"{name} = ?")
            values.append(json.dumps(value) if name in _JSON_FIELDS and value is not None else value)
        where, args = ["id = ?"], [job_id]
        if expected is not None:
            where.append(f"state IN ({', '.join('?' for _ in expected)})")
            args += list(expected)
        if lease is not None:
            where.append("lease_owner = ?")
            args.append(lease)
        with self.db.read() as db:
            changed = db.execute(f"UPDATE jobs SET {', '.join(columns)} WHERE {' AND '.join(where)}",
                                 (*values, *args)).rowcount
        return changed == 1

    def renew(self, job_id: str, lease: str, lease_s: float = LEASE_S, **fields: Any) -> bool:
        """Extend a running job's lease (and record `fields`, progress for instance) if `lease`
        still holds it; False when it does not (it expired and another process claimed the job,
        or the job was finished): its holder must stop."""
        now = time.time()
        return self.transition(job_id, ("running",), lease=lease, lease_until=now + lease_s,
                               heartbeat=now, **fields)

    def log(self, job_id: str, line: str) -> None:
        with self.db.read() as db:
            db.execute("INSERT INTO job_logs (job_id, at, line) VALUES (?, ?, ?)",
                       (job_id, time.time(), line[:2000]))

    def logs(self, job_id: str, limit: int = 200) -> list[str]:
        with self.db.read() as db:
            rows = db.execute("SELECT at, line FROM job_logs WHERE job_id = ? ORDER BY at DESC LIMIT ?",
                              (job_id, limit)).fetchall()
        return [f"{time.strftime('%H:%M:%S', time.gmtime(r['at']))} {r['line']}" for r in reversed(rows)]

    # Claims and leases -----------------------------------------------------------------------
    def expire_leases(self, max_attempts: int | None = None) -> list[str]:
        """Jobs whose lease ran out (the process running them died or stalled): back to the
        queue, or cancelled if that was asked, or failed after `max_attempts`. Returns their ids."""
        with self.db.write(lock=_CLAIM_LOCK) as db:
            return self._expire(db, time.time(), max_attempts)

    def _expire(self, db, now: float, max_attempts: int | None) -> list[str]:
        rows = db.execute("SELECT id, attempts, cancel_requested FROM jobs WHERE state = 'running' "
                          "AND (lease_until < ? OR (lease_until IS NULL AND COALESCE(heartbeat, 0) < ?))",
                          (now, now - LEASE_S)).fetchall()
        for row in rows:
            if row["cancel_requested"]:
                db.execute("UPDATE jobs SET state = 'cancelled', finished = ?, lease_owner = NULL "
                           "WHERE id = ? AND state = 'running'", (now, row["id"]))
            elif max_attempts is not None and row["attempts"] >= max_attempts:
                db.execute("UPDATE jobs SET state = 'failed', finished = ?, lease_owner = NULL, error = ? "
                           "WHERE id = ? AND state = 'running'",
                           (now, f"the job's process stopped {row['attempts']} times; giving up", row["id"]))
            else:
                db.execute("UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_until = NULL, "
                           "pid = NULL WHERE id = ? AND state = 'running'", (row["id"],))
                db.execute("INSERT INTO job_logs (job_id, at, line) VALUES (?, ?, ?)",
                           (row["id"], now, "its process stopped (its lease expired); queued to resume"))
        return [row["id"] for row in rows]

    def claim(self, lease: str, *, lease_s: float = LEASE_S, max_running: int | None = None,
              max_running_per_owner: int | None = None,
              max_attempts: int | None = None) -> dict[str, Any] | None:
        """Atomically take the next queued job for `lease` (expired leases first return to the
        queue) and return it, running, with the lease recorded; None when nothing may start.

        The queue is fair between owners: the next job is the oldest of the owner with the fewest
        running jobs, ties going to the owner who started a job least recently, so one key's
        hundred queued screens cannot starve another key's one job. Owners already running
        `max_running_per_owner` jobs wait, and nothing starts while `max_running` jobs run (in
        all, whichever process or machine runs them)."""
        with self.db.write(lock=_CLAIM_LOCK) as db:
            claimed = self._claim(db, lease, lease_s, max_running, max_running_per_owner, max_attempts)
        return self.get(claimed) if claimed else None

    def claim_job(self, job_id: str, lease: str, lease_s: float = LEASE_S) -> bool:
        """Take one queued job for `lease` (a job run by hand: `python -m molserve.jobs.execute`
        without `--lease`). True when it was queued and is now this lease's."""
        now = time.time()
        with self.db.read() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'running', started = COALESCE(started, ?), heartbeat = ?, "
                "attempts = attempts + 1, lease_owner = ?, lease_until = ?, pid = NULL "
                "WHERE id = ? AND state = 'queued'", (now, now, lease, now + lease_s, job_id)).rowcount
        return changed == 1

    def claim_queued(self, max_running_per_owner: int | None = None) -> dict[str, Any] | None:
        """`claim` under a lease of this process's own (a job run by hand, and tests)."""
        return self.claim(new_lease(), max_running_per_owner=max_running_per_owner)

    def _claim(self, db, lease: str, lease_s: float, max_running: int | None,
               max_running_per_owner: int | None, max_attempts: int | None) -> str | None:
        now = time.time()
        self._expire(db, now, max_attempts)
        if max_running is not None:
            running_now = db.execute("SELECT COUNT(*) AS n FROM jobs WHERE state = 'running'").fetchone()["n"]
            if running_now >= max_running:
                return None
        queued = db.execute("SELECT id, owner, created FROM jobs WHERE state = 'queued' AND "
                            "cancel_requested = 0 ORDER BY created").fetchall()
        running: dict[str | None, int] = {}
        for r in db.execute("SELECT owner, COUNT(*) AS n FROM jobs WHERE state = 'running' "
                            "GROUP BY owner").fetchall():
            running[r["owner"]] = r["n"]
        last_start: dict[str | None, float] = {}
        for r in db.execute("SELECT owner, MAX(started) AS at FROM jobs WHERE started IS NOT NULL "
                            "GROUP BY owner").fetchall():
            last_start[r["owner"]] = r["at"]
        candidates = [r for r in queued if max_running_per_owner is None
                      or running.get(r["owner"], 0) < max_running_per_owner]
        if not candidates:
            return None
        row = min(candidates, key=lambda r: (running.get(r["owner"], 0),
                                             last_start.get(r["owner"], 0.0), r["created"]))
        if isinstance(self.db, Postgres):  # the row, locked against any other writer meanwhile
            if db.execute("SELECT id FROM jobs WHERE id = ? AND state = 'queued' FOR UPDATE SKIP LOCKED",
                          (row["id"],)).fetchone() is None:
                return None
        changed = db.execute(
            "UPDATE jobs SET state = 'running', started = COALESCE(started, ?), heartbeat = ?, "
            "attempts = attempts + 1, lease_owner = ?, lease_until = ?, pid = NULL "
            "WHERE id = ? AND state = 'queued'", (now, now, lease, now + lease_s, row["id"])).rowcount
        return row["id"] if changed == 1 else None

    def running(self) -> list[dict[str, Any]]:
        with self.db.read() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'running'").fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def counts(self) -> dict[str, int]:
        with self.db.read() as db:
            rows = db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: r["n"] for r in rows}

    # Results and uploads past their retention -------------------------------------------------
    def expired_results(self, before: float) -> list[dict[str, Any]]:
        """Finished jobs (finished before `before`) that still hold a result file."""
        with self.db.read() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') "
                              f"AND finished < ? AND {self.db.json_text('result', 'path')} IS NOT NULL",
                              (before,)).fetchall()
        return [self._row(r) for r in rows]  # type: ignore[misc]

    def active_inputs(self) -> set[str]:
        """The input files of queued and running jobs: never deleted."""
        with self.db.read() as db:
            rows = db.execute(f"SELECT {self.db.json_text('params', 'input_path')} AS path FROM jobs "
                              "WHERE state IN ('queued', 'running')").fetchall()
        return {r["path"] for r in rows if r["path"]}

    def add_upload(self, upload_id: str, owner: str, filename: str, path: str, size: int,
                   quota: int | None = None) -> None:
        """Record an upload; with `quota`, refused (QuotaFull) when the owner's stored bytes
        with this one would pass it, counted in the same transaction as the insert."""
        now = time.time()
        with self.db.write(lock=f"uploads:{owner}") as db:
            if quota is not None:
                used = db.execute("SELECT COALESCE(SUM(bytes), 0) AS n FROM uploads WHERE owner = ? "
                                  "AND deleted IS NULL", (owner,)).fetchone()["n"]
                if used + size > quota:
                    raise QuotaFull("upload_bytes", int(used), quota)
            db.execute("INSERT INTO uploads (id, owner, filename, path, bytes, created, last_used) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (upload_id, owner, filename, path, size, now, now))

    def upload(self, upload_id: str) -> dict[str, Any] | None:
        """A stored upload (None once deleted)."""
        with self.db.read() as db:
            row = db.execute("SELECT * FROM uploads WHERE id = ? AND deleted IS NULL",
                             (upload_id,)).fetchone()
        return dict(row) if row else None

    def touch_upload(self, upload_id: str) -> None:
        """A job uses the upload: its retention counts from now."""
        with self.db.read() as db:
            db.execute("UPDATE uploads SET last_used = ? WHERE id = ?", (time.time(), upload_id))

    def upload_bytes(self, owner: str) -> int:
        with self.db.read() as db:
            row = db.execute("SELECT COALESCE(SUM(bytes), 0) AS n FROM uploads WHERE owner = ? AND "
                             "deleted IS NULL", (owner,)).fetchone()
        return int(row["n"])

    def expired_uploads(self, before: float) -> list[dict[str, Any]]:
        """Uploads last used before `before` that no queued or running job reads."""
        busy = self.active_inputs()
        with self.db.read() as db:
            rows = db.execute("SELECT * FROM uploads WHERE deleted IS NULL AND last_used < ?",
                              (before,)).fetchall()
        return [dict(r) for r in rows if r["path"] not in busy]

    def delete_upload(self, upload_id: str, at: float, unused_since: float) -> bool:
        """Mark an upload deleted unless it was used since `unused_since` (a submission touches
        the upload before it checks that it exists, so the two cannot both succeed); True when
        the caller should remove the file."""
        with self.db.read() as db:
            cursor = db.execute("UPDATE uploads SET deleted = ? WHERE id = ? AND deleted IS NULL AND "
                                "last_used < ?", (at, upload_id, unused_since))
            return cursor.rowcount == 1

    def upload_paths(self) -> set[str]:
        """Every upload file the store knows of (deleted or not)."""
        with self.db.read() as db:
            return {r["path"] for r in db.execute("SELECT path FROM uploads").fetchall()}


class SQLiteJobStore(JobStore):
    """The store in one SQLite file (WAL): one machine's gateways and jobs."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(_SQLite(self.path))


class PostgresJobStore(JobStore):
    """The store in PostgreSQL: every gateway of a fleet, on any machine."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(Postgres(url))

    def close(self) -> None:
        assert isinstance(self.db, Postgres)
        self.db.close()


def open_store(jobs_dir: str | Path, database_url: str | None = None) -> JobStore:
    """The store a gateway or job uses: PostgreSQL when `database_url` names one, else the
    SQLite file in `jobs_dir`."""
    if database_url:
        if not database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"database_url {database_url.split('@')[-1]!r}: only postgresql:// is "
                             "supported (leave it empty for SQLite)")
        return PostgresJobStore(database_url)
    return SQLiteJobStore(Path(jobs_dir) / "jobs.sqlite3")
