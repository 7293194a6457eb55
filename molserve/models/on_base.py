"""Local models on global ones: a team's own measurements learn on top of bundled endpoints.

A team trains an endpoint on its own assay (a few hundred rows) with one or more *bases*
(bundled endpoints' fast models, trained on public data). Three candidates compete on
out-of-fold predictions over the scaffold folds of the team's rows:

- `local`: the team's own fast model (the usual recipe), its out-of-fold predictions;
- `base`: the bases recalibrated to the team's assay, a linear map fitted on the team's rows
  (scales and units may differ: CLint in mL/min/kg against mL/min/g); for a classification
  assay, a logistic map of the bases' margins;
- `stack`: the linear stack of the two (local prediction and the bases' outputs as inputs).

`base` and `stack` are cross-fitted: the predictions of fold k come from a map fitted on the
other folds' rows (their local predictions are themselves out of fold), so the three scores are
comparable and none is flattered by its own fit. The best one answers; the manifest records all
three, so a team sees what its data bought and what the global model bought.

A base's output is the mean of its ensemble members' raw scores on its own model scale (log10
for skewed targets; classifiers' margins before Platt scaling), exactly as the fast tier holds
them while serving, so training and serving combine the same numbers. Each model names the base
versions it was fitted with; served with another version of a base (retrained, or deleted), it
answers from its local part alone, marked degraded with the reason.

`Combination` (numpy only) is what the fast tier reads; the fitting needs the registry's models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CANDIDATES = ("local", "base", "stack")
MAX_AUTO_BASES = 3
# A base joins the automatic choice only if the stack's out-of-fold score improves by this much.
AUTO_MIN_GAIN = 1e-3


@dataclass(frozen=True)
class BasePin:
    endpoint: str
    version: int
    model_id: str
    trees_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "version": self.version, "model_id": self.model_id,
                "trees_sha256": self.trees_sha256}


@dataclass(frozen=True)
class Combination:
    """How a served model combines its local members with its bases (`base` or `stack`)."""

    chosen: str
    bases: tuple[BasePin, ...]
    intercept: float
    local_weight: float
    base_weights: tuple[float, ...]
    local_calibration: dict[str, Any]  # the local model's own uncertainty section (fallback)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Combination | None:
        section = manifest.get("on_base") or {}
        if section.get("chosen") not in ("base", "stack"):
            return None
        served = section["served"]
        return cls(section["chosen"], tuple(BasePin(**b) for b in section["bases"]),
                   float(served["intercept"]), float(served["local_weight"]),
                   tuple(float(w) for w in served["base_weights"]), section["local_only"]["uncertainty"])

    def apply(self, local_raw: np.ndarray, base_outputs: np.ndarray) -> np.ndarray:
        """(rows, members) combined raw scores from the local members' raw scores and the bases'
        outputs (rows, bases)."""
        shift = self.intercept + np.asarray(base_outputs, dtype=np.float64) @ np.asarray(self.base_weights)
        return self.local_weight * np.asarray(local_raw, dtype=np.float64) + shift[:, None]

    def pins(self) -> str:
        return ", ".join(f"{b.endpoint} v{b.version}" for b in self.bases)


# Linear maps --------------------------------------------------------------------------------
def fit_linear(task: str, x: np.ndarray, target: np.ndarray,
               penalty: float = 1e-2) -> tuple[float, np.ndarray]:
    """(intercept, weights) of a ridge regression (regression) or an L2-penalized logistic
    regression (classification, 0/1 targets) on standardized columns, returned in the columns'
    own units. `penalty` is per row, so it weighs the same at every size."""
    x = np.asarray(x, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n, k = x.shape
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0
    xs = (x - mean) / std
    design = np.hstack([np.ones((n, 1)), xs])
    ridge = np.diag([0.0] + [penalty * n] * k)
    if task == "regression":
        coef = np.linalg.solve(design.T @ design + ridge, design.T @ target)
    else:
        coef = np.zeros(k + 1)
        rate = min(max(target.mean(), 1e-3), 1 - 1e-3)
        coef[0] = math.log(rate / (1 - rate))
        for _ in range(50):  # Newton steps (IRLS)
            p = 1.0 / (1.0 + np.exp(-(design @ coef)))
            w = np.clip(p * (1 - p), 1e-9, None)
            gradient = design.T @ (p - target) + ridge @ coef
            hessian = (design * w[:, None]).T @ design + ridge + 1e-9 * np.eye(k + 1)
            step = np.linalg.solve(hessian, gradient)
            coef -= step
            if np.max(np.abs(step)) < 1e-8:
                break
    weights = coef[1:] / std
    return float(coef[0] - np.sum(weights * mean)), weights


def linear_output(x: np.ndarray, intercept: float, weights: np.ndarray) -> np.ndarray:
    return intercept + np.asarray(x, dtype=np.float64) @ np.asarray(weights, dtype=np.float64)


def cross_fitted(task: str, x: np.ndarray, target: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """Each fold's rows predicted by a map fitted on the other folds' rows (model scale:
    values, or margins for classification)."""
    out = np.full(len(target), np.nan)
    for k in np.unique(folds):
        held = folds == k
        intercept, weights = fit_linear(task, x[~held], target[~held])
        out[held] = linear_output(x[held], intercept, weights)
    return out


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


# Bases --------------------------------------------------------------------------------------
def pin(artifact) -> BasePin:
    return BasePin(artifact.endpoint, int(artifact.version), str(artifact.manifest.get("model_id")),
                   artifact.manifest["files"]["trees.safetensors"]["sha256"])


def base_outputs(artifacts: Sequence, smiles: Sequence[str]) -> np.ndarray:
    """(molecules, bases): each base's mean member raw score on the molecules (canonical SMILES;
    the parent fragment is what the models see, as when serving)."""
    from rdkit import Chem

    from molserve.chem.features import featurize
    from molserve.chem.molecules import largest_fragment
    from molserve.models.gbm_runtime import FastModel

    mols = [largest_fragment(Chem.MolFromSmiles(s)) for s in smiles]
    out = np.zeros((len(smiles), len(artifacts)))
    for j, artifact in enumerate(artifacts):
        model = FastModel.load(artifact)
        if not len(mols):
            continue
        features = featurize(mols, model.spec)
        out[:, j] = model.forest.raw_scores(features.matrix).mean(axis=1)
    return out


def candidate_bases(registry, task: str, exclude: str) -> list:
    """`--base auto`: every bundled endpoint with a fast model of the same task type."""
    from molserve.data.catalog import bundled_endpoints

    found = []
    for name in bundled_endpoints():
        if name == exclude:
            continue
        artifact = registry.latest(name, kind="gbm")
        if artifact is not None and artifact.manifest.get("task") == task:
            found.append(artifact)
    return found


# Choosing -----------------------------------------------------------------------------------
@dataclass
class Evidence:
    """The team's fitted rows, out of fold: what the candidates are scored on."""

    task: str
    metric: str
    y: np.ndarray  # labels (label units; 0/1)
    target: np.ndarray  # what the local model learns (model scale; 0/1 for classification)
    folds: np.ndarray
    local: np.ndarray  # the local model's out-of-fold raw scores (model scale; margins)
    to_label: Callable[[np.ndarray], np.ndarray]  # model scale -> label units (regression)

    def label_scale(self, raw: np.ndarray) -> np.ndarray:
        return sigmoid(raw) if self.task == "classification" else self.to_label(raw)

    def score(self, raw: np.ndarray) -> float:
        from molserve.models import stacking

        return stacking.score(self.metric, self.y, self.label_scale(raw))

    def metrics(self, raw: np.ndarray) -> dict[str, float]:
        from molserve.models import stacking

        return stacking.all_metrics(self.task, self.y, self.label_scale(raw))

    def candidates(self, bases: np.ndarray) -> dict[str, np.ndarray]:
        """Out-of-fold raw predictions of the three candidates."""
        return {"local": self.local,
                "base": cross_fitted(self.task, bases, self.target, self.folds),
                "stack": cross_fitted(self.task, np.column_stack([self.local, bases]), self.target,
                                      self.folds)}


