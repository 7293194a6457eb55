"""Fine-tune a transformer for an endpoint on the same curated data and split as its fast
model, evaluate it, export ONNX, and register it as kind `transformer`."""

from __future__ import annotations

import csv
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec, featurize
from molserve.chem.molecules import parse_smiles
from molserve.chem.similarity import SimilarityIndex
from molserve.models import metrics as M
from molserve.models.transformer.modeling import FineTuneData, Progress, export_onnx, finetune, predict_raw
from molserve.registry.store import Artifact, ArtifactError, Registry

CONFIDENCE = 0.9


def data_from_fast_model(registry: Registry, endpoint: str) -> tuple[FineTuneData, Artifact]:
    """The curated rows and split recorded by the endpoint's newest fast model."""
    fast = registry.latest(endpoint, kind="gbm")
    if fast is None:
        raise ArtifactError(
            f"no fast model for {endpoint!r}: train one first (`molserve train` or `bootstrap`) "
            "so both tiers share one curated dataset and split")
    fast.verify()
    smiles, labels, split = [], [], []
    with open(fast.file("data.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            smiles.append(row["canonical_smiles"])
            labels.append(float(row["label"]))
            split.append(row["split"])
    return FineTuneData(smiles, np.array(labels), split, fast.manifest["task"]), fast


def finetune_endpoint(
    registry: Registry,
    endpoint: str,
    *,
    base: str,
    epochs: int = 30,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    patience: int = 5,
    export: bool = True,
    device: str | None = None,
    seed: int = 0,
    extra_manifest: dict | None = None,
    progress: Progress | None = None,
) -> Artifact:
    data, fast = data_from_fast_model(registry, endpoint)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        summary = finetune(data, base, model_dir, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, patience=patience, device=device,
                           seed=seed, progress=progress)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model.to(summary["device"])
        raw = predict_raw(model, tokenizer, data.smiles, summary["device"],
                          max_length=summary["max_length"])
        y = data.labels
        side = np.array(data.split)
        va, te, tr = (np.flatnonzero(side == s) for s in ("valid", "test", "train"))
        calibration: dict[str, Any]
        if data.task == "regression":
            values = raw * summary["label_scale"] + summary["label_mean"]
            residual = np.abs(y[va] - values[va])
            level = min(1.0, math.ceil((len(va) + 1) * CONFIDENCE) / len(va))
            q = float(np.quantile(residual, level))
            test = M.regression_metrics(y[te], values[te])
            test["interval_coverage"] = float(np.mean(np.abs(y[te] - values[te]) <= q))
            test["interval_mean_width"] = 2 * q
            calibration = {"method": "split conformal on the validation split (constant width)",
                           "quantile": q, "confidence": CONFIDENCE}
            metrics = {"test": test, "valid": M.regression_metrics(y[va], values[va]), "primary": "rmse"}
            parity = {"measured": y[te].round(4).tolist(), "predicted": values[te].round(4).tolist()}
        else:
            test = M.classification_metrics(y[te], raw[te])
            calibration = {"method": "softmax probability", "confidence": CONFIDENCE}
            metrics = {"test": test, "valid": M.classification_metrics(y[va], raw[va]), "primary": "roc_auc"}
            parity = {"roc": M.roc_curve(y[te], raw[te])}
        metrics["fast_model_test"] = fast.manifest["metrics"]["test"]
        files: dict[str, Any] = {p.name: p for p in model_dir.iterdir() if p.is_file()}
        if export:
            files["model.onnx"] = export_onnx(model_dir, Path(tmp) / "model.onnx")
            files["model.int8.onnx"] = export_onnx(model_dir, Path(tmp) / "model.onnx", quantize=True)
        spec = FeatureSpec()
        train_mols = [parse_smiles(data.smiles[i]).mol for i in tr]
        bits = featurize(train_mols, spec).on_bits
        index = SimilarityIndex.build(bits, spec.n_bits)
        all_sims, _ = index.nearest_many(featurize([parse_smiles(data.smiles[i]).mol for i in va],
                                                   spec).on_bits)
        from safetensors.numpy import save

        files["ad_index.safetensors"] = save(index.arrays(), metadata={"n_bits": str(spec.n_bits)})
        files["train_smiles.txt"] = ("\n".join(data.smiles[i] for i in tr) + "\n").encode()
        # save_pretrained writes only JSON and safetensors here; anything else is not stored.
        allowed = {".json", ".safetensors", ".onnx", ".txt"}
        for name in [n for n in files if Path(n).suffix not in allowed]:
            files.pop(name)
        manifest = {
            "kind": "transformer",
            "tier": "transformer",
            "model_id": f"{endpoint}/transformer",
            "task": data.task,
            "units": fast.manifest["units"],
            "description": fast.manifest["description"],
            "label_names": fast.manifest.get("label_names"),
            "dataset": fast.manifest["dataset"],
            "split": {**fast.manifest["split"], "shared_with": f"{endpoint} v{fast.version} (gbm)"},
            "features": spec.to_dict(),
            "model": {"architecture": "RoBERTa sequence regression/classification",
                      "base": base, **{k: v for k, v in summary.items() if k != "history"},
                      "history": summary["history"]},
            "uncertainty": calibration,
            "applicability_domain": {
                "method": "max Tanimoto similarity (Morgan radius 2, 2048 bits) to the training split",
                "threshold": float(np.quantile(all_sims, 0.05)) if len(all_sims) else 0.0,
                "threshold_rule": "5th percentile of validation molecules' max similarity",
            },
            "metrics": metrics,
            "test_predictions": parity,
            "training_seconds": round(time.perf_counter() - started, 1),
            **(extra_manifest or {}),
        }
        artifact = registry.write(endpoint, files, manifest)
    return artifact


def describe(artifact: Artifact) -> str:
    test = artifact.manifest["metrics"]["test"]
    fast = artifact.manifest["metrics"]["fast_model_test"]
    if artifact.manifest["task"] == "classification":
        return (f"{artifact.endpoint} v{artifact.version} transformer: test ROC AUC {test['roc_auc']:.3f} "
                f"(fast tier {fast['roc_auc']:.3f})")
    return (f"{artifact.endpoint} v{artifact.version} transformer: test RMSE {test['rmse']:.3f}, "
            f"R2 {test['r2']:.3f} (fast tier RMSE {fast['rmse']:.3f})")

