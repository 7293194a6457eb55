"""Fine-tune a transformer on the same curated data and split as the fast models of one or
several endpoints, evaluate it per endpoint, export ONNX, and register it as kind
`transformer`.

One endpoint: the artifact is stored under that endpoint. Several endpoints (multi-task): one
RoBERTa with one head output per endpoint, trained on the union of their molecules with the
loss masked where a molecule has no label, stored under a name of its own; its manifest lists
the endpoints it serves in `tasks`, each with its own metrics, calibration and fast-tier
comparison on that endpoint's test split.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec
from molserve.models import metrics as M
from molserve.models.heldout import domain_index_files, fast_model, read_fast_rows, task_domain_files
from molserve.models.transformer.modeling import (
    FineTuneData,
    Progress,
    decode_logits,
    export_onnx,
    finetune,
    onnx_logits,
    predict_logits,
)
from molserve.registry.store import Artifact, Registry

CONFIDENCE = 0.9


def data_from_fast_model(registry: Registry, endpoint: str) -> tuple[FineTuneData, Artifact]:
    """The curated rows and split recorded by the endpoint's newest fast model."""
    fast = fast_model(registry, endpoint)
    smiles, labels, split = read_fast_rows(fast)
    split = set_aside_calibration(smiles, split)
    return FineTuneData(smiles, np.array(labels), split, fast.manifest["task"]), fast


def merge_endpoints(registry: Registry, endpoints: list[str]) -> tuple[FineTuneData, dict[str, Artifact]]:
    """Several endpoints' curated rows as one multi-task table keyed by canonical SMILES.

    Each label keeps the side (train/valid/test) its own endpoint's split gave it, so every
    endpoint is tested on exactly the molecules its fast model was tested on. A molecule that
    is held out (valid or test) for any endpoint is not trained on for any endpoint: otherwise
    the shared encoder would have seen a test molecule through another task's label. Nor is a
    molecule that shares a Bemis-Murcko scaffold with any held-out molecule (its row's side is
    `excluded`): each endpoint's split holds out whole scaffolds, and another task's label must
    not bring a held-out scaffold back into training.
    """
    if len(set(endpoints)) != len(endpoints) or len(endpoints) < 2:
        raise ValueError("multi-task fine-tuning needs at least two different endpoints")
    fasts = {e: fast_model(registry, e) for e in endpoints}
    row_of: dict[str, int] = {}
    cells: list[tuple[int, int, float, str]] = []
    for column, endpoint in enumerate(endpoints):
        for smiles, label, side in zip(*read_fast_rows(fasts[endpoint]), strict=True):
            row = row_of.setdefault(smiles, len(row_of))
            cells.append((row, column, label, side))
    n, width = len(row_of), len(endpoints)
    labels = np.full((n, width), np.nan)
    sides = np.full((n, width), "", dtype=object)
    for row, column, label, side in cells:
        labels[row, column], sides[row, column] = label, side
    held_out = ((sides == "valid") | (sides == "test")).any(axis=1)
    split = ["test" if (sides[i] == "test").any() else "valid" if held_out[i] else "train"
             for i in range(n)]
    split = exclude_held_out_scaffolds(list(row_of), split)
    for column in range(width):  # after the row sides: calibration labels stay held out
        sides[:, column] = set_aside_calibration(list(row_of), list(sides[:, column]))
    kinds = [fasts[e].manifest["task"] for e in endpoints]
    data = FineTuneData(list(row_of), labels, split, "multitask", task_names=list(endpoints),
                        task_kinds=kinds, label_split=sides)
    return data, fasts


MIN_CALIBRATION = 10


def set_aside_calibration(smiles: list[str], sides: list[str], seed: int = 0) -> list[str]:
    """`sides` with about half of the validation molecules (whole scaffold groups) marked
    `calibration`: neither trained on nor used to stop training (the epoch count is chosen on the
    other half), so the intervals calibrated on them are not tuned to the molecules that chose
    the model. With fewer than 2 * MIN_CALIBRATION validation molecules nothing is set aside."""
    from molserve.chem.molecules import parse_smiles
    from molserve.data.splits import scaffold_folds

    valid = [i for i, side in enumerate(sides) if side == "valid"]
    if len(valid) < 2 * MIN_CALIBRATION:
        return list(sides)
    halves = scaffold_folds([parse_smiles(smiles[i]).mol for i in valid], 2, seed=seed)
    if min(len(h) for h in halves) < MIN_CALIBRATION:  # one scaffold holds most of them
        return list(sides)
    out = list(sides)
    for position in halves[0]:
        out[valid[position]] = "calibration"
    return out


