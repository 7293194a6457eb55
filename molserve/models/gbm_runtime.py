"""Serve a fast-tier model from its registry artifact (numpy only; no LightGBM import).

`FastModel.predict` turns a feature matrix into per-molecule answers: value, uncertainty,
applicability domain and provenance.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molserve.answers import Answer, Domain, Provenance, Uncertainty
from molserve.chem.features import FeatureSpec
from molserve.chem.similarity import SimilarityIndex
from molserve.models.trees import TreeEnsemble
from molserve.registry.manifest import Manifest
from molserve.registry.store import Artifact, ArtifactError


def _round(value: float) -> float:
    """Four significant decimals, or four significant digits for values below 0.01."""
    return round(value, 4) if abs(value) >= 0.01 or value == 0 else float(f"{value:.4g}")


@dataclass(frozen=True)
class TargetTransform:
    """A target modelled on another scale: log10(y + offset), answered in y's units."""

    kind: str = "identity"
    offset: float = 0.0

    def forward(self, y: np.ndarray) -> np.ndarray:
        if self.kind == "log10":
            if np.any(y + self.offset <= 0):
                raise ValueError("a log10 target needs every label above -offset")
            return np.log10(y + self.offset)
        return y

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return 10.0 ** z - self.offset if self.kind == "log10" else z

    def to_dict(self) -> dict:
        return {"kind": self.kind, "offset": self.offset}


@dataclass
class FastModel:
    artifact: Artifact
    spec: FeatureSpec
    trees: TreeEnsemble
    index: SimilarityIndex
    train_smiles: list[str]
    load_seconds: float
    transform: TargetTransform = TargetTransform()
    _columns: dict = field(default_factory=dict, repr=False)

    @property
    def endpoint(self) -> str:
        return self.artifact.endpoint

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @property
    def info(self) -> Manifest:
        return self.artifact.info

    @property
    def task(self) -> str:
        return self.info.task

    @classmethod
    def load(cls, artifact: Artifact) -> FastModel:
        from safetensors.numpy import load_file

        started = time.perf_counter()
        if artifact.kind != "gbm":
            raise ArtifactError(f"{artifact.endpoint} v{artifact.version} is not a fast-tier model")
        artifact.verify()
        spec = FeatureSpec.from_dict(artifact.manifest["features"])
        trees = TreeEnsemble.from_arrays(load_file(str(artifact.file("trees.safetensors"))))
        index = SimilarityIndex.from_arrays(load_file(str(artifact.file("ad_index.safetensors"))),
                                            spec.n_bits)
        train_smiles = artifact.file("train_smiles.txt").read_text().split()
        transform = TargetTransform(**artifact.manifest.get("target_transform", {}))
        return cls(artifact, spec, trees, index, train_smiles, time.perf_counter() - started,
                   transform)

    def columns_from(self, matrix: np.ndarray, source: FeatureSpec) -> np.ndarray:
        """Select this model's columns from a matrix featurized with the wider `source` spec."""
        if source not in self._columns:  # the same few source specs, request after request
            self._columns[source] = self.spec.columns_in(source)
        keep = self._columns[source]
        return matrix if keep is None else matrix[:, keep]

    def raw_scores(self, features: np.ndarray) -> np.ndarray:
        return self.trees.raw_scores(features)

    def provenance(self) -> dict[str, Any]:
        return {
            "model_id": self.info.model_id,
            "version": self.artifact.version,
            "tier": "fast",
            "kind": "gbm-ensemble",
            "trained": self.info.created,
            "dataset": self.info.dataset.label() if self.info.dataset else None,
        }

    def predict(self, features: np.ndarray, on_bits: list[np.ndarray]) -> list[Answer]:
        """One answer per row of `features` (already in this model's column layout)."""
        raw = self.raw_scores(features).astype(np.float64)
        provenance = Provenance.from_json(self.provenance())
        ad = self.manifest["applicability_domain"]
        threshold = float(ad["threshold"])
        calibration = self.manifest["uncertainty"]
        units = self.manifest["units"]
        answers = []
        confidence = calibration.get("confidence")
        space = (f"std of the members in {self.transform.kind} space"
                 if self.transform.kind != "identity" else None)
        for row in range(raw.shape[0]):
            similarity, nearest = self.index.nearest(on_bits[row])
            domain = Domain(round(similarity, 4), bool(similarity >= threshold), round(threshold, 4),
                            self.train_smiles[nearest] if nearest >= 0 else None)
            members = raw[row]
            if self.task == "classification":
                probabilities = 1.0 / (1.0 + np.exp(-members))
                p = float(probabilities.mean())
                names = self.manifest.get("label_names") or ["negative", "positive"]
                answers.append(Answer(
                    provenance, round(p, 4), units, label=names[1] if p >= 0.5 else names[0],
                    uncertainty=Uncertainty(round(float(probabilities.std()), 4),
                                            (round(float(probabilities.min()), 4),
                                             round(float(probabilities.max()), 4)),
                                            calibration["method"]),
                    applicability_domain=domain))
                continue
            mean = float(members.mean())
            std = float(members.std())
            if calibration.get("scale") == "distance":
                half = calibration["quantile"] * (1.0 - similarity + calibration["gamma"])
            else:  # models trained before distance scaling: scaled by the members' spread
                half = calibration["quantile"] * (std + calibration["stabilizer"])
            low, value, high = (float(v) for v in self.transform.inverse(
                np.array([mean - half, mean, mean + half])))
            answers.append(Answer(
                provenance, _round(value), units,
                uncertainty=Uncertainty(round(std, 4), (_round(low), _round(high)),
                                        calibration["method"], confidence, space),
                applicability_domain=domain))
        return answers
