"""Held-out metrics, in plain numpy (no scikit-learn import in any serving process)."""

from __future__ import annotations

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 1-based."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(values)]])
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return ranks


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, R2 and Spearman rho.

    >>> regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))["rmse"]
    0.0
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    residual = y_true - y_pred
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    spearman = float(np.corrcoef(_ranks(y_true), _ranks(y_pred))[0, 1]) if len(y_true) > 2 else 0.0
    return {
        "rmse": float(np.sqrt(np.mean(residual**2))),
        "mae": float(np.mean(np.abs(residual))),
        "r2": float(1.0 - np.sum(residual**2) / total) if total > 0 else 0.0,
        "spearman": spearman if np.isfinite(spearman) else 0.0,
        "n": int(len(y_true)),
    }


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum identity (ties count one half)."""
    y_true = np.asarray(y_true) > 0.5
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Average precision as scikit-learn computes it: sum over distinct score thresholds of
    (recall step) x precision, tied scores entering together.

    >>> average_precision(np.array([0, 1, 1, 0]), np.array([0.1, 0.8, 0.4, 0.4]))
    0.8333333333333333
    """
    y_true = np.asarray(y_true) > 0.5
    if not y_true.any():
        return float("nan")
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    ranked, hits = score[order], y_true[order]
    last_of_tie = np.concatenate([np.flatnonzero(np.diff(ranked) != 0), [len(ranked) - 1]])
    true_pos = np.cumsum(hits)[last_of_tie]
    precision = true_pos / (last_of_tie + 1)
    recall = true_pos / true_pos[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def spearman(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties), as scipy.stats.spearmanr."""
    a, b = _ranks(np.asarray(y_true, dtype=np.float64)), _ranks(np.asarray(y_pred, dtype=np.float64))
    value = float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else float("nan")
    return value


TDC_METRICS = ("mae", "spearman", "roc-auc", "pr-auc")


def tdc_metric(name: str, y_true: np.ndarray, prediction: np.ndarray) -> float:
    """One of the TDC leaderboard's metrics, computed as TDC's Evaluator does (scikit-learn's
    mean_absolute_error, roc_auc_score, average_precision_score; scipy's spearmanr)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    prediction = np.asarray(prediction, dtype=np.float64)
    if name == "mae":
        return float(np.mean(np.abs(y_true - prediction)))
    if name == "spearman":
        return spearman(y_true, prediction)
    if name == "roc-auc":
        return roc_auc(y_true, prediction)
    if name == "pr-auc":
        return average_precision(y_true, prediction)
    raise ValueError(f"unknown TDC metric {name!r}; known: {', '.join(TDC_METRICS)}")


def classification_metrics(y_true: np.ndarray, probability: np.ndarray) -> dict[str, float]:
    y_true = np.asarray(y_true, dtype=np.float64)
    p = np.clip(np.asarray(probability, dtype=np.float64), 1e-7, 1 - 1e-7)
    return {
        "roc_auc": roc_auc(y_true, p),
        "pr_auc": average_precision(y_true, p),
        "accuracy": float(np.mean((p >= 0.5) == (y_true > 0.5))),
        "brier": float(np.mean((p - y_true) ** 2)),
        "log_loss": float(-np.mean(y_true * np.log(p) + (1 - y_true) * np.log(1 - p))),
        "ece": expected_calibration_error(y_true, p),
        "positive_fraction": float(y_true.mean()),
        "n": int(len(y_true)),
    }


def roc_curve(y_true: np.ndarray, score: np.ndarray, points: int = 50) -> dict[str, list[float]]:
    """A thinned ROC curve (false and true positive rates) for plotting."""
    y_true = np.asarray(y_true) > 0.5
    order = np.argsort(-np.asarray(score), kind="mergesort")
    hits = y_true[order]
    tpr = np.concatenate([[0.0], np.cumsum(hits) / max(1, hits.sum())])
    fpr = np.concatenate([[0.0], np.cumsum(~hits) / max(1, (~hits).sum())])
    keep = np.unique(np.linspace(0, len(tpr) - 1, min(points, len(tpr))).astype(int))
    return {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()}


def reliability_curve(y_true: np.ndarray, probability: np.ndarray, bins: int = 10) -> dict[str, list]:
    """Equal-width probability bins: each non-empty bin's mean predicted probability, observed
    positive fraction and count (what a reliability diagram plots)."""
    y_true = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    predicted, observed, counts = [], [], []
    for b in range(bins):
        inside = which == b
        if inside.any():
            predicted.append(round(float(p[inside].mean()), 4))
            observed.append(round(float(y_true[inside].mean()), 4))
            counts.append(int(inside.sum()))
    return {"predicted": predicted, "observed": observed, "count": counts}


def expected_calibration_error(y_true: np.ndarray, probability: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean gap between the mean predicted
    probability and the observed positive fraction over equal-width bins.

    >>> expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5]))
    0.0
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(probability, dtype=np.float64)
    if len(p) == 0:
        return float("nan")
    which = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(p[inside].mean() - y_true[inside].mean())
    return float(total / len(p))


def interval_coverage(y_true: np.ndarray, low: np.ndarray, high: np.ndarray) -> float:
    """Share of `y_true` inside [low, high]."""
    y_true = np.asarray(y_true, dtype=np.float64)
    return float(np.mean((y_true >= low) & (y_true <= high))) if len(y_true) else float("nan")
