"""Serve a registered transformer: torch (CPU or CUDA) or onnxruntime (fp32 or int8).

An artifact serves one endpoint, or several when it is multi-task (its manifest's `tasks`);
`EndpointModel` is one endpoint's view of a loaded model, and `transformer_artifacts` picks, per
endpoint, the registered transformer that scored best on that endpoint's test split."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import InvalidSmiles, try_parse
from molserve.chem.similarity import SimilarityIndex
from molserve.models.heldout import domain_answer
from molserve.registry.manifest import TaskView
from molserve.registry.store import Artifact, ArtifactError, Registry

BACKENDS = ("torch", "onnx", "onnx-int8")
TOO_LONG = "too_long_for_model"
NO_INTERVAL = ("none: one fine-tuned model's class probability, without an ensemble or a calibrated "
               "interval")  # the error code of a molecule beyond the model's token limit


def endpoint_manifest(artifact: Artifact, endpoint: str) -> dict[str, Any]:
    """What the artifact says about one endpoint, in the single-task manifest's shape."""
    manifest = artifact.manifest
    if manifest.get("task") != "multitask":
        return manifest
    if endpoint not in manifest.get("tasks", {}):
        raise ArtifactError(f"{artifact.endpoint} v{artifact.version} does not serve {endpoint!r}")
    return {**manifest, **manifest["tasks"][endpoint]}


def served_section(manifest: dict[str, Any], backend: str) -> dict[str, Any]:
    """What the manifest records for the values `backend` serves (metrics, uncertainty), or {}
    for artifacts evaluated with torch only."""
    return (manifest.get("by_backend") or {}).get(backend) or {}


def heads_of(manifest: dict[str, Any], endpoint: str) -> list[dict[str, Any]]:
    """The head description of a model; artifacts written before heads were recorded are one
    output (regression) or a two-logit softmax (classification)."""
    model = manifest["model"]
    if "heads" in model:
        return model["heads"]
    if manifest["task"] == "classification":
        return [{"endpoint": endpoint, "task": "classification", "output": 0, "activation": "softmax"}]
    return [{"endpoint": endpoint, "task": "regression", "output": 0, "activation": "identity",
             "label_mean": model["label_mean"], "label_scale": model["label_scale"]}]


def transformer_artifacts(registry: Registry) -> dict[str, Artifact]:
    """endpoint -> the newest-per-name transformer that did best on that endpoint's test split.

    Every candidate for an endpoint was tested on the same split (its fast model's), so the
    comparison is fair; ties go to the single-task model, then to the newer one.
    """
    candidates: dict[str, list[tuple[float, int, str, Artifact]]] = {}
    for name in registry.endpoints():
        artifact = registry.latest(name, kind="transformer")
        if artifact is None:
            continue
        info = artifact.info
        for endpoint in info.endpoints():
            single = int(endpoint == artifact.endpoint)
            candidates.setdefault(endpoint, []).append(
                (info.test_score(endpoint), single, info.created or "", artifact))
    return {e: max(c, key=lambda item: item[:3])[3] for e, c in candidates.items()}


