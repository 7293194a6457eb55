"""Train a graph-tier model (an ensemble of D-MPNNs with RDKit descriptors) on the same curated
data and split as an endpoint's fast model, evaluate it on that split's test molecules beside
the fast model, calibrate its intervals, and register it as kind `graph`.

Stored files: `spec.json` (rebuilds the networks), `member<i>.safetensors` (weights),
`descriptor_cdf.safetensors` (the descriptors' training CDF), and the applicability-domain
index shared with the other worker tiers. Never a pickle.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np

from molserve.chem.features import FeatureSpec
from molserve.chem.molecules import parse_smiles
from molserve.models import metrics as M
from molserve.models.graph.modeling import (
    GraphSpec,
    Progress,
    TrainOptions,
    apply_cdf,
    descriptor_matrix,
    fit_cdf,
    predict,
    state_arrays,
    train,
)
from molserve.models.heldout import domain_index_files, fast_model, read_fast_rows
from molserve.models.tier_mean import tiers_mean
from molserve.registry.store import Artifact, Registry

CONFIDENCE = 0.9
_EPS = 1e-6


def calibrate(kind: str, y: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> dict[str, Any]:
    """Normalized split-conformal intervals for regression: |y - mean| / (spread + s0) on the
    validation molecules, s0 the median spread (so a member agreement near zero cannot make an
    interval collapse). Classification: the members' probability range, as the fast tier."""
    if kind != "regression":
        return {"method": "member probability range (ensemble of D-MPNNs)", "confidence": None}
    s0 = float(np.median(spread)) + _EPS
    scores = np.abs(y - mean) / (spread + s0)
    level = min(1.0, math.ceil((len(y) + 1) * CONFIDENCE) / max(1, len(y)))
    q = float(np.quantile(scores, level)) if len(y) else 0.0
    return {"method": "normalized split conformal on the validation split (|error| / (member "
                      "spread + median spread)); the validation split also chose each member's "
                      "epoch", "quantile": q, "scale_offset": s0, "confidence": CONFIDENCE}


