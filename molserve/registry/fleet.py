"""Model versions shared by a fleet of gateways: each machine keeps its registry directory (what
its processes load), the object store holds every published version, and PostgreSQL holds which
versions exist (`registry_versions`) and what changed (`registry_events`).

- A version number is given out by the database (the next after every number any machine ever
  gave out for that endpoint), so two machines training the same endpoint never make two v3s.
- Publishing uploads the version's files (checksummed by its manifest) to
  `<storage>/registry/<endpoint>/v<N>/`, then records it as published: a reader never finds a
  published version whose files are not all there.
- Withdrawing (deleting) records it; every machine then tombstones its own copy.
- `sync()` brings a machine's directory up to the database: versions published elsewhere are
  downloaded (each file checked against the manifest's sha256, the version renamed into place
  whole), withdrawn ones deleted. Gateways run it every `MOLSERVE_SYNC_INTERVAL_S`.

Nothing here is on the prediction path: loading reads the local directory as before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from molserve.registry.store import Artifact, Registry

log = logging.getLogger("molserve.registry")

_VERSION_LOCK = "registry-version:"


class Fleet:
    def __init__(self, database_url: str, storage_url: str) -> None:
        from molserve.database import shared
        from molserve.storage import ObjectStore

        self.db = shared(database_url)
        self.store = ObjectStore(storage_url)
        self.seen = 0  # the last event this process applied

    @staticmethod
    def from_settings() -> Fleet | None:
        """The fleet the settings describe (database and object store), or None on one machine."""
        from molserve.config import FleetSettings

        settings = FleetSettings()
        if not (settings.database_url and settings.storage_url):
            return None
        key = (settings.database_url, settings.storage_url)
        if key not in _FLEETS:
            _FLEETS[key] = Fleet(*key)
        return _FLEETS[key]

    # Writing ------------------------------------------------------------------------------
    def reserve(self, endpoint: str, floor: int = 0) -> int:
        """The next version number of `endpoint`, fleet-wide (above `floor`, this machine's own
        highest), recorded as reserved before anything is written."""
        with self.db.write(lock=_VERSION_LOCK + endpoint) as db:
            row = db.execute("SELECT COALESCE(MAX(version), 0) AS n FROM registry_versions "
                             "WHERE endpoint = ?", (endpoint,)).fetchone()
            version = max(int(row["n"]), floor) + 1
            db.execute("INSERT INTO registry_versions (endpoint, version, reserved) VALUES (?, ?, ?)",
                       (endpoint, version, time.time()))
        return version

    def publish(self, artifact: Artifact) -> None:
        """Upload a version's files, then record it published (one event every machine sees)."""
        prefix = f"registry/{artifact.endpoint}/v{artifact.version}"
        for name in artifact.manifest.get("files", {}):
            self.store.put_file(artifact.path / name, f"{prefix}/{name}")
        manifest = json.dumps(artifact.manifest, sort_keys=True)
        self.store.put_bytes(manifest.encode(), f"{prefix}/manifest.json")
        now = time.time()
        with self.db.write() as db:
            db.execute("UPDATE registry_versions SET published = ?, kind = ?, manifest = ? "
                       "WHERE endpoint = ? AND version = ?",
                       (now, artifact.kind, manifest, artifact.endpoint, artifact.version))
            db.execute("INSERT INTO registry_events (endpoint, version, action, at) VALUES (?, ?, ?, ?)",
                       (artifact.endpoint, artifact.version, "published", now))

    def withdraw(self, endpoint: str, version: int) -> None:
        now = time.time()
        with self.db.write() as db:
            changed = db.execute("UPDATE registry_versions SET withdrawn = ? WHERE endpoint = ? AND "
                                 "version = ? AND withdrawn IS NULL", (now, endpoint, version)).rowcount
            if changed:
                db.execute("INSERT INTO registry_events (endpoint, version, action, at) "
                           "VALUES (?, ?, ?, ?)", (endpoint, version, "withdrawn", now))

    # Reading ------------------------------------------------------------------------------
    def sync(self, registry: Registry) -> list[tuple[str, int, str]]:
        """Apply every event since the last sync to `registry` (see the module docstring);
        returns what changed here: (endpoint, version, action)."""
        with self.db.read() as db:
            events = db.execute("SELECT seq, endpoint, version, action FROM registry_events "
                                "WHERE seq > ? ORDER BY seq", (self.seen,)).fetchall()
        changed = []
        for event in events:
            endpoint, version, action = event["endpoint"], int(event["version"]), event["action"]
            folder = registry.root / endpoint / f"v{version}"
            try:
                if action == "published" and not folder.exists():
                    self._pull(registry, endpoint, version)
                    changed.append((endpoint, version, action))
                elif action == "withdrawn" and (folder / "manifest.json").is_file():
                    registry.delete(endpoint, version, announce=False)
                    changed.append((endpoint, version, action))
            except (OSError, ValueError) as error:  # retried on the next sync
                log.warning("could not apply %s of %s v%d yet: %s", action, endpoint, version, error)
                break
            self.seen = int(event["seq"])
        return changed

    def _pull(self, registry: Registry, endpoint: str, version: int) -> None:
        """A published version's files into the local directory, checked, renamed into place."""
        from molserve.registry.store import sha256_file

        prefix = f"registry/{endpoint}/v{version}"
        with self.store.open(f"{prefix}/manifest.json") as handle:
            manifest = json.loads(handle.read())
        staging = registry.root / ".staging" / f"pull-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            for name, meta in manifest.get("files", {}).items():
                target = self.store.get_file(f"{prefix}/{name}", staging / name)
                if sha256_file(target) != meta["sha256"]:
                    raise ValueError(f"{endpoint} v{version}: {name} does not match its checksum")
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
            (registry.root / endpoint).mkdir(parents=True, exist_ok=True)
            os.rename(staging, registry.root / endpoint / f"v{version}")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def versions(self) -> list[dict[str, Any]]:
        with self.db.read() as db:
            return [dict(r) for r in db.execute(
                "SELECT endpoint, version, kind, published, withdrawn FROM registry_versions "
                "ORDER BY endpoint, version").fetchall()]


_FLEETS: dict[tuple[str, str], Fleet] = {}
