"""Serve a fast-tier model from its registry artifact (numpy only; no LightGBM import).

`FastModel.answers` turns raw member scores and domain similarities into per-molecule answers:
value, uncertainty, applicability domain and provenance. Evaluating the trees and searching the
training molecules is the fast tier's (`molserve.prediction.tiers`), for every endpoint at once.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molserve.answers import Answer, Domain, Provenance, Uncertainty
from molserve.chem.features import FeatureSpec
from molserve.chem.similarity import SimilarityIndex
from molserve.errors import InvalidInput
from molserve.models.on_base import Combination
from molserve.models.trees import Forest, TreeEnsemble
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


RUNTIME_FILES = ("trees.safetensors", "ad_index.safetensors", "train_smiles.txt")


def _verified(artifact: Artifact, name: str) -> bytes:
    """A file the runtime reads, read once and checked against its manifest checksum (files the
    runtime does not read, such as the training data, are not hashed at every start)."""
    data = artifact.file(name).read_bytes()
    if hashlib.sha256(data).hexdigest() != artifact.manifest["files"][name]["sha256"]:
        raise ArtifactError(
            f"{artifact.endpoint} v{artifact.version}: {name} does not match its checksum; "
            "the artifact was modified after it was written and will not be loaded")
    return data


# Up to this many rows, member statistics are computed with Python floats: for one molecule,
# numpy's per-call overhead on five numbers costs more than the arithmetic.
_FEW_ROWS = 8


def _member_stats(members: list[float], logistic: bool) -> tuple[float, float, float, float]:
    """Mean, standard deviation, min and max of the members (their probabilities when
    `logistic`), computed as numpy computes them for a short row (a sequential sum; the
    deviation from the mean squared, averaged, square-rooted)."""
    if logistic:
        members = [1.0 / (1.0 + math.exp(-m)) for m in members]
    n = len(members)
    total = 0.0
    for m in members:
        total += m
    mean = total / n
    spread = 0.0
    for m in members:
        spread += (m - mean) * (m - mean)
    return mean, math.sqrt(spread / n), min(members), max(members)


@dataclass(frozen=True)
class Reference:
    """A model's training molecules: their similarity index and SMILES (applicability domain)."""

    index: SimilarityIndex
    smiles: list[str]