def interval(calibration: dict[str, Any], mean: np.ndarray,
             spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The calibrated interval around each ensemble mean (regression)."""
    half = calibration["quantile"] * (spread + calibration["scale_offset"])
    return mean - half, mean + half


def train_graph_endpoint(registry: Registry, endpoint: str, *, ensemble: int = 5, epochs: int = 50,
                         batch_size: int = 64, patience: int = 10, hidden: int = 300, depth: int = 3,
                         descriptors: bool = True, device: str | None = None, seed: int = 0,
                         threads: int | None = None, extra_manifest: dict | None = None,
                         progress: Progress | None = None) -> Artifact:
    """Train `ensemble` networks (different seeds, same split), evaluate, register."""
    from safetensors.numpy import save

    from molserve.models.transformer.modeling import pick_device

    device = pick_device(None if device in (None, "auto") else device)
    fast = fast_model(registry, endpoint)
    smiles, labels, split = read_fast_rows(fast)
    kind = fast.info.task
    if kind not in ("regression", "classification"):
        raise ValueError(f"{endpoint}: graph models serve regression or classification, not {kind}")
    y = np.asarray(labels, dtype=np.float64)
    # Trained on the fast model's scale (log10 for skewed targets such as clearance), answered
    # in the label's units.
    transform = target_transform_of(fast)
    z = transform.forward(y) if kind == "regression" else y
    sides = np.asarray(split)
    tr, va, te = (np.flatnonzero(sides == s) for s in ("train", "valid", "test"))
    if not len(va):
        raise ValueError(f"{endpoint}: the fast model's split has no validation molecules")
    started = time.perf_counter()
    mols = [parse_smiles(s).mol for s in smiles]
    knots = None
    x = None
    if descriptors:
        raw = descriptor_matrix(mols)
        knots = fit_cdf(raw[tr])
        x = apply_cdf(raw, knots)
    spec = GraphSpec(task=kind, hidden=hidden, depth=depth,
                     descriptors=0 if x is None else x.shape[1])

    def pick(rows: np.ndarray) -> tuple[list, np.ndarray | None]:
        return [mols[i] for i in rows], None if x is None else x[rows]

    (m_tr, x_tr), (m_va, x_va) = pick(tr), pick(va)
    members, summaries, files = [], [], {}
    for member in range(ensemble):
        def report(step: str, fraction: float, info: dict[str, Any], _m: int = member) -> None:
            if progress is not None:
                progress(f"member {_m + 1}/{ensemble}: {step}", (_m + fraction) / ensemble * 0.95, info)

        options = TrainOptions(epochs=epochs, batch_size=batch_size, patience=patience,
                               seed=seed * 1000 + member, threads=threads)
        model, summary = train(spec, m_tr, z[tr], m_va, z[va], x_tr, x_va, options, device=device,
                               progress=report, label=f"member {member + 1}")
        members.append(model.cpu())
        summaries.append(summary)
        files[f"member{member}.safetensors"] = save(state_arrays(model))
    outputs = predict(members, mols, x)  # (members, n), on the training scale
    mean_z, spread = outputs.mean(axis=0), outputs.std(axis=0)
    calibration = calibrate(kind, z[va], mean_z[va], spread[va])
    calibration["space"] = "log10" if transform.kind == "log10" else "value"
    mean = transform.inverse(mean_z) if kind == "regression" else mean_z
    low = high = None
    test_predictions = None
    if kind == "regression":
        test: dict[str, Any] = {}
        if len(te):  # production fast models hold nothing out: no test figures then
            test = M.regression_metrics(y[te], mean[te])
            low, high = (transform.inverse(b) for b in interval(calibration, mean_z[te], spread[te]))
            test["interval_coverage"] = float(np.mean((y[te] >= low) & (y[te] <= high)))
            test["interval_mean_width"] = float(np.mean(high - low))
            test_predictions = {"measured": y[te].round(4).tolist(), "predicted": mean[te].round(4).tolist()}
        metrics = {"test": test, "valid": M.regression_metrics(y[va], mean[va]), "primary": "rmse"}
    else:
        metrics = {"test": M.classification_metrics(y[te], mean[te]) if len(te) else {},
                   "valid": M.classification_metrics(y[va], mean[va]), "primary": "roc_auc"}
        if len(te):
            test_predictions = {"roc": M.roc_curve(y[te], mean[te])}
    # The fast model on the same molecules: test (its served ensemble), validation (its selection
    # model), and the two tiers' mean on both.
    metrics["fast_model_test"], metrics["fast_model_valid"] = fast.info.metrics.test, fast.info.metrics.valid
    metrics["tiers_mean"] = tiers_mean(fast, [smiles[i] for i in te], y[te], mean[te],
                                       None if kind != "regression" or low is None else (low, high),
                                       valid=(y[va], mean[va]))
    domain_files, domain = domain_index_files(smiles, split)
    files.update(domain_files)
    if knots is not None:
        files["descriptor_cdf.safetensors"] = save({"knots": knots.astype(np.float64)})
    files["spec.json"] = json.dumps(spec.to_dict(), indent=2).encode()
    manifest: dict[str, Any] = {
        "kind": "graph", "tier": "graph", "model_id": f"{endpoint}/graph", "task": kind,
        "units": fast.info.units, "description": fast.info.description,
        "label_names": fast.info.label_names, "dataset": fast.manifest.get("dataset"),
        "split": {**fast.manifest.get("split", {}), "shared_with": f"{endpoint} v{fast.version} (gbm)"},
        "features": FeatureSpec().to_dict(),
        "model": {"architecture": "Chemprop v2 D-MPNN (bond messages) + RDKit 2D descriptors "
                                  "(molserve's rdkit2d block, CDF-normalized), FFN head",
                  "library": _library(), "ensemble_size": ensemble, "spec": spec.to_dict(),
                  "epochs": epochs, "batch_size": batch_size, "patience": patience,
                  "members": summaries, "device": device},
        "target_transform": transform.to_dict(),
        "uncertainty": calibration, "applicability_domain": domain, "metrics": metrics,
        "test_predictions": test_predictions,
        "training_seconds": round(time.perf_counter() - started, 1),
    }
    manifest.update(extra_manifest or {})
    artifact = registry.write(endpoint, files, manifest)
    if progress is not None:
        progress("registered", 1.0, {})
    return artifact


def target_transform_of(artifact: Artifact):
    """The scale a model learns on (`identity` or `log10`), as its manifest records it."""
    from molserve.models.gbm_runtime import TargetTransform

    return TargetTransform(**artifact.manifest.get("target_transform", {}))


def _library() -> str:
    from importlib.metadata import version

    return f"chemprop {version('chemprop')}, torch {version('torch')}"


def describe(artifact: Artifact) -> str:
    """One line: the graph model's test metric next to the fast tier's and the tiers' mean on the
    same molecules, then the validation scores routing compares."""
    view = artifact.info.view(artifact.endpoint)
    test, fast = view.metrics.test, view.metrics.fast_model_test or {}
    recorded = artifact.manifest.get("metrics", {})
    mean_scores = recorded.get("tiers_mean") or {}
    mean = mean_scores.get("test") or {}
    where = f"{artifact.endpoint} v{artifact.version}"
    nan = float("nan")
    metric, name = ("roc_auc", "ROC AUC") if view.task == "classification" else ("rmse", "RMSE")
    graph_v, fast_v, mean_v = ((scores or {}).get(metric) for scores in (
        recorded.get("valid"), recorded.get("fast_model_valid"), mean_scores.get("valid")))
    on_valid = ""
    if graph_v is not None and fast_v is not None:  # models written before record no fast one
        on_valid = f"; validation {name} graph {graph_v:.3f}, fast {fast_v:.3f}" + (
            f", mean {mean_v:.3f}" if mean_v is not None else "")
    if not test:  # trained on a production fast model: nothing held out
        valid = recorded.get("valid") or {}
        return (f"{where} graph (no test set: the fast model learned from every labelled row): "
                f"validation {name} {valid.get(metric, nan):.3f}{on_valid}")
    if view.task == "classification":
        return (f"{where} graph: test ROC AUC {test['roc_auc']:.3f} "
                f"(fast tier {fast.get('roc_auc', nan):.3f}; "
                f"the tiers' mean {mean.get('roc_auc', nan):.3f}){on_valid}")
    return (f"{where} graph: test RMSE {test['rmse']:.3f}, MAE {test['mae']:.3f} "
            f"(fast tier RMSE {fast.get('rmse', nan):.3f}, MAE {fast.get('mae', nan):.3f}; "
            f"the tiers' mean RMSE {mean.get('rmse', nan):.3f}, MAE {mean.get('mae', nan):.3f})"
            f"{on_valid}")
