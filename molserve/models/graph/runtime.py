"""Serve a registered graph model: rebuild its D-MPNN ensemble from `spec.json` and safetensors
weights (no pickle), answer with the ensemble mean, a calibrated interval from the members'
spread, and the applicability domain over its training molecules."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.chem.similarity import SimilarityIndex
from molserve.models.heldout import domain_answer
from molserve.registry.manifest import TaskView
from molserve.registry.store import Artifact, ArtifactError, Registry


def graph_artifacts(registry: Registry) -> dict[str, Artifact]:
    """endpoint -> its newest graph model."""
    chosen = {}
    for name in registry.endpoints():
        artifact = registry.latest(name, kind="graph")
        if artifact is not None:
            chosen[name] = artifact
    return chosen


@dataclass
class GraphModel:
    artifact: Artifact
    spec: Any
    members: list
    knots: np.ndarray | None
    index: SimilarityIndex
    train_smiles: list[str]
    device: str
    load_seconds: float
    backend: str = "torch"

    @classmethod
    def load(cls, artifact: Artifact, *, device: str | None = None,
             threads: int | None = None) -> GraphModel:
        from safetensors.numpy import load_file

        from molserve.models.graph.modeling import GraphSpec, load_weights
        from molserve.models.transformer.modeling import pick_device

        started = time.perf_counter()
        if artifact.kind != "graph":
            raise ArtifactError(f"{artifact.endpoint} v{artifact.version} is not a graph model")
        artifact.verify()
        if threads:
            import torch

            torch.set_num_threads(threads)
        device = pick_device(device)
        spec = GraphSpec.from_dict(json.loads(artifact.file("spec.json").read_text()))
        size = int(artifact.manifest["model"]["ensemble_size"])
        members = [load_weights(spec, load_file(str(artifact.file(f"member{i}.safetensors"))), device)
                   for i in range(size)]
        knots = None
        if spec.descriptors:
            knots = load_file(str(artifact.file("descriptor_cdf.safetensors")))["knots"]
        index = SimilarityIndex.from_arrays(load_file(str(artifact.file("ad_index.safetensors"))), 2048)
        train_smiles = artifact.file("train_smiles.txt").read_text().split()
        return cls(artifact, spec, members, knots, index, train_smiles, device,
                   time.perf_counter() - started)

    @property
    def endpoint(self) -> str:
        return self.artifact.endpoint

    @property
    def endpoints(self) -> list[str]:
        return [self.artifact.endpoint]

    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest

    @property
    def info(self) -> TaskView:
        return self.artifact.info.view(self.endpoint)

    def for_endpoint(self, endpoint: str) -> GraphModel:
        if endpoint != self.endpoint:
            raise ArtifactError(f"{self.endpoint} v{self.artifact.version} does not serve {endpoint!r}")
        return self

    def provenance(self) -> dict[str, Any]:
        return {"model_id": self.manifest["model_id"], "version": self.artifact.version,
                "tier": "graph",
                "kind": f"d-mpnn ensemble of {len(self.members)} (torch, {self.device})",
                "trained": self.artifact.info.created}

    def outputs(self, mols: list) -> np.ndarray:
        """(members, n): regression values in label units, or class-1 probabilities."""
        from molserve.models.graph.modeling import apply_cdf, descriptor_matrix, predict

        x = apply_cdf(descriptor_matrix(mols), self.knots) if self.knots is not None else None
        return predict(self.members, mols, x, device=self.device)

    def predict(self, smiles: list[str], endpoint: str | None = None) -> list[dict[str, Any]]:
        """Answers for canonical SMILES, in order; an unparsable one gets an `error` answer."""
        from molserve.models.graph.pipeline import interval, target_transform_of

        transform = target_transform_of(self.artifact)
        parsed = [try_parse(s) for s in smiles]
        valid = [i for i, p in enumerate(parsed) if not isinstance(p, InvalidSmiles)]
        mols = [parsed[i].mol for i in valid]
        outputs = self.outputs(mols) if valid else np.zeros((len(self.members), 0))
        mean_z, spread = outputs.mean(axis=0), outputs.std(axis=0)
        bits = featurize(mols, FeatureSpec()).on_bits if valid else []
        manifest = self.manifest
        threshold = float(manifest["applicability_domain"]["threshold"])
        calibration = manifest["uncertainty"]
        info = self.info
        provenance = self.provenance()
        answers: list[dict[str, Any]] = [
            {"error": p.reason, "provenance": provenance} if isinstance(p, InvalidSmiles) else {}
            for p in parsed
        ]
        mean = mean_z
        if info.task == "regression" and valid:
            low, high = (transform.inverse(b) for b in interval(calibration, mean_z, spread))
            mean = transform.inverse(mean_z)
        for slot, row in enumerate(valid):
            value = float(mean[slot])
            answer: dict[str, Any] = {"value": round(value, 4), "units": info.units,
                                      "kind": "predicted"}
            if info.task == "classification":
                names = info.label_names or ["negative", "positive"]
                answer["label"] = names[1] if value >= 0.5 else names[0]
                members = outputs[:, slot]
                answer["uncertainty"] = {"std": round(float(spread[slot]), 4),
                                         "interval": [round(float(members.min()), 4),
                                                      round(float(members.max()), 4)],
                                         "method": calibration["method"]}
            else:
                answer["uncertainty"] = {"std": round(float(spread[slot]), 4),
                                         "interval": [round(float(low[slot]), 4),
                                                      round(float(high[slot]), 4)],
                                         "confidence": calibration["confidence"],
                                         "method": calibration["method"],
                                         "space": calibration.get("space", "value")}
            answer["applicability_domain"] = domain_answer(self.index, self.train_smiles,
                                                           bits[slot], threshold)
            answer["provenance"] = provenance
            answers[row] = answer
        return answers