def exclude_held_out_scaffolds(smiles: list[str], split: list[str]) -> list[str]:
    """`split` with every training row whose Bemis-Murcko scaffold is also a held-out (valid or
    test) row's marked `excluded`: not trained on, not scored."""
    from molserve.chem.molecules import parse_smiles
    from molserve.data.splits import murcko_scaffold

    scaffolds = [murcko_scaffold(parse_smiles(s).mol) for s in smiles]
    held = {scaffolds[i] for i, side in enumerate(split) if side in ("valid", "test")}
    return ["excluded" if side == "train" and scaffolds[i] in held else side
            for i, side in enumerate(split)]


def _evaluate(kind: str, y: np.ndarray, sides: np.ndarray, values: np.ndarray) -> dict[str, Any]:
    """Metrics on the test side; calibration on the calibration side (validation molecules that
    did not choose the epoch count), or on the validation side for models without one."""
    va, te = np.flatnonzero(sides == "valid"), np.flatnonzero(sides == "test")
    ca = np.flatnonzero(sides == "calibration")
    on = ca if len(ca) else va
    if kind == "regression":
        residual = np.abs(y[on] - values[on])
        level = min(1.0, math.ceil((len(on) + 1) * CONFIDENCE) / len(on))
        q = float(np.quantile(residual, level))
        test: dict[str, Any] = {}
        if len(te):  # production fast models hold nothing out: no test figures then
            test = M.regression_metrics(y[te], values[te])
            test["interval_coverage"] = float(np.mean(np.abs(y[te] - values[te]) <= q))
            test["interval_mean_width"] = 2 * q
        return {
            "uncertainty": {"method": ("split conformal on calibration molecules (half the "
                                       "validation scaffolds, not used to choose the epoch count)"
                                       if len(ca) else "split conformal on the validation split "
                                       "(too few molecules to set some apart)") + ", constant width",
                            "quantile": q, "confidence": CONFIDENCE,
                            "calibration_molecules": int(len(on))},
            "metrics": {"test": test, "valid": M.regression_metrics(y[va], values[va]),
                        "primary": "rmse"},
            "test_predictions": {"measured": y[te].round(4).tolist(),
                                 "predicted": values[te].round(4).tolist()} if len(te) else None,
        }
    return {
        "uncertainty": {"method": "none: the class probability is answered without an interval "
                                  "(one model; no ensemble or calibrated bounds)"},
        "metrics": {"test": M.classification_metrics(y[te], values[te]) if len(te) else {},
                    "valid": M.classification_metrics(y[va], values[va]), "primary": "roc_auc"},
        "test_predictions": {"roc": M.roc_curve(y[te], values[te])} if len(te) else None,
    }


