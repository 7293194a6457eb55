"""What every worker-tier model (transformer, graph) takes from its endpoint's fast model: the
curated rows and their train/valid/test split, so all tiers are scored on the same test
molecules, and the applicability-domain index over the training split."""

from __future__ import annotations

import csv
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import parse_smiles
from molserve.chem.similarity import SimilarityIndex
from molserve.registry.store import Artifact, ArtifactError, Registry


def fast_model(registry: Registry, endpoint: str) -> Artifact:
    fast = registry.latest(endpoint, kind="gbm")
    if fast is None:
        raise ArtifactError(
            f"no fast model for {endpoint!r}: train one first (`molserve train` or `bootstrap`) "
            "so both tiers share one curated dataset and split")
    fast.verify()
    return fast


def read_fast_rows(fast: Artifact) -> tuple[list[str], list[float], list[str]]:
    smiles, labels, split = [], [], []
    with open(fast.file("data.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            smiles.append(row["canonical_smiles"])
            labels.append(float(row["label"]))
            split.append(row["split"])
    return smiles, labels, split


def domain_answer(index: SimilarityIndex, train_smiles: list[str], bits: np.ndarray,
                  threshold: float) -> dict[str, Any]:
    """The applicability-domain part of a worker-tier answer for one molecule's on-bits."""
    similarity, nearest = index.nearest(bits)
    return {"max_similarity": round(similarity, 4), "in_domain": bool(similarity >= threshold),
            "threshold": round(threshold, 4),
            "nearest_training_smiles": train_smiles[nearest] if nearest >= 0 else None}


def domain_index_files(smiles: list[str], split: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The similarity index over training molecules and its threshold from validation ones."""
    from safetensors.numpy import save

    spec = FeatureSpec()
    side = np.array(split)
    tr, va = np.flatnonzero(side == "train"), np.flatnonzero(side == "valid")
    bits = featurize([parse_smiles(smiles[i]).mol for i in tr], spec).on_bits
    index = SimilarityIndex.build(bits, spec.n_bits)
    all_sims, _ = index.nearest_many(featurize([parse_smiles(smiles[i]).mol for i in va],
                                               spec).on_bits)
    files = {"ad_index.safetensors": save(index.arrays(), metadata={"n_bits": str(spec.n_bits)}),
             "train_smiles.txt": ("\n".join(smiles[i] for i in tr) + "\n").encode()}
    domain = {
        "method": "max Tanimoto similarity (Morgan radius 2, 2048 bits) to the training split",
        "threshold": float(np.quantile(all_sims, 0.05)) if len(all_sims) else 0.0,
        "threshold_rule": "5th percentile of validation molecules' max similarity",
    }
    return files, domain


def task_domain_files(smiles: list[str], split: list[str], sides: np.ndarray,
                      endpoints: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A multi-task model's applicability domain, one per task: each endpoint's similarity index
    holds only the molecules trained on with that endpoint's label (`sides[:, j] == "train"` and
    trained on at all, `split[i] == "train"`), and its threshold comes from that endpoint's own
    validation molecules. A query near another task's molecules only is out of this task's domain.

    Returns (files named `ad_index.<endpoint>.safetensors` and `train_smiles.<endpoint>.txt`,
    endpoint -> its applicability_domain section)."""
    files: dict[str, Any] = {}
    domains: dict[str, dict[str, Any]] = {}
    trained = np.array(split) == "train"
    for column, endpoint in enumerate(endpoints):
        own = np.where(trained & (sides[:, column] == "train"), "train",
                       np.where(sides[:, column] == "valid", "valid", ""))
        task_files, domain = domain_index_files(smiles, own.tolist())
        index_name, smiles_name = f"ad_index.{endpoint}.safetensors", f"train_smiles.{endpoint}.txt"
        files[index_name] = task_files["ad_index.safetensors"]
        files[smiles_name] = task_files["train_smiles.txt"]
        domains[endpoint] = {
            **domain,
            "method": f"max Tanimoto similarity (Morgan radius 2, 2048 bits) to the molecules "
                      f"trained on with a {endpoint} label",
            "threshold_rule": f"5th percentile of {endpoint}'s validation molecules' max similarity",
            "molecules": int((own == "train").sum()),
            "validation_molecules": int((own == "valid").sum()),
            "files": {"index": index_name, "smiles": smiles_name},
        }
    return files, domains
