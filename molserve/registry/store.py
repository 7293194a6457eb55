"""The model registry: a directory of immutable, versioned artifacts.

Layout: `<root>/<endpoint>/v<N>/` holds `manifest.json` and the files it lists with their
sha256. A version is written in a staging directory and renamed into place in one step, so a
reader never sees a half-written artifact, and a crash leaves only staging debris (swept on the
next write). Loading verifies every checksum; a file that does not match is refused.

A version number names one model forever: deleting a version leaves its directory behind as a
tombstone (`deleted.json` only, no manifest), and a new version takes the number after the
highest ever allocated, so results and manifests that cite `v<N>` (a transformer's
`shared_with`) never come to point at another model.
Only safe formats are stored: JSON, CSV, ONNX, numpy arrays without pickle, safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from molserve.errors import InvalidInput, MolserveError
from molserve.registry.manifest import Manifest, evidence_mismatch, split_evidence

_VERSION_DIR = re.compile(r"^v(\d+)$")
_ENDPOINT_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
SAFE_SUFFIXES = {".json", ".csv", ".onnx", ".safetensors", ".txt"}
TOMBSTONE = "deleted.json"


class ArtifactError(MolserveError, RuntimeError):
    """An artifact that is missing, incomplete, unsafe or fails its checksum."""

    code = "artifact_error"


class EndpointNotOwned(MolserveError, PermissionError):
    """A key may publish versions only of its own endpoints."""

    code = "endpoint_not_owned"


def validate_endpoint_name(name: str) -> str:
    if not _ENDPOINT_NAME.match(name):
        raise InvalidInput(
            f"endpoint name {name!r} must be lowercase letters, digits, '_' or '-' "
            "(at most 64 characters, starting with a letter or digit)"
        )
    return name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    endpoint: str
    version: int
    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest.get("kind", "unknown")

    @cached_property
    def info(self) -> Manifest:
        """The manifest's shared fields, validated once (see `registry.manifest`)."""
        try:
            return Manifest.model_validate(self.manifest)
        except ValueError as error:
            raise ArtifactError(f"{self.endpoint} v{self.version}: malformed manifest: {error}") from None

    def file(self, name: str) -> Path:
        if name not in self.manifest.get("files", {}):
            raise ArtifactError(f"{self.endpoint} v{self.version} has no file {name!r}")
        return self.path / name

    def verify(self) -> None:
        """Check every listed file's sha256; raise ArtifactError naming the first mismatch."""
        for name, meta in self.manifest.get("files", {}).items():
            path = self.path / name
            if not path.is_file():
                raise ArtifactError(f"{self.endpoint} v{self.version}: {name} is missing")
            if sha256_file(path) != meta["sha256"]:
                raise ArtifactError(
                    f"{self.endpoint} v{self.version}: {name} does not match its checksum; "
                    "the artifact was modified after it was written and will not be loaded"
                )


