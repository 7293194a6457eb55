"""Reference sets on disk, beside the models: each set's molecules and, per endpoint, the values
the serving model gave them, tagged with that model's id and version.

Layout under the registry root (a hidden folder: it holds no endpoint):

    .references/<name>/set.json             name, description, source, licence, citation,
                                             counts, created, sha256 of molecules.csv
    .references/<name>/molecules.csv        canonical_smiles, one molecule a row
    .references/<name>/values/<key>.npy     the set's values for one endpoint and tier (float64,
                                             NaN where a molecule has none; no pickle)
    .references/<name>/values/<key>.json    endpoint, model_id, version, tier, method, counts,
                                             sha256 of the .npy and of the molecules it came from

A set appears under its final name in one rename; values are replaced file by file (written
beside, renamed over). Every read checks the sha256: a file that does not match is refused
(molecules) or treated as absent (values, which are recomputed).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from molserve.errors import Conflict, InvalidInput, NotFound
from molserve.registry.store import ArtifactError, sha256_file

_NAME = re.compile(r"^[a-z0-9][a-z0-9_\-]{0,63}$")
FOLDER = ".references"


def validate_reference_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(f"reference set name {name!r} must be lowercase letters, digits, '_' or '-' "
                           "(at most 64 characters, starting with a letter or digit)",
                           code="invalid_reference_name")
    return name


@dataclass(frozen=True)
class StoredValues:
    """One endpoint's values over a reference set and the model they came from."""

    values: np.ndarray  # one per molecule of the set, NaN where there is none
    meta: dict[str, Any]

    def came_from(self, model_id: str, version: int | str, tier: str) -> bool:
        return (self.meta.get("model_id"), str(self.meta.get("version")), self.meta.get("tier")) == \
            (model_id, str(version), tier)


class ReferenceStore:
    def __init__(self, registry_root: str | Path) -> None:
        self.root = Path(registry_root) / FOLDER

    # Sets ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if _NAME.match(p.name) and (p / "set.json").is_file())

    def exists(self, name: str) -> bool:
        return (self.root / name / "set.json").is_file()

    def info(self, name: str) -> dict[str, Any]:
        path = self.root / validate_reference_name(name) / "set.json"
        if not path.is_file():
            raise NotFound(f"no reference set {name!r}", code="unknown_reference")
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ArtifactError(f"reference set {name!r}: unreadable set.json ({error})") from None

    def molecules(self, name: str) -> list[str]:
        """The set's canonical SMILES, checked against the sha256 its set.json records."""
        info = self.info(name)
        path = self.root / name / "molecules.csv"
        if not path.is_file() or sha256_file(path) != info.get("molecules_sha256"):
            raise ArtifactError(f"reference set {name!r}: molecules.csv is missing or does not match "
                                "its checksum; remove the set and add it again")
        with open(path, newline="") as handle:
            return [row["canonical_smiles"] for row in csv.DictReader(handle)]

    def write_set(self, name: str, smiles: list[str], info: dict[str, Any], *,
                  replace: bool = False) -> dict[str, Any]:
        """Store a set (its values, if any, go with a replaced one); returns its set.json."""
        validate_reference_name(name)
        if self.exists(name) and not replace:
            raise Conflict(f"a reference set named {name!r} exists; remove it first or replace it",
                           code="reference_exists")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\n")
            writer.writerow(["canonical_smiles"])
            writer.writerows([s] for s in smiles)
            _write_synced(staging / "molecules.csv", buffer.getvalue().encode())
            full = {**info, "name": name, "molecules": len(smiles),
                    "molecules_sha256": sha256_file(staging / "molecules.csv"),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_synced(staging / "set.json", json.dumps(full, indent=2, sort_keys=True).encode())
            target = self.root / name
            if target.exists():
                trash = self.root / f".staging-{uuid.uuid4().hex}"
                os.rename(target, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(staging, target)
            return full
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def remove(self, name: str) -> None:
        validate_reference_name(name)
        if not self.exists(name):
            raise NotFound(f"no reference set {name!r}", code="unknown_reference")
        trash = self.root / f".staging-{uuid.uuid4().hex}"
        os.rename(self.root / name, trash)  # disappears at once for readers
        shutil.rmtree(trash, ignore_errors=True)

    # Values ----------------------------------------------------------------------------------
    @staticmethod
    def _key(endpoint: str, tier: str) -> str:
        return f"{endpoint}.{tier}"

    def read_values(self, name: str, endpoint: str, tier: str) -> StoredValues | None:
        """The stored values, or None when absent or failing their checksum."""
        folder = self.root / name / "values"
        key = self._key(endpoint, tier)
        try:
            meta = json.loads((folder / f"{key}.json").read_text())
            array_path = folder / f"{key}.npy"
            if sha256_file(array_path) != meta.get("sha256"):
                return None
            values = np.load(array_path, allow_pickle=False)
        except (OSError, ValueError):  # absent, unreadable or not an array: recompute
            return None
        return StoredValues(values, meta)

    def write_values(self, name: str, endpoint: str, tier: str, values: np.ndarray,
                     meta: dict[str, Any]) -> dict[str, Any]:
        folder = self.root / validate_reference_name(name) / "values"
        folder.mkdir(parents=True, exist_ok=True)
        key = self._key(endpoint, tier)
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(values, dtype=np.float64), allow_pickle=False)
        array_path = folder / f"{key}.npy"
        _replace(array_path, buffer.getvalue())
        full = {**meta, "endpoint": endpoint, "tier": tier, "sha256": sha256_file(array_path),
                "computed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _replace(folder / f"{key}.json", json.dumps(full, indent=2, sort_keys=True).encode())
        return full

    def stored(self, name: str) -> list[dict[str, Any]]:
        """The metadata of every endpoint's stored values (unverified: for listing)."""
        folder = self.root / name / "values"
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                continue
        return found


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _replace(path: Path, data: bytes) -> None:
    """Write beside and rename over: a reader sees the old file or the new one, never half."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        _write_synced(temporary, data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