def choose_bases(evidence: Evidence, outputs: np.ndarray, names: list[str]) -> tuple[list[int], list[dict]]:
    """Forward selection for `--base auto`: add the base that most improves the stack's
    out-of-fold score, while it improves it by at least AUTO_MIN_GAIN (at most MAX_AUTO_BASES).
    Returns the chosen columns and the trail."""
    chosen: list[int] = []
    current = evidence.score(evidence.local)
    trail = [{"bases": [], "stack_score": round(current, 6)}]
    while len(chosen) < MAX_AUTO_BASES:
        best, best_score = None, current
        for j in range(outputs.shape[1]):
            if j in chosen:
                continue
            x = np.column_stack([evidence.local, outputs[:, chosen + [j]]])
            value = evidence.score(cross_fitted(evidence.task, x, evidence.target, evidence.folds))
            if value > best_score + AUTO_MIN_GAIN:
                best, best_score = j, value
        if best is None:
            break
        chosen.append(best)
        current = best_score
        trail.append({"bases": [names[j] for j in chosen], "stack_score": round(current, 6)})
    return chosen, trail


def combine(evidence: Evidence, base_artifacts: Sequence, outputs: np.ndarray, *,
            local_calibration: dict[str, Any], auto: bool = False,
            test: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Score the three candidates, choose, and fit the served map on every fitted row.

    `outputs` (fitted rows, bases); `test`: {"local": raw members mean, "bases": outputs,
    "y": labels} of held-out molecules, reported only. Returns the manifest's `on_base`
    section, and, when a combination answers, its out-of-fold raw predictions and calibration.
    """
    from molserve.models.gbm_train import CONFIDENCE, CONFIDENCE_LEVELS, conformal_quantile

    names = [a.endpoint for a in base_artifacts]
    trail = None
    keep = list(range(len(names)))
    if auto:
        keep, trail = choose_bases(evidence, outputs, names)
        base_artifacts = [base_artifacts[j] for j in keep]
        outputs = outputs[:, keep]
        names = [names[j] for j in keep]
    if not names:
        scores = {"local": evidence.score(evidence.local)}
        return {"section": {"chosen": "local", "bases": [], "auto": trail, "metric": evidence.metric,
                            "scores": scores, "out_of_fold": {"local": evidence.metrics(evidence.local)},
                            "reason": "no base improved the stack out of fold" if auto else "no base"},
                "raw": None, "uncertainty": None}
    predictions = evidence.candidates(outputs)
    scores = {name: evidence.score(raw) for name, raw in predictions.items()}
    chosen = "local"
    for name in CANDIDATES:  # ties: the simpler candidate (listed first)
        if scores[name] > scores[chosen] + 1e-12:
            chosen = name
    x_stack = np.column_stack([evidence.local, outputs])
    intercept_b, weights_b = fit_linear(evidence.task, outputs, evidence.target)
    intercept_s, weights_s = fit_linear(evidence.task, x_stack, evidence.target)
    served = ({"intercept": intercept_b, "local_weight": 0.0, "base_weights": weights_b.tolist()}
              if chosen == "base" else
              {"intercept": intercept_s, "local_weight": float(weights_s[0]),
               "base_weights": weights_s[1:].tolist()})
    section: dict[str, Any] = {
        "chosen": chosen, "bases": [pin(a).to_dict() for a in base_artifacts], "auto": trail,
        "metric": evidence.metric,
        "scores": {k: round(v, 6) for k, v in scores.items()},
        "out_of_fold": {name: evidence.metrics(raw) for name, raw in predictions.items()},
        "maps": {"base": {"intercept": intercept_b, "base_weights": weights_b.tolist()},
                 "stack": {"intercept": intercept_s, "local_weight": float(weights_s[0]),
                           "base_weights": weights_s[1:].tolist()}},
        "served": served,
        "inputs": "each base's mean member raw score (its model scale; classifiers' margins before "
                  "Platt scaling) and the local model's raw score (members, at serving)",
        "rule": "scaffold folds of the team's rows; base and stack maps cross-fitted (fold k "
                "predicted by the map fitted on the other folds); the best out-of-fold score answers "
                "(ties: local, then base)",
        "local_only": {"uncertainty": local_calibration},
    }
    if test is not None and len(test["y"]):
        test_bases = test["bases"][:, keep]  # the columns of every base offered, as `outputs` was
        raw_test = {"local": test["local"],
                    "base": linear_output(test_bases, intercept_b, weights_b),
                    "stack": linear_output(np.column_stack([test["local"], test_bases]),
                                           intercept_s, weights_s)}
        from molserve.models import stacking

        section["test"] = {name: stacking.all_metrics(evidence.task, test["y"], evidence.label_scale(raw))
                           for name, raw in raw_test.items()}
        section["test_raw"] = raw_test[chosen]
    if chosen == "local":
        section.pop("test_raw", None)
        return {"section": section, "raw": None, "uncertainty": None}
    raw = predictions[chosen]
    if evidence.task == "regression":
        residual = np.abs(evidence.target - raw)
        quantiles = {str(c): conformal_quantile(residual, c) for c in CONFIDENCE_LEVELS}
        uncertainty = {
            "method": f"split conformal on the {chosen} model's cross-fitted out-of-fold absolute "
                      "residuals (every team row)",
            "scale": "none", "quantile": quantiles[str(CONFIDENCE)], "confidence": CONFIDENCE,
            "quantiles": quantiles, "levels": list(CONFIDENCE_LEVELS),
            "space": local_calibration.get("space", "value")}
    else:
        uncertainty = {"method": "ensemble spread (member probabilities of the combination)",
                       "confidence": CONFIDENCE,
                       "probability_calibration": {
                           "method": "none", "applied": False, "a": 1.0, "b": 0.0,
                           "reason": "the logistic map is fitted on the team's labels"}}
    test_raw = section.pop("test_raw", None)
    if test_raw is not None:
        from molserve.models import metrics as M

        chosen_test = dict(section["test"][chosen])
        if evidence.task == "regression":
            by_level = {level: M.interval_coverage(test["y"], evidence.to_label(test_raw - q),
                                                   evidence.to_label(test_raw + q))
                        for level, q in uncertainty["quantiles"].items()}
            chosen_test.update(interval_coverage=by_level[str(CONFIDENCE)],
                               interval_coverage_by_level=by_level)
        else:
            chosen_test["ece_uncalibrated"] = chosen_test["ece"]
        section["test_served"] = chosen_test
    return {"section": section, "raw": raw, "uncertainty": uncertainty}