def load_task_domains(artifact: Artifact) -> dict[str, tuple[SimilarityIndex, list[str]]]:
    """endpoint -> (index, training SMILES) for each task of a multi-task artifact that stores its
    own domain (`tasks.<endpoint>.applicability_domain.files`)."""
    from safetensors.numpy import load_file

    found = {}
    for endpoint, task in artifact.manifest.get("tasks", {}).items():
        files = task.get("applicability_domain", {}).get("files")
        if not files:
            continue
        index = SimilarityIndex.from_arrays(load_file(str(artifact.file(files["index"]))), 2048)
        smiles = artifact.file(files["smiles"]).read_text().split()
        found[endpoint] = (index, smiles)
    return found


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
    heads: list[dict[str, Any]] = field(default_factory=list)
    # Multi-task models: each endpoint's own training molecules (older artifacts: none, and the
    # shared index over every task's molecules is used).
    task_domains: dict[str, tuple[SimilarityIndex, list[str]]] = field(default_factory=dict)

    @property
    def manifest(self) -> dict:
        return self.artifact.manifest

    @property
    def endpoint(self) -> str:
        return self.artifact.endpoint

    @property
    def endpoints(self) -> list[str]:
        return self.artifact.info.endpoints()

    def for_endpoint(self, endpoint: str) -> EndpointModel:
        return EndpointModel(self, endpoint)

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
        heads = heads_of(artifact.manifest, artifact.endpoint)
        return cls(artifact, backend, device, tokenizer, runner, index, train_smiles,
                   time.perf_counter() - started, max_length, heads, load_task_domains(artifact))

    def domain_of(self, endpoint: str) -> tuple[SimilarityIndex, list[str]]:
        """The similarity index and training SMILES that decide `endpoint`'s domain."""
        return self.task_domains.get(endpoint, (self.index, self.train_smiles))

    def token_counts(self, smiles: list[str]) -> list[int]:
        """Tokens each SMILES takes with the special tokens (what max_length bounds)."""
        if not smiles:
            return []
        return [len(ids) for ids in self.tokenizer(smiles, truncation=False)["input_ids"]]

    def outputs(self, smiles: list[str]) -> np.ndarray:
        """(n, endpoints): regression values in label units or class-1 probabilities."""
        from molserve.models.transformer.modeling import decode_logits

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
        return decode_logits(logits, self.heads)

    def provenance(self) -> dict[str, Any]:
        kind = "roberta multi-task" if len(self.heads) > 1 else "roberta"
        return {"model_id": self.manifest["model_id"], "version": self.artifact.version,
                "tier": "transformer", "kind": f"{kind} ({self.backend}, {self.device})",
                "trained": self.manifest.get("created")}

    def predict(self, smiles: list[str], endpoint: str | None = None) -> list[dict[str, Any]]:
        """Answers for canonical SMILES, in order, for `endpoint` (default: the artifact's
        own); an unparsable one gets an `error` answer."""
        endpoint = endpoint or self.endpoints[0]
        manifest = endpoint_manifest(self.artifact, endpoint)
        column = next(i for i, h in enumerate(self.heads) if h["endpoint"] == endpoint) \
            if len(self.heads) > 1 else 0
        parsed = [try_parse(s) for s in smiles]
        readable = [i for i, p in enumerate(parsed) if not isinstance(p, InvalidSmiles)]
        # Never predict from a prefix: a molecule with more tokens than the model reads is
        # answered with an error whose code sends it to another tier.
        tokens = self.token_counts([smiles[i] for i in readable])
        too_long = {i: n for i, n in zip(readable, tokens, strict=True) if n > self.max_length}
        valid = [i for i in readable if i not in too_long]
        values = self.outputs([smiles[i] for i in valid])[:, column] if valid else np.zeros(0)
        bits = featurize([parsed[i].mol for i in valid], FeatureSpec()).on_bits if valid else []
        threshold = float(manifest["applicability_domain"]["threshold"])
        calibration = served_section(manifest, self.backend).get("uncertainty") or manifest["uncertainty"]
        units = manifest["units"]
        provenance = self.provenance()
        answers: list[dict[str, Any]] = [
            {"error": p.reason, "provenance": provenance} if isinstance(p, InvalidSmiles) else {}
            for p in parsed
        ]
        for row, count in too_long.items():
            answers[row] = {"error": f"{count} tokens; this model reads at most {self.max_length} "
                                     "and does not predict from a truncated SMILES",
                            "provenance": {**provenance, "error_code": TOO_LONG}}
        for slot, row in enumerate(valid):
            value = float(values[slot])
            answer: dict[str, Any] = {"value": round(value, 4), "units": units, "kind": "predicted"}
            if manifest["task"] == "classification":
                names = manifest.get("label_names") or ["negative", "positive"]
                answer["label"] = names[1] if value >= 0.5 else names[0]
                # One fine-tuned model's probability: no interval is claimed ([p, p] would read as
                # certainty). The provenance says so.
            else:
                q = calibration["quantile"]
                answer["uncertainty"] = {"interval": [round(value - q, 4), round(value + q, 4)],
                                         "confidence": calibration["confidence"],
                                         "method": calibration["method"]}
            answer["applicability_domain"] = domain_answer(*self.domain_of(endpoint),
                                                           bits[slot], threshold)
            answer["provenance"] = ({**provenance, "uncertainty": NO_INTERVAL}
                                    if manifest["task"] == "classification" else provenance)
            answers[row] = answer
        return answers


@dataclass
class EndpointModel:
    """One endpoint's view of a loaded transformer (a multi-task model has several)."""

    model: TransformerModel
    endpoint: str

    @property
    def manifest(self) -> dict[str, Any]:
        return endpoint_manifest(self.model.artifact, self.endpoint)

    @property
    def info(self) -> TaskView:
        """The typed view of what the model says about this endpoint."""
        return self.model.artifact.info.view(self.endpoint)

    @property
    def backend(self) -> str:
        return self.model.backend

    @property
    def device(self) -> str:
        return self.model.device

    @property
    def load_seconds(self) -> float:
        return self.model.load_seconds

    def provenance(self) -> dict[str, Any]:
        return self.model.provenance()

    def served_metrics(self) -> dict[str, Any]:
        """Test metrics of the values this backend serves (torch's when no other was recorded):
        what routing compares."""
        return served_section(self.manifest, self.backend).get("metrics") or self.info.metrics.test

    def predict(self, smiles: list[str]) -> list[dict[str, Any]]:
        return self.model.predict(smiles, self.endpoint)