def by_backend(kind: str, y: np.ndarray, sides: np.ndarray,
               served: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """backend -> the test metrics and calibration of the values that backend serves."""
    out = {}
    for backend, values in served.items():
        evaluation = _evaluate(kind, y, sides, values)
        out[backend] = {"metrics": evaluation["metrics"]["test"],
                        "uncertainty": evaluation["uncertainty"]}
    return out


def finetune_endpoint(registry: Registry, endpoint: str, **options: Any) -> Artifact:
    """Fine-tune on one endpoint: `finetune_endpoints` with one endpoint (same options)."""
    return finetune_endpoints(registry, [endpoint], **options)


def finetune_endpoints(
    registry: Registry,
    endpoints: list[str],
    *,
    base: str,
    name: str | None = None,
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
    """Fine-tune one model for `endpoints` (one: single-task under that endpoint; several:
    multi-task under `name`), evaluate each endpoint on its fast model's test split, register."""
    multitask = len(endpoints) > 1
    if multitask:
        if not name:
            raise ValueError("several endpoints make one multi-task model: give it a registry name "
                             "(--name, e.g. --name adme)")
        if registry.latest(name, kind="gbm") is not None:
            raise ValueError(f"{name!r} is an endpoint with its own fast model; register the "
                             "multi-task model under a name of its own")
        data, fasts = merge_endpoints(registry, endpoints)
    else:
        single, fast = data_from_fast_model(registry, endpoints[0])
        data, fasts, name = single, {endpoints[0]: fast}, endpoints[0]
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
        values = decode_logits(predict_logits(model, tokenizer, data.smiles, summary["device"],
                                              max_length=summary["max_length"]), summary["heads"])
        y, sides, kinds = data.matrix()
        # Each way the model can be served is evaluated and calibrated as served: the exported
        # ONNX files (int8 weights give slightly different numbers than torch fp32).
        served: dict[str, np.ndarray] = {"torch": values}
        onnx_files: dict[str, Path] = {}
        if export:
            onnx_files["model.onnx"] = export_onnx(model_dir, Path(tmp) / "model.onnx")
            onnx_files["model.int8.onnx"] = export_onnx(model_dir, Path(tmp) / "model.onnx",
                                                        quantize=True)
            for backend, filename in (("onnx", "model.onnx"), ("onnx-int8", "model.int8.onnx")):
                served[backend] = decode_logits(onnx_logits(
                    onnx_files[filename], tokenizer, data.smiles,
                    max_length=summary["max_length"]), summary["heads"])
        tasks: dict[str, dict[str, Any]] = {}
        for column, endpoint in enumerate(endpoints):
            fast = fasts[endpoint]
            evaluation = _evaluate(kinds[column], y[:, column], sides[:, column], values[:, column])
            evaluation["by_backend"] = by_backend(kinds[column], y[:, column], sides[:, column],
                                                  {b: v[:, column] for b, v in served.items()})
            evaluation["metrics"]["fast_model_test"] = fast.manifest["metrics"]["test"]
            tasks[endpoint] = {
                "task": kinds[column], "units": fast.manifest["units"],
                "description": fast.manifest["description"],
                "label_names": fast.manifest.get("label_names"), "dataset": fast.manifest["dataset"],
                "split": {**fast.manifest["split"],
                          "shared_with": f"{endpoint} v{fast.version} (gbm)",
                          # The fast model's curated rows and sides: equal evidence for routing.
                          "evidence": {"data_sha256": fast.manifest["files"]["data.csv"]["sha256"]}},
                **evaluation,
            }
        files: dict[str, Any] = {p.name: p for p in model_dir.iterdir() if p.is_file()}
        files.update(onnx_files)
        domain_files, domain = domain_index_files(data.smiles, data.split)
        files.update(domain_files)
        if multitask:  # each task's own domain: its own training molecules, its own threshold
            task_files, task_domains = task_domain_files(data.smiles, data.split, sides, endpoints)
            files.update(task_files)
            for endpoint, section in task_domains.items():
                tasks[endpoint]["applicability_domain"] = section
        # save_pretrained writes only JSON and safetensors here; anything else is not stored.
        allowed = {".json", ".safetensors", ".onnx", ".txt"}
        for filename in [n for n in files if Path(n).suffix not in allowed]:
            files.pop(filename)
        model_info = {"architecture": "RoBERTa sequence regression/classification"
                      + (f", multi-task ({len(endpoints)} outputs)" if multitask else ""),
                      "base": base, **summary}
        manifest: dict[str, Any] = {
            "kind": "transformer", "tier": "transformer", "model_id": f"{name}/transformer",
            "features": FeatureSpec().to_dict(), "model": model_info,
            "applicability_domain": domain,
            "training_seconds": round(time.perf_counter() - started, 1),
        }
        if multitask:
            manifest.update(task="multitask", units="", tasks=tasks,
                            description="multi-task transformer for " + ", ".join(endpoints),
                            rows={"molecules": len(data.smiles),
                                  "training_molecules": int(sum(s == "train" for s in data.split)),
                                  "excluded_sharing_a_held_out_scaffold":
                                      int(sum(s == "excluded" for s in data.split)),
                                  "training_labels": summary["training_labels"],
                                  "labels": int(np.sum(~np.isnan(y)))})
        else:
            only = tasks[endpoints[0]]
            manifest.update(task=only["task"], units=only["units"], description=only["description"],
                            label_names=only["label_names"], dataset=only["dataset"],
                            split=only["split"], uncertainty=only["uncertainty"],
                            metrics=only["metrics"], test_predictions=only["test_predictions"],
                            by_backend=only["by_backend"])
        manifest.update(extra_manifest or {})
        artifact = registry.write(name, files, manifest)
    return artifact


def describe(artifact: Artifact) -> str:
    """One line per endpoint the artifact serves: its test metric next to the fast tier's."""
    lines = []
    for endpoint in artifact.info.endpoints():
        view = artifact.info.view(endpoint)
        test, fast = view.metrics.test, view.metrics.fast_model_test or {}
        where = f"{artifact.endpoint} v{artifact.version}"
        label = where if endpoint == artifact.endpoint else f"{endpoint} ({where})"
        if view.task == "classification":
            lines.append(f"{label} transformer: test ROC AUC {test['roc_auc']:.3f} "
                         f"(fast tier {fast['roc_auc']:.3f})")
        else:
            lines.append(f"{label} transformer: test RMSE {test['rmse']:.3f}, R2 {test['r2']:.3f} "
                         f"(fast tier RMSE {fast['rmse']:.3f})")
    return "\n".join(lines)
