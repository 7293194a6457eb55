"""Versioned datasets: curated rows with their splits, stored like model artifacts.

`<datasets root>/<name>/v<N>/` holds `data.csv` (canonical_smiles, label, replicate counts and
spread, year, and one column per split method) and a manifest (source, licence, checksum,
curation report, label distribution). Written atomically: a failed fetch leaves nothing.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from molserve.data.dataset import Dataset
from molserve.data.splits import random_split, scaffold_split, time_split
from molserve.registry.store import Artifact, ArtifactError, Registry

COLUMNS = ["canonical_smiles", "label", "n_measurements", "spread", "noisy", "year",
           "split_scaffold", "split_random", "split_time"]


def _split_labels(split: dict[str, list[int]], n: int) -> list[str]:
    labels = [""] * n
    for side, idx in split.items():
        for i in idx:
            labels[i] = side
    return labels


class DatasetStore:
    def __init__(self, root: str | Path) -> None:
        self.registry = Registry(root)

    @property
    def root(self) -> Path:
        return self.registry.root

    def save(self, name: str, rows: list[dict[str, Any]], *, task: str, units: str,
             description: str, source: str, licence: str, curation: dict, extra: dict | None = None,
             seed: int = 0) -> Artifact:
        if not rows:
            raise ValueError("no rows survived curation; nothing was written")
        from rdkit import Chem

        mols = [Chem.MolFromSmiles(r["canonical_smiles"]) for r in rows]
        scaffold = _split_labels(scaffold_split(mols, seed=seed), len(rows))
        random = _split_labels(random_split(len(rows), seed=seed), len(rows))
        timed = time_split([r.get("year") for r in rows])
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "split_scaffold": scaffold[i], "split_random": random[i],
                             "split_time": timed.labels[i] if timed else "",
                             "year": row.get("year") or "", "noisy": int(bool(row.get("noisy")))})
        labels = np.array([r["label"] for r in rows], dtype=float)
        distribution = ({"positive_fraction": float(labels.mean())} if task == "classification" else
                        {"mean": float(labels.mean()), "std": float(labels.std()),
                         "min": float(labels.min()), "p25": float(np.percentile(labels, 25)),
                         "median": float(np.median(labels)), "p75": float(np.percentile(labels, 75)),
                         "max": float(labels.max())})
        manifest = {
            "kind": "dataset", "name": name, "task": task, "units": units,
            "description": description, "source": source, "licence": licence, "rows": len(rows),
            "label_distribution": distribution, "curation": curation,
            "splits": ["scaffold", "random"] + (["time"] if timed else []), "split_seed": seed,
            **({"time_split": timed.report()} if timed else {}),
            **(extra or {}),
        }
        return self.registry.write(name, {"data.csv": buffer.getvalue().encode()}, manifest)

    def list(self) -> list[Artifact]:
        return self.registry.all_artifacts()

    def get(self, name: str, version: int | None = None) -> Artifact:
        artifact = self.registry.latest(name) if version is None else self.registry.get(name, version)
        if artifact is None:
            known = ", ".join(self.registry.endpoints()) or "none yet"
            raise ArtifactError(f"no dataset named {name!r} in {self.root} (known: {known})")
        artifact.verify()
        return artifact

    def load(self, name: str, split: str = "scaffold") -> tuple[Dataset, list[str]]:
        """The dataset and its split labels (train/valid/test per row) for `split`."""
        artifact = self.get(name)
        manifest = artifact.manifest
        if split not in manifest["splits"]:
            raise ValueError(f"dataset {name!r} has splits {manifest['splits']}, not {split!r}")
        smiles, labels, sides = [], [], []
        with open(artifact.file("data.csv"), newline="") as handle:
            for row in csv.DictReader(handle):
                smiles.append(row["canonical_smiles"])
                labels.append(float(row["label"]))
                sides.append(row[f"split_{split}"])
        dataset = Dataset(
            name=name, smiles=smiles, labels=labels, task=manifest["task"], units=manifest["units"],
            description=manifest["description"], source=f"{manifest['source']} (dataset {name} "
            f"v{artifact.version})", licence=manifest["licence"],
            checksum=manifest["files"]["data.csv"]["sha256"],
            extra={"dataset_version": artifact.version, "split_column": split},
        )
        return dataset, sides


def fetch_chembl_dataset(store: DatasetStore, target: str, *, standard_type: str = "IC50",
                         client=None, canonical_tautomer: bool = False, public: bool = False) -> Artifact:
    """Fetch a target's activities, curate them and save `chembl_<target>_p<type>`."""
    from molserve.data.chembl import LICENCE, ChemblClient, curate_activities, resolve_target

    chembl_id, short = resolve_target(target)
    client = client or ChemblClient()
    info = client.target(chembl_id)
    records = list(client.activities(chembl_id, standard_type=standard_type))
    if not records:
        raise ValueError(f"ChEMBL returned no {standard_type} binding activities for {chembl_id}")
    curated = curate_activities(records, canonical_tautomer=canonical_tautomer)
    kind = standard_type.lower()
    name = f"chembl_{short}_p{kind}"
    return store.save(
        name, curated.rows, task="regression", units=f"p{standard_type}",
        description=f"p{standard_type} against {info.get('pref_name', chembl_id)} "
                    f"({info.get('organism', 'unknown organism')}, {chembl_id}), ChEMBL binding assays",
        source=f"ChEMBL REST API, target {chembl_id}, standard_type {standard_type}, assay_type B",
        licence=LICENCE, curation=curated.report,
        extra={"target": {"chembl_id": chembl_id, "name": info.get("pref_name"),
                          "organism": info.get("organism"), "type": info.get("target_type")},
               "endpoint_suggestion": f"p{kind}_{short}", "requests": client.requests,
               "public": public},
    )
