"""Train a fast-tier model: curated data, scaffold split, LightGBM ensemble chosen on
validation, conformal intervals, applicability domain, registry write.

Imports LightGBM, so it runs in the CLI or a job process, never in the gateway. The ensemble is
stored twice: as flat tree arrays (safetensors) that the gateway evaluates with numpy, and in
LightGBM's own text format for anyone who wants to inspect it with LightGBM.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from molserve.chem.features import CHEAP_DESCRIPTORS, FeatureSpec, featurize
from molserve.chem.similarity import SimilarityIndex
from molserve.data.curation import curate
from molserve.data.dataset import Dataset
from molserve.data.splits import random_split, scaffold_split
from molserve.models import metrics as M
from molserve.models.baseline import ridge_baseline
from molserve.models.trees import from_lightgbm
from molserve.registry.store import Artifact, Registry

Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class TrainingProfile:
    """How hard to search. `standard` is what `make serve` and `molserve train` use."""

    grid: tuple[dict, ...]
    feature_sets: tuple[tuple[str, ...], ...]
    learning_rate: float
    max_rounds: int
    early_stopping: int
    ensemble_size: int
    threads: int = 2


PROFILES = {
    "standard": TrainingProfile(
        grid=(
            # Depth is bounded because serving cost grows with the deepest tree.
            {"num_leaves": 15, "max_depth": 6, "min_data_in_leaf": 10},
            {"num_leaves": 63, "max_depth": 10, "min_data_in_leaf": 5},
        ),
        feature_sets=((), tuple(CHEAP_DESCRIPTORS)),
        learning_rate=0.1,
        max_rounds=1000,
        early_stopping=50,
        ensemble_size=5,
    ),
    # For tests: the same pipeline with a smaller search.
    "quick": TrainingProfile(
        grid=({"num_leaves": 15, "max_depth": 6, "min_data_in_leaf": 10},),
        feature_sets=(tuple(CHEAP_DESCRIPTORS),),
        learning_rate=0.15,
        max_rounds=120,
        early_stopping=20,
        ensemble_size=3,
    ),
}

CONFIDENCE = 0.9


def _lgb_params(task: str, config: dict, lr: float, seed: int, threads: int, bagged: bool) -> dict:
    params = {
        "objective": "binary" if task == "classification" else "regression",
        "learning_rate": lr,
        "feature_fraction": 0.5,
        "lambda_l2": 1.0,
        "use_missing": False,
        "verbose": -1,
        "seed": seed,
        "num_threads": threads,
        "deterministic": True,
        "force_col_wise": True,
        **config,
    }
    if bagged:
        params.update(bagging_fraction=0.8, bagging_freq=1)
    return params


def _score(task: str, y: np.ndarray, raw: np.ndarray) -> float:
    """Higher is better: -RMSE for regression, ROC AUC (ties broken by -log loss) otherwise."""
    if task == "classification":
        p = 1.0 / (1.0 + np.exp(-raw))
        m = M.classification_metrics(y, p)
        return m["roc_auc"] - 1e-3 * m["log_loss"]
    return -float(np.sqrt(np.mean((y - raw) ** 2)))


def train_endpoint(
    dataset: Dataset,
    registry: Registry,
    endpoint: str,
    *,
    split: str = "scaffold",
    profile: str = "standard",
    seed: int = 0,
    split_labels: list[str] | None = None,
    extra_manifest: dict | None = None,
    progress: Progress | None = None,
) -> Artifact:
    """Train, evaluate and register a fast-tier model for `endpoint`; return the artifact.

    `split_labels` (train/valid/test per dataset row) replaces the computed split, so a stored
    dataset's split is reused exactly.
    """
    import lightgbm as lgb

    report = progress or (lambda step, fraction: None)
    settings = PROFILES[profile]
    started = time.perf_counter()
    report("curating", 0.02)
    curated = curate(dataset)
    n = len(curated.canonical_smiles)
    if n < 30:
        raise ValueError(f"{n} usable molecules after curation; at least 30 are needed")
    y = curated.labels
    if dataset.task == "classification" and len(np.unique(y)) < 2:
        raise ValueError("classification data needs both classes")
    if split_labels is not None:
        from rdkit import Chem

        side_of = {}
        for text, side in zip(dataset.smiles, split_labels, strict=True):
            mol = Chem.MolFromSmiles(text)
            if mol is not None:
                side_of[Chem.MolToSmiles(mol)] = side
        sides = [side_of.get(key, "train") for key in curated.canonical_smiles]
        splits = {s: [i for i, v in enumerate(sides) if v == s] for s in ("train", "valid", "test")}
    elif split == "scaffold":
        splits = scaffold_split(curated.mols, seed=seed)
    else:
        splits = random_split(n, seed=seed)
    if min(len(v) for v in splits.values()) < 5:
        splits = random_split(n, seed=seed)
        split = "random (scaffold split left a side with fewer than 5 molecules)"
    tr, va, te = (np.array(splits[k]) for k in ("train", "valid", "test"))

    report("featurizing", 0.08)
    full_spec = FeatureSpec(descriptors=tuple(CHEAP_DESCRIPTORS))
    features = featurize(curated.mols, full_spec)
    x_all = features.matrix

    def columns(descriptors: tuple[str, ...]) -> np.ndarray:
        keep = list(range(full_spec.n_bits)) + [
            full_spec.n_bits + list(CHEAP_DESCRIPTORS).index(d) for d in descriptors
        ]
        return x_all[:, keep]

    # Model selection on the validation split: feature set x tree shape, rounds by early stop.
    candidates = [(fs, cfg) for fs in settings.feature_sets for cfg in settings.grid]
    best: dict | None = None
    search_log = []
    for index, (descriptors, config) in enumerate(candidates):
        report(f"searching {index + 1}/{len(candidates)}", 0.1 + 0.5 * index / len(candidates))
        x = columns(descriptors)
        params = _lgb_params(dataset.task, config, settings.learning_rate, seed, settings.threads, False)
        train_set = lgb.Dataset(x[tr], y[tr], free_raw_data=True)
        valid_set = lgb.Dataset(x[va], y[va], reference=train_set)
        booster = lgb.train(
            params,
            train_set,
            num_boost_round=settings.max_rounds,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)],
        )
        rounds = max(1, booster.best_iteration or settings.max_rounds)
        score = _score(dataset.task, y[va], booster.predict(x[va], num_iteration=rounds, raw_score=True))
        entry = {"descriptors": bool(descriptors), **config, "rounds": rounds, "valid_score": score}
        search_log.append(entry)
        if best is None or score > best["valid_score"]:
            best = {**entry, "descriptor_names": descriptors, "config": config}
    assert best is not None

    spec = FeatureSpec(descriptors=best["descriptor_names"])
    x = columns(best["descriptor_names"])
    members = []
    for member in range(settings.ensemble_size):
        fraction = 0.6 + 0.3 * member / settings.ensemble_size
        report(f"ensemble member {member + 1}/{settings.ensemble_size}", fraction)
        params = _lgb_params(
            dataset.task, best["config"], settings.learning_rate, seed + 1 + member, settings.threads, True
        )
        members.append(lgb.train(params, lgb.Dataset(x[tr], y[tr]), num_boost_round=best["rounds"]))

    report("calibrating and evaluating", 0.92)
    ensemble = from_lightgbm(members)
    # Scored with the evaluator the gateway serves, so manifest metrics are the served model's.
    raw = ensemble.raw_scores(x)
    index = SimilarityIndex.build([features.on_bits[i] for i in tr], spec.n_bits)
    max_sim, _ = index.nearest_many([features.on_bits[i] for i in range(n)])
    # In domain: at least as similar to training as the least similar 5% of validation molecules.
    ad_threshold = float(np.quantile(max_sim[va], 0.05))

    manifest_metrics: dict = {}
    calibration: dict = {}
    if dataset.task == "regression":
        mean = raw.mean(axis=1)
        std = raw.std(axis=1)
        stabilizer = float(np.median(std[va])) + 1e-6
        nonconformity = np.abs(y[va] - mean[va]) / (std[va] + stabilizer)
        level = min(1.0, math.ceil((len(va) + 1) * CONFIDENCE) / len(va))
        q = float(np.quantile(nonconformity, level))
        half_width = q * (std + stabilizer)
        covered = np.abs(y[te] - mean[te]) <= half_width[te]
        calibration = {"method": "normalized split conformal on the validation split",
                       "quantile": q, "stabilizer": stabilizer, "confidence": CONFIDENCE}
        test = M.regression_metrics(y[te], mean[te])
        test["interval_coverage"] = float(covered.mean())
        test["interval_mean_width"] = float(2 * half_width[te].mean())
        in_domain = max_sim[te] >= ad_threshold
        if in_domain.sum() >= 5 and (~in_domain).sum() >= 5:
            test["rmse_in_domain"] = M.regression_metrics(y[te][in_domain], mean[te][in_domain])["rmse"]
            test["rmse_out_of_domain"] = M.regression_metrics(y[te][~in_domain], mean[te][~in_domain])["rmse"]
        baseline_pred, alpha = ridge_baseline(x[tr], y[tr], x[va], y[va], x[te])
        manifest_metrics = {
            "test": test,
            "valid": M.regression_metrics(y[va], mean[va]),
            "baseline_test": {"model": f"ridge (alpha={alpha})",
                              **M.regression_metrics(y[te], baseline_pred)},
            "primary": "rmse",
        }
        parity = {"measured": y[te].round(4).tolist(), "predicted": mean[te].round(4).tolist()}
    else:
        prob = 1.0 / (1.0 + np.exp(-raw))
        mean = prob.mean(axis=1)
        calibration = {"method": "ensemble spread (member probabilities)", "confidence": CONFIDENCE}
        test = M.classification_metrics(y[te], mean[te])
        baseline_pred, alpha = ridge_baseline(x[tr], y[tr], x[va], y[va], x[te])
        manifest_metrics = {
            "test": test,
            "valid": M.classification_metrics(y[va], mean[va]),
            "baseline_test": {
                "model": f"ridge on 0/1 labels (alpha={alpha})",
                "roc_auc": M.roc_auc(y[te], baseline_pred),
                "pr_auc": M.average_precision(y[te], baseline_pred),
            },
            "primary": "roc_auc",
        }
        parity = {"roc": M.roc_curve(y[te], mean[te])}

    report("exporting", 0.96)
    from safetensors.numpy import save

    trees_bytes = save(ensemble.arrays(), metadata={"endpoint": endpoint, "format": "trees-1"})
    ad_bytes = save(index.arrays(), metadata={"n_bits": str(spec.n_bits)})
    lightgbm_text = "".join(
        f"# member {i}\n{m.model_to_string()}\n" for i, m in enumerate(members)
    )
    table = io.StringIO()
    table.write("canonical_smiles,label,split\n")
    side = np.empty(n, dtype=object)
    for name, idx in (("train", tr), ("valid", va), ("test", te)):
        side[idx] = name
    for i in range(n):
        table.write(f"{curated.canonical_smiles[i]},{y[i]:.6g},{side[i]}\n")
    train_smiles = "\n".join(curated.canonical_smiles[i] for i in tr) + "\n"

    manifest = {
        "kind": "gbm",
        "tier": "fast",
        "model_id": f"{endpoint}/gbm",
        "task": dataset.task,
        "units": dataset.units,
        "description": dataset.description,
        "label_names": list(dataset.label_names) if dataset.label_names else None,
        "dataset": dataset.describe(),
        "curation": curated.report,
        "split": {"method": split, "seed": seed, "sizes": {k: len(v) for k, v in splits.items()}},
        "features": spec.to_dict(),
        "model": {
            "library": f"lightgbm {lgb.__version__}; served from flat tree arrays with numpy",
            "trees": ensemble.n_trees,
            "depth": ensemble.depth,
            "ensemble_size": len(members),
            "rounds": best["rounds"],
            "params": best["config"],
            "learning_rate": settings.learning_rate,
            "profile": profile,
            "search": search_log,
            "output": ("raw margin per member; sigmoid applied at serving"
                       if dataset.task == "classification" else "value per member"),
        },
        "uncertainty": calibration,
        "applicability_domain": {
            "method": "max Tanimoto similarity (Morgan radius 2, 2048 bits) to the training split",
            "threshold": ad_threshold,
            "threshold_rule": "5th percentile of validation molecules' max similarity",
        },
        "metrics": manifest_metrics,
        "test_predictions": parity,
        "training_seconds": round(time.perf_counter() - started, 2),
        **(extra_manifest or {}),
    }
    artifact = registry.write(
        endpoint,
        {
            "trees.safetensors": trees_bytes,
            "ad_index.safetensors": ad_bytes,
            "lightgbm_members.txt": lightgbm_text.encode(),
            "data.csv": table.getvalue().encode(),
            "train_smiles.txt": train_smiles.encode(),
        },
        manifest,
    )
    report("done", 1.0)
    return artifact


def summarize(artifact: Artifact) -> str:
    m = artifact.manifest["metrics"]
    test = m["test"]
    if artifact.manifest["task"] == "classification":
        line = f"ROC AUC {test['roc_auc']:.3f}, PR AUC {test['pr_auc']:.3f}, accuracy {test['accuracy']:.3f}"
        base = f"baseline ROC AUC {m['baseline_test']['roc_auc']:.3f}"
    else:
        line = (f"RMSE {test['rmse']:.3f}, MAE {test['mae']:.3f}, R2 {test['r2']:.3f}, "
                f"90% interval coverage {test['interval_coverage']:.2f}")
        base = f"baseline RMSE {m['baseline_test']['rmse']:.3f}"
    return f"{artifact.endpoint} v{artifact.version} (test, n={test['n']}): {line}; {base}"

