"""The fast and graph tiers' mean: how two answers are averaged, and how the mean is scored on
the test molecules the two tiers share when a graph model is trained (the router serves it,
`molserve.prediction.blend`, where that score beats every tier alone).

- Regression: the mean on the scale the models learn on (log10 for skewed targets such as
  clearance), back in the label's units; an interval's ends are averaged the same way.
- Classification: the two probabilities' mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from molserve.models import metrics as M
from molserve.registry.store import Artifact

_TINY = 1e-12


def mean_values(fast: np.ndarray, other: np.ndarray, task: str, transform: Any,
                weight: float = 0.5) -> np.ndarray:
    """`(1 - weight) * fast + weight * other` of two tiers' answers in label units (regression,
    averaged on the model's scale) or probabilities: the tiers' mean at the default weight, a
    stacked blend at a fitted one."""
    fast, other = np.asarray(fast, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if task != "regression" or transform is None or transform.kind == "identity":
        return (1 - weight) * fast + weight * other
    offset = transform.offset

    def forward(y: np.ndarray) -> np.ndarray:  # rounded answers can touch the scale's floor
        return np.log10(np.maximum(y + offset, _TINY))

    return transform.inverse((1 - weight) * forward(fast) + weight * forward(other))


def shifted(values: np.ndarray, delta: float, task: str, transform: Any) -> np.ndarray:
    """Answers moved by `delta` on the model's scale (an interval's ends around a value)."""
    values = np.asarray(values, dtype=np.float64)
    if task != "regression" or transform is None or transform.kind == "identity":
        return values + delta
    return transform.inverse(np.log10(np.maximum(values + transform.offset, _TINY)) + delta)


def fast_answers(fast: Artifact, smiles: list[str]):
    """The fast model's answers to canonical SMILES, computed as the fast tier serves them."""
    from molserve.chem.features import featurize
    from molserve.chem.molecules import parse_smiles
    from molserve.models.gbm_runtime import FastModel

    model = FastModel.load(fast)
    mols = [parse_smiles(s).mol for s in smiles]
    features = featurize(mols, model.spec)
    assert model.forest is not None
    raw = model.forest.raw_scores(features.matrix)
    reference = model.reference()
    similarity, nearest = reference.index.nearest_many(features.on_bits)
    names = [reference.smiles[i] if i >= 0 else None for i in nearest.tolist()]
    return model.answers(raw, similarity, names)


def fast_valid_predictions(fast: Artifact, n_valid: int) -> np.ndarray | None:
    """The fast model's selection model's answers on its validation rows (data.csv order), as
    its manifest records them; None for a model written without them."""
    predicted = (fast.manifest.get("valid_predictions") or {}).get("predicted")
    if predicted is None or len(predicted) != n_valid:
        return None
    return np.asarray(predicted, dtype=np.float64)


def tiers_mean(fast: Artifact, smiles: list[str], y: np.ndarray, graph: np.ndarray,
               graph_interval: tuple[np.ndarray, np.ndarray] | None,
               valid: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """The mean of the fast model's answers and the graph model's (`graph`, and its interval's
    ends for regression) on the test molecules, scored: the metrics, and for regression the
    coverage and width of the mean's interval (both 90% intervals, ends averaged). With `valid`
    (the validation rows' labels and the graph model's answers, data.csv order) and a fast model
    that recorded its selection model's validation answers, the mean is scored there too
    (`valid`): what routing compares with each tier's validation score."""
    from molserve.models.gbm_runtime import TargetTransform

    answers = fast_answers(fast, smiles) if smiles else []
    kind = fast.info.task
    transform = TargetTransform(**fast.manifest.get("target_transform", {}))
    both = mean_values(np.array([a.value for a in answers], dtype=np.float64), graph, kind, transform)
    out: dict[str, Any] = {"fast_version": fast.version,
                           "method": "mean of the fast model's answers and the graph model's, on "
                                     "the model's scale (classifiers: the probabilities' mean)"}
    scores = M.regression_metrics if kind == "regression" else M.classification_metrics
    if valid is not None and (on_valid := fast_valid_predictions(fast, len(valid[0]))) is not None:
        out["valid"] = scores(valid[0], mean_values(on_valid, valid[1], kind, transform))
    if not len(y):  # a production fast model holds nothing out
        out["test"] = {}
        return out
    if kind != "regression":
        out["test"] = M.classification_metrics(y, both)
        return out
    test = M.regression_metrics(y, both)
    if graph_interval is not None and all(a.uncertainty and a.uncertainty.interval for a in answers):
        ends = np.array([a.uncertainty.interval for a in answers], dtype=np.float64)
        low = mean_values(ends[:, 0], graph_interval[0], kind, transform)
        high = mean_values(ends[:, 1], graph_interval[1], kind, transform)
        test["interval_coverage"] = float(np.mean((y >= low) & (y <= high)))
        test["interval_mean_width"] = float(np.mean(high - low))
    out["test"] = test
    return out
