"""Serve a registered transformer: torch (CPU or CUDA) or onnxruntime (fp32 or int8)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.chem.similarity import SimilarityIndex
from molserve.registry.store import Artifact, ArtifactError

BACKENDS = ("torch", "onnx", "onnx-int8")


@dataclass
class TransformerModel:
    artifact: Artifact
    backend: str
    device: str
    tokenizer: Any
    runner: Any
    index: SimilarityIndex
    train_smiles: list[str]
    load_seconds: float
    max_length: int = 256

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @property
    def endpoint(self) -> str:
        return self.artifact.endpoint

    @classmethod
    def load(cls, artifact: Artifact, backend: str = "torch", device: str | None = None,
             threads: int | None = None) -> TransformerModel:
        from safetensors.numpy import load_file
        from transformers import AutoTokenizer

        from molserve.models.transformer.modeling import pick_device

        started = time.perf_counter()
        if artifact.kind != "transformer":
            raise ArtifactError(f"{artifact.endpoint} v{artifact.version} is not a transformer")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        artifact.verify()
        tokenizer = AutoTokenizer.from_pretrained(artifact.path)
        device = pick_device(device) if backend == "torch" else "cpu"
        if backend == "torch":
            import torch
            from transformers import AutoModelForSequenceClassification

            if threads:
                torch.set_num_threads(threads)
            runner = AutoModelForSequenceClassification.from_pretrained(
                artifact.path, use_safetensors=True).to(device).eval()
        else:
            import onnxruntime as ort

            name = "model.onnx" if backend == "onnx" else "model.int8.onnx"
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            runner = ort.InferenceSession(str(artifact.file(name)), options,
                                          providers=["CPUExecutionProvider"])
        index = SimilarityIndex.from_arrays(load_file(str(artifact.file("ad_index.safetensors"))), 2048)
        train_smiles = artifact.file("train_smiles.txt").read_text().split()
        max_length = int(artifact.manifest["model"].get("max_length", 256))
        return cls(artifact, backend, device, tokenizer, runner, index, train_smiles,
                   time.perf_counter() - started, max_length)

    def outputs(self, smiles: list[str]) -> np.ndarray:
        """Regression values (in label units) or class-1 probabilities, one per SMILES."""
        encoded = self.tokenizer(smiles, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="np")
        ids = encoded["input_ids"].astype(np.int64)
        mask = encoded["attention_mask"].astype(np.int64)
        if self.backend == "torch":
            import torch

            with torch.inference_mode():
                logits = self.runner(input_ids=torch.from_numpy(ids).to(self.device),
                                     attention_mask=torch.from_numpy(mask).to(self.device)
                                     ).logits.float().cpu().numpy()
        else:
            logits = self.runner.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        if logits.shape[-1] == 1:
            model = self.manifest["model"]
            return logits[:, 0].astype(np.float64) * model["label_scale"] + model["label_mean"]
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (shifted[:, 1] / shifted.sum(axis=1)).astype(np.float64)

    def provenance(self) -> dict[str, Any]:
        return {"model_id": self.manifest["model_id"], "version": self.artifact.version,
                "tier": "transformer", "kind": f"roberta ({self.backend}, {self.device})",
                "trained": self.manifest.get("created")}

    def predict(self, smiles: list[str]) -> list[dict[str, Any]]:
        """Answers for canonical SMILES, in order; an unparsable one gets an `error` answer."""
        parsed = [try_parse(s) for s in smiles]
        valid = [i for i, p in enumerate(parsed) if not isinstance(p, InvalidSmiles)]
        values = self.outputs([smiles[i] for i in valid]) if valid else np.zeros(0)
        bits = featurize([parsed[i].mol for i in valid], FeatureSpec()).on_bits if valid else []
        threshold = float(self.manifest["applicability_domain"]["threshold"])
        calibration = self.manifest["uncertainty"]
        units = self.manifest["units"]
        provenance = self.provenance()
        answers: list[dict[str, Any]] = [
            {"error": p.reason, "provenance": provenance} if isinstance(p, InvalidSmiles) else {}
            for p in parsed
        ]
        for slot, row in enumerate(valid):
            similarity, nearest = self.index.nearest(bits[slot])
            value = float(values[slot])
            answer: dict[str, Any] = {"value": round(value, 4), "units": units, "kind": "predicted"}
            if self.manifest["task"] == "classification":
                names = self.manifest.get("label_names") or ["negative", "positive"]
                answer["label"] = names[1] if value >= 0.5 else names[0]
                answer["uncertainty"] = {"interval": [round(value, 4), round(value, 4)],
                                         "method": calibration["method"]}
            else:
                q = calibration["quantile"]
                answer["uncertainty"] = {"interval": [round(value - q, 4), round(value + q, 4)],
                                         "confidence": calibration["confidence"],
                                         "method": calibration["method"]}
            answer["applicability_domain"] = {
                "max_similarity": round(similarity, 4), "in_domain": bool(similarity >= threshold),
                "threshold": round(threshold, 4),
                "nearest_training_smiles": self.train_smiles[nearest] if nearest >= 0 else None,
            }
            answer["provenance"] = provenance
            answers[row] = answer
        return answers