@dataclass
class FastModel:
    """One endpoint's fast model. Its trees are a `Forest` whose columns follow `layout`: its
    own spec when read from the artifact, the shared layout once the fast tier serves it from a
    view of its stack (`molserve.prediction.stacked`), which may also hold it from the start
    (loaded without arrays). Its training molecules (`reference`) go into the stack's similarity
    index and are then released."""

    artifact: Artifact
    spec: FeatureSpec
    forest: Forest | None
    layout: FeatureSpec
    load_seconds: float
    transform: TargetTransform = TargetTransform()
    _reference: Reference | None = field(default=None, repr=False)
    _provenance: Provenance | None = field(default=None, repr=False)
    # A local model learned on top of bases (molserve.models.on_base): how it combines them.
    combination: Combination | None = None

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
    def load(cls, artifact: Artifact, arrays: bool = True) -> FastModel:
        """The model of `artifact`; without `arrays`, its manifest only, for a fast tier that
        takes the trees and training molecules from its stored stack (`forest` stays None
        until then)."""
        from safetensors.numpy import load as load_arrays

        started = time.perf_counter()
        if artifact.kind != "gbm":
            raise ArtifactError(f"{artifact.endpoint} v{artifact.version} is not a fast-tier model")
        spec = FeatureSpec.from_dict(artifact.manifest["features"])
        forest = None
        if arrays:
            trees = TreeEnsemble.from_arrays(load_arrays(_verified(artifact, "trees.safetensors")))
            forest = Forest.from_ensemble(artifact.endpoint, trees)
        model = cls(artifact, spec, forest, spec, 0.0,
                    TargetTransform(**artifact.manifest.get("target_transform", {})),
                    combination=Combination.from_manifest(artifact.manifest))
        if arrays:
            model._reference = model.reference()
        model.load_seconds = time.perf_counter() - started
        return model

    def load_arrays(self) -> None:
        """Read the trees and training molecules of a model loaded without them."""
        if self.forest is None:
            full = FastModel.load(self.artifact)
            self.forest, self.layout, self._reference = full.forest, full.layout, full._reference

    def checksums(self) -> tuple[str, ...]:
        """The stored checksums of the files the runtime reads: what a stack of models is keyed by."""
        files = self.manifest["files"]
        return tuple(files[name]["sha256"] for name in RUNTIME_FILES)

    def reference(self) -> Reference:
        """The training molecules (read again from the artifact once released)."""
        if self._reference is not None:
            return self._reference
        from safetensors.numpy import load as load_arrays

        index = SimilarityIndex.from_arrays(
            load_arrays(_verified(self.artifact, "ad_index.safetensors")), self.spec.n_bits)
        smiles = _verified(self.artifact, "train_smiles.txt").decode().split()
        if len(smiles) != index.size:
            raise ArtifactError(f"{self.endpoint} v{self.artifact.version}: {len(smiles)} training "
                                f"SMILES for {index.size} indexed molecules")
        return Reference(index, smiles)

    def release_reference(self) -> None:
        self._reference = None

    def reference_scores(self, features: np.ndarray) -> np.ndarray:
        """Raw scores from the stored trees evaluated level by level (the reference the served
        forest is checked against), `features` in this model's own layout."""
        from safetensors.numpy import load as load_arrays

        arrays = load_arrays(_verified(self.artifact, "trees.safetensors"))
        return TreeEnsemble.from_arrays(arrays).raw_scores(features)

    def provenance(self) -> dict[str, Any]:
        out = {
            "model_id": self.info.model_id,
            "version": self.artifact.version,
            "tier": "fast",
            "kind": "gbm-ensemble",
            "trained": self.info.created,
            "dataset": self.info.dataset.label() if self.info.dataset else None,
        }
        if self.combination is not None:  # what it learned on top of
            out["on_base"] = {"combination": self.combination.chosen,
                              "bases": [f"{b.endpoint} v{b.version}" for b in self.combination.bases]}
        return out

    def confidence_levels(self) -> list[float]:
        """The interval confidences this model has calibrated thresholds for (regression)."""
        calibration = self.manifest.get("uncertainty", {})
        if "quantiles" in calibration:
            return sorted(float(level) for level in calibration["quantiles"])
        return [float(calibration["confidence"])] if calibration.get("confidence") else []

    def _quantile(self, confidence: float | None,
                  calibration: dict[str, Any] | None = None) -> tuple[float, float | None]:
        """The stored conformal quantile for `confidence` (None: the model's default level)."""
        calibration = calibration or self.manifest["uncertainty"]
        if confidence is None:
            return calibration["quantile"], calibration.get("confidence")
        for level, quantile in calibration.get("quantiles", {}).items():
            if abs(float(level) - confidence) < 1e-9:
                return float(quantile), float(level)
        if calibration.get("confidence") is not None and abs(calibration["confidence"] - confidence) < 1e-9:
            return calibration["quantile"], calibration["confidence"]
        levels = ", ".join(f"{c:g}" for c in self.confidence_levels()) or "none"
        raise InvalidInput(f"{self.endpoint} v{self.artifact.version} has calibrated intervals at "
                           f"confidence {levels}, not {confidence:g}")

    def answers(self, raw: np.ndarray, similarity: np.ndarray,
                nearest: list[str | None], confidence: float | None = None,
                calibration: dict[str, Any] | None = None) -> list[Answer]:
        """One answer per row of `raw` (rows, members): value, uncertainty, applicability domain
        (max Tanimoto `similarity` to the training molecules, the `nearest` one's SMILES) and
        provenance. `confidence` picks the regression interval's level among the calibrated
        ones (`confidence_levels`; None: the model's default, 0.9); classifiers ignore it."""
        raw = np.asarray(raw, dtype=np.float64)
        if self._provenance is None:
            self._provenance = Provenance.from_json(self.provenance())
        provenance = self._provenance
        threshold = float(self.manifest["applicability_domain"]["threshold"])
        shown_threshold = round(threshold, 4)
        # `calibration`: another uncertainty section (a combined model answering from its
        # local part alone uses the local model's own).
        calibration = calibration or self.manifest["uncertainty"]
        units = self.manifest["units"]
        method = calibration["method"]
        domains = [Domain(round(s, 4), s >= threshold, shown_threshold, n)
                   for s, n in zip(similarity.tolist(), nearest, strict=True)]
        platt = calibration.get("probability_calibration") or {}
        if self.task == "classification" and platt.get("applied"):
            raw = platt["a"] * raw + platt["b"]  # each member's margin, calibrated
        if raw.shape[0] <= _FEW_ROWS:
            stats = [_member_stats(row, self.task == "classification") for row in raw.tolist()]
        else:
            members = 1.0 / (1.0 + np.exp(-raw)) if self.task == "classification" else raw
            stats = list(zip(members.mean(axis=1).tolist(), members.std(axis=1).tolist(),
                             members.min(axis=1).tolist(), members.max(axis=1).tolist(), strict=True))
        if self.task == "classification":
            names = self.manifest.get("label_names") or ["negative", "positive"]
            # Python's round (correctly rounded), not np.round, as the answers always used.
            return [Answer(provenance, round(p, 4), units, label=names[1] if p >= 0.5 else names[0],
                           uncertainty=Uncertainty(round(sd, 4), (round(lo, 4), round(hi, 4)), method),
                           applicability_domain=domain)
                    for (p, sd, lo, hi), domain in zip(stats, domains, strict=True)]
        mean = np.array([m for m, _, _, _ in stats])
        std = np.array([sd for _, sd, _, _ in stats])
        quantile, confidence = self._quantile(confidence, calibration)
        if calibration.get("scale") == "none":
            half = quantile
        elif calibration.get("scale") == "distance":  # models trained with distance scaling
            half = quantile * (1.0 - similarity + calibration["gamma"])
        else:  # models trained before distance scaling: scaled by the members' spread
            half = quantile * (std + calibration["stabilizer"])
        low, value, high = (self.transform.inverse(v).tolist() for v in (mean - half, mean, mean + half))
        space = (f"std of the members in {self.transform.kind} space"
                 if self.transform.kind != "identity" else None)
        return [Answer(provenance, _round(v), units,
                       uncertainty=Uncertainty(round(sd, 4), (_round(lo), _round(hi)), method,
                                               confidence, space),
                       applicability_domain=domain)
                for v, lo, hi, sd, domain in zip(value, low, high, std.tolist(), domains, strict=True)]
