"""Choices made on out-of-fold evidence: how tiers are scored against each other inside the
training data, and how two tiers' answers are stacked into one.

Every fitted molecule of an endpoint is predicted once by a model that never saw it (the fast
tier's ensemble members are trained on all scaffold folds but one; the foundation tier's heads
on the same folds). Those out-of-fold predictions are the evidence on which a tier, or a blend
of two, is chosen to answer: never the test split, which is only reported.

A blend is `(1 - w) * fast + w * other` on the scale the models learn on (log10 for skewed
targets; probabilities for classifiers), the weight `w` on a grid in [0, 1] chosen to score best
out of fold. Its own out-of-fold score is cross-fitted: the predictions of fold k use the weight
chosen on the other folds, so the blend's figure is not flattered by the choice of its weight.

Plain numpy: the gateway reads the recorded choices without importing anything heavy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from molserve.models import metrics as M

WEIGHTS = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))
LOWER_IS_BETTER = {"mae", "rmse"}
# The keys of regression_metrics / classification_metrics under the TDC metric names.
METRIC_KEYS = {"mae": "mae", "rmse": "rmse", "spearman": "spearman", "roc-auc": "roc_auc",
               "pr-auc": "pr_auc"}


def selection_metric(manifest: dict[str, Any]) -> str:
    """The metric an endpoint's choices are made with: its benchmark's metric when it has one
    (TDC's leaderboard metric), else RMSE (regression) or ROC AUC (classification)."""
    tdc = ((manifest.get("metrics") or {}).get("tdc") or {}).get("metric")
    if tdc:
        return tdc
    return "roc-auc" if manifest.get("task") == "classification" else "rmse"


def score(metric: str, y: np.ndarray, prediction: np.ndarray) -> float:
    """Higher is better: the metric, negated where lower is better (label units; classifiers'
    probabilities)."""
    y, prediction = np.asarray(y, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    if metric == "rmse":
        value = float(np.sqrt(np.mean((y - prediction) ** 2)))
    else:
        value = M.tdc_metric(metric, y, prediction)
    return -value if metric in LOWER_IS_BETTER else value


def recorded_score(metric: str, metrics: dict[str, Any] | None) -> float | None:
    """Higher is better, from a recorded metrics dictionary; None when it lacks the metric."""
    value = (metrics or {}).get(METRIC_KEYS.get(metric, metric))
    if value is None or not np.isfinite(value):
        return None
    return -float(value) if metric in LOWER_IS_BETTER else float(value)


def all_metrics(task: str, y: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    return (M.classification_metrics(y, prediction) if task == "classification"
            else M.regression_metrics(y, prediction))


def mix(fast: np.ndarray, other: np.ndarray, weight: float) -> np.ndarray:
    """The blend on the model scale (log10 values, or probabilities)."""
    return (1.0 - weight) * np.asarray(fast, dtype=np.float64) + weight * np.asarray(other, dtype=np.float64)


def choose_weight(metric: str, y: np.ndarray, fast: np.ndarray, other: np.ndarray,
                  to_label: Any = None) -> float:
    """The grid weight whose blend scores best (ties: the weight nearest 0.5, then the
    smaller). `to_label` maps the model scale to label units (regression), else identity."""
    back = to_label or (lambda v: v)
    best, best_score = 0.5, -np.inf
    for w in sorted(WEIGHTS, key=lambda w: (abs(w - 0.5), w)):
        value = score(metric, y, back(mix(fast, other, w)))
        if value > best_score + 1e-12:
            best, best_score = w, value
    return float(best)


def cross_fitted_blend(metric: str, y: np.ndarray, fast: np.ndarray, other: np.ndarray,
                       folds: Sequence[np.ndarray], to_label: Any = None) -> dict[str, Any]:
    """The weight chosen on all molecules, and the blend's honest out-of-fold predictions: those
    of fold k blended with the weight chosen on the other folds."""
    blended = np.full(len(y), np.nan)
    per_fold = []
    for held in folds:
        rest = np.setdiff1d(np.arange(len(y)), held)
        w = choose_weight(metric, y[rest], fast[rest], other[rest], to_label)
        per_fold.append(w)
        blended[held] = mix(fast[held], other[held], w)
    return {"weight": choose_weight(metric, y, fast, other, to_label),
            "fold_weights": per_fold, "out_of_fold": blended}


def best_choice(metric: str, candidates: dict[str, dict[str, Any] | None]) -> str | None:
    """The name whose recorded metrics score best by `metric` (ties: the first listed)."""
    best, best_score = None, -np.inf
    for name, metrics in candidates.items():
        value = recorded_score(metric, metrics)
        if value is not None and value > best_score + 1e-12:
            best, best_score = name, value
    return best
