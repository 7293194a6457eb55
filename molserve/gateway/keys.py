"""API keys: stored as SHA-256 hashes, compared in constant time, scoped, rate-limited.

A key looks like `ms_<id>_<secret>`: the id (128 random bits, never given out twice: revoked
ids stay listed, so a new key cannot inherit an old key's jobs and uploads) finds the record,
the hash of the whole key is compared with `hmac.compare_digest`. The keys file
(MOLSERVE_API_KEYS_FILE, JSON) holds ids, names, scopes, rate limits and hashes; no plaintext
key is ever stored or logged. The legacy MOLSERVE_API_KEY, when set, acts as one admin key.

The gateway rereads the keys file when it changes (checked at most every `recheck_s`, 0.5 s),
so a key revoked or changed with `molserve keys` stops or changes within a second, without a
restart. In a fleet (`MOLSERVE_DATABASE_URL`), the keys live in PostgreSQL instead, checked as
often by every gateway, and the rate limits are one token bucket per key in the database, so N
gateways together grant a key its rate, not N times it.

Scopes: `read` (GET routes), `predict` (predictions, uploads, screens), `train` (training
jobs), `admin` (everything, including deleting models).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCOPES = ("read", "predict", "train", "admin")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class KeyRecord:
    id: str
    name: str
    hash: str
    scopes: list[str]
    rate_per_minute: int = 600
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


class _Bucket:
    def __init__(self, per_minute: int) -> None:
        self.capacity = max(1, per_minute)
        self.tokens = float(self.capacity)
        self.rate = self.capacity / 60.0
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 when allowed, else seconds until a token is available."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class KeyStore:
    def __init__(self, path: Path | None = None, legacy_key: str | None = None, *,
                 recheck_s: float = 0.5, database_url: str | None = None) -> None:
        self.path = path
        self.database = None
        if database_url:
            from molserve.database import shared

            self.database = shared(database_url)
        self.records: dict[str, KeyRecord] = {}
        self.revoked: set[str] = set()  # ids of revoked keys, never given out again
        self._legacy_hash = digest(legacy_key) if legacy_key else None
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self.recheck_s = recheck_s
        self._checked = 0.0
        self._signature: tuple[int, int, int] | None = None
        self._load()

    def _load(self) -> None:
        """Read the keys file (or table) if it changed since the last read (a missing file: no
        keys)."""
        if self.database is not None:
            self._load_table()
            return
        if self.path is None:
            return
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            self.records, self.revoked, self._signature = {}, set(), None
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        data = json.loads(self.path.read_text())
        self.records = {item["id"]: KeyRecord(**item) for item in data.get("keys", [])}
        self.revoked = set(data.get("revoked", []))
        self._signature = signature

    def _load_table(self) -> None:
        with self.database.read() as db:
            marker = db.execute("SELECT COUNT(*) AS n, MAX(changed) AS at FROM api_keys").fetchone()
            signature = (int(marker["n"]), marker["at"], 0)
            if signature == self._signature:
                return
            rows = db.execute("SELECT * FROM api_keys").fetchall()
        self.records = {r["id"]: KeyRecord(id=r["id"], name=r["name"], hash=r["hash"],
                                           scopes=json.loads(r["scopes"]),
                                           rate_per_minute=r["rate_per_minute"], created=r["created"])
                        for r in rows if r["revoked"] is None}
        self.revoked = {r["id"] for r in rows if r["revoked"] is not None}
        self._signature = signature

    def refresh(self) -> None:
        """Pick up changes to the keys file; cheap enough to call on every request."""
        now = time.monotonic()
        if now - self._checked < self.recheck_s:
            return
        with self._lock:
            self._checked = now
            try:
                self._load()
            except (OSError, ValueError, TypeError, KeyError):
                # A file caught mid-edit by hand: keep the keys already loaded, read it next time.
                self._checked = now - self.recheck_s / 2

    @property
    def configured(self) -> bool:
        self.refresh()
        return bool(self.records) or self._legacy_hash is not None

    def verify(self, presented: str) -> KeyRecord | None:
        """The record of a valid key, else None (the same work whether or not the id exists)."""
        self.refresh()
        presented_hash = digest(presented)
        parts = presented.split("_")
        record = self.records.get(parts[1]) if len(parts) == 3 and parts[0] == "ms" else None
        expected = record.hash if record else "0" * 64
        if hmac.compare_digest(presented_hash, expected) and record is not None:
            return record
        if self._legacy_hash is not None and hmac.compare_digest(presented_hash, self._legacy_hash):
            return KeyRecord(id="legacy", name="MOLSERVE_API_KEY", hash=self._legacy_hash,
                             scopes=["admin"], rate_per_minute=6000)
        return None

    def throttle(self, record: KeyRecord) -> float:
        """0 when the key may call now, else seconds until it may."""
        if self.database is not None and record.id != "legacy":
            return self._throttle_shared(record)
        with self._lock:
            bucket = self._buckets.get(record.id)
            if bucket is None or bucket.capacity != record.rate_per_minute:
                bucket = self._buckets[record.id] = _Bucket(record.rate_per_minute)
            return bucket.take()

    def _throttle_shared(self, record: KeyRecord) -> float:
        """One token bucket per key in the database, taken from in one statement: every gateway
        of the fleet draws on the same tokens."""
        capacity = max(1, record.rate_per_minute)
        rate = capacity / 60.0
        now = time.time()
        with self.database.read() as db:
            row = db.execute(
                "INSERT INTO rate_buckets AS b (key_id, tokens, updated, allowed) VALUES (?, ?, ?, TRUE) "
                "ON CONFLICT (key_id) DO UPDATE SET "
                "allowed = LEAST(?, b.tokens + (? - b.updated) * ?) >= 1, "
                "tokens = LEAST(?, b.tokens + (? - b.updated) * ?) "
                "  - CASE WHEN LEAST(?, b.tokens + (? - b.updated) * ?) >= 1 THEN 1 ELSE 0 END, "
                "updated = ? RETURNING tokens, allowed",
                (record.id, capacity - 1, now, capacity, now, rate, capacity, now, rate, capacity, now,
                 rate, now)).fetchone()
        if row["allowed"]:
            return 0.0
        return (1 - row["tokens"]) / rate

    # Administration (CLI) ------------------------------------------------------------------
    def create(self, name: str, scopes: list[str], rate_per_minute: int = 600) -> tuple[str, KeyRecord]:
        unknown = [s for s in scopes if s not in SCOPES]
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {SCOPES}, not {scopes}")
        self._load()  # another process may have added or revoked keys since
        while True:  # 128 bits collide with no key ever issued; checked all the same
            key_id = secrets.token_hex(16)
            if key_id not in self.records and key_id not in self.revoked and key_id != "legacy":
                break
        key = f"ms_{key_id}_{secrets.token_urlsafe(24).replace('_', '-')}"
        record = KeyRecord(id=key_id, name=name, hash=digest(key), scopes=scopes,
                           rate_per_minute=rate_per_minute)
        if self.database is not None:  # the primary key refuses an id ever given out
            with self.database.read() as db:
                db.execute("INSERT INTO api_keys (id, name, hash, scopes, rate_per_minute, created, changed) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", (key_id, name, record.hash, json.dumps(scopes),
                                                            rate_per_minute, record.created, time.time()))
            self.records[key_id] = record
            return key, record
        self.records[key_id] = record
        self.save()
        return key, record

    def revoke(self, key_id: str) -> None:
        if key_id not in self.records:
            raise ValueError(f"no key with id {key_id!r}")
        del self.records[key_id]
        self.revoked.add(key_id)
        if self.database is not None:
            with self.database.read() as db:
                db.execute("UPDATE api_keys SET revoked = ?, changed = ? WHERE id = ?",
                           (time.time(), time.time(), key_id))
            return
        self.save()

    def save(self) -> None:
        if self.path is None:
            raise ValueError("no keys file configured (MOLSERVE_API_KEYS_FILE)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"keys": [asdict(r) for r in self.records.values()],
                                   "revoked": sorted(self.revoked)}, indent=2))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