class Registry:
    """`fleet`: the fleet this registry's versions are published to and synced from
    (`molserve.registry.fleet`): "auto" (the default) takes it from the settings when a database
    and an object store are configured, on the first write or delete; None: this directory alone."""

    def __init__(self, root: str | Path, fleet: Any = "auto") -> None:
        self.root = Path(root)
        self._fleet = fleet

    @property
    def fleet(self):
        if self._fleet == "auto":
            from molserve.registry.fleet import Fleet

            self._fleet = Fleet.from_settings()
        return self._fleet

    def endpoints(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and self.versions(p.name)
        )

    def versions(self, endpoint: str) -> list[Artifact]:
        folder = self.root / endpoint
        if not folder.is_dir():
            return []
        found = []
        for child in folder.iterdir():
            match = _VERSION_DIR.match(child.name)
            manifest_path = child / "manifest.json"
            if match and manifest_path.is_file():
                try:
                    manifest = json.loads(manifest_path.read_text())
                except (OSError, json.JSONDecodeError):
                    continue
                found.append(Artifact(endpoint, int(match.group(1)), child, manifest))
        return sorted(found, key=lambda a: a.version)

    def highest_allocated(self, endpoint: str) -> int:
        """The highest version number ever given out for `endpoint` (deleted ones included)."""
        folder = self.root / endpoint
        if not folder.is_dir():
            return 0
        numbers = [int(m.group(1)) for child in folder.iterdir()
                   if (m := _VERSION_DIR.match(child.name)) and child.is_dir()]
        return max(numbers, default=0)

    def deleted(self, endpoint: str) -> list[int]:
        """Versions of `endpoint` that were deleted (their numbers stay taken)."""
        folder = self.root / endpoint
        if not folder.is_dir():
            return []
        return sorted(int(m.group(1)) for child in folder.iterdir()
                      if (m := _VERSION_DIR.match(child.name)) and (child / TOMBSTONE).is_file())

    def all_artifacts(self) -> list[Artifact]:
        return [a for endpoint in self.endpoints() for a in self.versions(endpoint)]

    def owner(self, endpoint: str) -> str | None:
        """Who owns `endpoint`: the `owner` its oldest version records (`key:<id>` of the key
        that trained it over HTTP); None for one written without an owner (the operator's:
        `molserve train`, the bootstrap) or with no version at all (see `highest_allocated`)."""
        versions = self.versions(endpoint)
        return versions[0].manifest.get("owner") if versions else None

    def latest(self, endpoint: str, kind: str | None = None) -> Artifact | None:
        candidates = [a for a in self.versions(endpoint) if kind is None or a.kind == kind]
        return candidates[-1] if candidates else None

    def evidence_notes(self, artifact: Artifact) -> dict[str, str]:
        """endpoint -> why a worker-tier artifact's test metric cannot be compared with that
        endpoint's newest fast model (another dataset version or split); empty when it can."""
        if artifact.kind == "gbm":
            return {}
        notes = {}
        for endpoint in artifact.info.endpoints():
            fast = self.latest(endpoint, kind="gbm")
            if fast is None:
                continue
            section = artifact.manifest.get("tasks", {}).get(endpoint, artifact.manifest)
            why = evidence_mismatch(split_evidence(section.get("split")), fast.manifest)
            if why:
                notes[endpoint] = why
        return notes

    def get(self, endpoint: str, version: int) -> Artifact:
        for artifact in self.versions(endpoint):
            if artifact.version == version:
                return artifact
        raise ArtifactError(f"no version {version} of endpoint {endpoint!r}")

    def check_writable(self) -> None:
        """Raise OSError now if a new version could not be written (read-only or full disk),
        so a training job fails before its compute is spent, not after."""
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        probe = staging_root / f"probe-{uuid.uuid4().hex}"
        try:
            with open(probe, "wb") as handle:
                handle.write(b"\0" * 4096)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)

    def _check_publisher(self, endpoint: str, publisher: str | None) -> None:
        """A version written for a key that is not admin (`publish_as` in its manifest, set by
        training jobs) may go only to an endpoint that key owns, or to a new one."""
        if publisher is None:
            return
        if self.highest_allocated(endpoint) and self.owner(endpoint) != publisher:
            raise EndpointNotOwned(f"{endpoint!r} is not {publisher}'s to publish: it is bundled, "
                                   "another key's or the operator's; an admin key may publish it")

    def write(self, endpoint: str, files: dict[str, bytes | Path], manifest: dict) -> Artifact:
        """Store a new version atomically and return it. A manifest naming `publish_as` (a key
        that is not admin) is refused unless that key owns the endpoint or it is new; two such
        writers racing for a new name: the first to land owns it, the other is rolled back."""
        validate_endpoint_name(endpoint)
        publisher = manifest.get("publish_as")
        self._check_publisher(endpoint, publisher)
        for name in files:
            if "/" in name or name.startswith(".") or Path(name).suffix not in SAFE_SUFFIXES:
                raise ArtifactError(f"refusing to store {name!r}: not a safe artifact format")
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        self._sweep_staging(staging_root)
        staging = staging_root / uuid.uuid4().hex
        staging.mkdir()
        try:
            listed = {}
            for name, content in files.items():
                target = staging / name
                if isinstance(content, Path):
                    shutil.copyfile(content, target)
                else:
                    target.write_bytes(content)
                with open(target, "rb") as handle:
                    os.fsync(handle.fileno())
                listed[name] = {"sha256": sha256_file(target), "bytes": target.stat().st_size}
            (self.root / endpoint).mkdir(parents=True, exist_ok=True)
            fleet = self.fleet
            for _ in range(100):
                # After every number ever given out, deleted ones included: never reused (in a
                # fleet, by any machine: the database gives the number out).
                version = (fleet.reserve(endpoint, floor=self.highest_allocated(endpoint)) if fleet
                           else self.highest_allocated(endpoint) + 1)
                full = {
                    **manifest,
                    "endpoint": endpoint,
                    "version": version,
                    "files": listed,
                }
                full.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                manifest_path = staging / "manifest.json"
                manifest_path.write_text(json.dumps(full, indent=2, sort_keys=True))
                with open(manifest_path, "rb") as handle:
                    os.fsync(handle.fileno())
                try:
                    os.rename(staging, self.root / endpoint / f"v{version}")
                except OSError:
                    continue  # another writer took this number; take the next
                _fsync_dir(self.root / endpoint)
                if publisher is not None and self.owner(endpoint) != publisher:
                    self.delete(endpoint, version, announce=False)  # lost the race for a new name
                    raise EndpointNotOwned(f"{endpoint!r} was taken by another key meanwhile")
                artifact = Artifact(endpoint, version, self.root / endpoint / f"v{version}", full)
                if fleet is not None:  # the other machines download it on their next sync
                    fleet.publish(artifact)
                return artifact
            raise ArtifactError(f"could not allocate a version for {endpoint!r}")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def dependents(self, endpoint: str, version: int) -> list[str]:
        """Served local models (each endpoint's newest fast model) that learned on top of this
        version (molserve.models.on_base) and answer with it."""
        found = []
        for name in self.endpoints():
            latest = self.latest(name, kind="gbm")
            section = (latest.manifest.get("on_base") or {}) if latest is not None else {}
            if section.get("chosen") in ("base", "stack") and any(
                    b.get("endpoint") == endpoint and b.get("version") == version
                    for b in section.get("bases", [])):
                found.append(f"{name} v{latest.version}")
        return found

    def delete(self, endpoint: str, version: int, announce: bool = True, force: bool = False) -> None:
        """Remove a version's files, leaving a tombstone that keeps its number taken (in a fleet,
        and with `announce`, every other machine deletes its copy on its next sync). A version
        that a served local model learned on top of is kept unless `force` (that model then
        answers from its local part alone, saying why).

        The tombstone is written first (the directory is never empty, so no writer can rename a
        new version onto it), then the manifest moves out (the version disappears atomically for
        readers), then the remaining files go."""
        artifact = self.get(endpoint, version)
        readers = self.dependents(endpoint, version) if announce and not force else []
        if readers:
            from molserve.errors import Conflict

            raise Conflict(f"{endpoint} v{version} is the base of {', '.join(readers)}, which answer "
                           "with it; retrain those, or delete with force (they then answer from their "
                           "local part alone)", code="base_in_use", details={"dependents": readers})
        trash = self.root / ".staging" / f"deleted-{uuid.uuid4().hex}"
        trash.mkdir(parents=True)
        tombstone = {"endpoint": endpoint, "version": version,
                     "model_id": artifact.manifest.get("model_id"), "kind": artifact.kind,
                     "deleted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (artifact.path / TOMBSTONE).write_text(json.dumps(tombstone, indent=2, sort_keys=True))
        os.rename(artifact.path / "manifest.json", trash / "manifest.json")
        for child in artifact.path.iterdir():
            if child.name != TOMBSTONE:
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        shutil.rmtree(trash, ignore_errors=True)
        _fsync_dir(artifact.path)
        if announce and self.fleet is not None:
            self.fleet.withdraw(endpoint, version)

    @staticmethod
    def _sweep_staging(staging_root: Path, older_than_s: float = 3600.0) -> None:
        now = time.time()
        for child in staging_root.iterdir():
            try:
                if now - child.stat().st_mtime > older_than_s:
                    shutil.rmtree(child, ignore_errors=True)
            except OSError:
                pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
