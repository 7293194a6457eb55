import lightgbm as lgb
import numpy as np
import pytest

from molserve.models.metrics import (
    average_precision,
    classification_metrics,
    regression_metrics,
    roc_auc,
)
from molserve.models.trees import TreeEnsemble, from_lightgbm


def _data(seed=0, n=600, width=40):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(n, width)).astype(np.float32)
    x[:, 3] = rng.normal(size=n).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 3] + rng.normal(scale=0.3, size=n) + 5
    return x, y


@pytest.mark.parametrize("num_leaves", [4, 15, 63])
def test_flat_trees_reproduce_lightgbm_ensembles(tmp_path, num_leaves):
    x, y = _data()
    members = [
        lgb.train({"objective": "regression", "verbose": -1, "use_missing": False, "seed": s,
                   "bagging_fraction": 0.8, "bagging_freq": 1, "num_leaves": num_leaves},
                  lgb.Dataset(x, y), 60)
        for s in range(3)
    ]
    ensemble = from_lightgbm(members)
    ensemble.save(tmp_path / "t.safetensors")
    loaded = TreeEnsemble.load(tmp_path / "t.safetensors")
    expected = np.stack([m.predict(x, raw_score=True) for m in members], axis=1)
    scores = loaded.raw_scores(x)
    assert scores.shape == (600, 3)
    assert np.abs(scores - expected).max() < 1e-9
    # One row at a time gives the same numbers as the batch.
    assert np.abs(loaded.raw_scores(x[:1]) - expected[:1]).max() < 1e-9


def test_flat_trees_reproduce_classifier_margins_at_split_boundaries():
    x, y = _data(1)
    labels = (y > np.median(y)).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "use_missing": False},
                        lgb.Dataset(x, labels), 40)
    ensemble = from_lightgbm([booster])
    # Inputs exactly at and next to every threshold exercise the <= comparison.
    probe = np.repeat(x[:50], 3, axis=0).copy()
    internal = np.flatnonzero(np.isfinite(ensemble.threshold))[:50]
    for row, node in enumerate(internal):
        t = ensemble.threshold[node]
        probe[3 * row, ensemble.feature[node]] = t
        probe[3 * row + 1, ensemble.feature[node]] = np.nextafter(t, np.float32(np.inf))
        probe[3 * row + 2, ensemble.feature[node]] = np.nextafter(t, np.float32(-np.inf))
    margin = ensemble.raw_scores(probe)[:, 0]
    assert np.abs(margin - booster.predict(probe, raw_score=True)).max() < 1e-9


def test_a_single_leaf_tree_is_handled():
    x = np.zeros((20, 3), dtype=np.float32)
    booster = lgb.train({"objective": "regression", "verbose": -1, "use_missing": False,
                         "min_data_in_leaf": 1}, lgb.Dataset(x, np.full(20, 2.5)), 3)
    ensemble = from_lightgbm([booster])
    assert np.allclose(ensemble.raw_scores(x[:2])[:, 0], booster.predict(x[:2], raw_score=True))


def test_tdc_metrics_match_scikit_learn_and_scipy_on_ties():
    # Values from scikit-learn 1.x average_precision_score / roc_auc_score and scipy spearmanr.
    from molserve.models.metrics import tdc_metric

    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    score = np.array([0.1, 0.8, 0.4, 0.4, 0.9, 0.2, 0.4, 0.4])
    assert abs(tdc_metric("pr-auc", y, score) - 0.8333333333333333) < 1e-12
    assert abs(tdc_metric("roc-auc", y, score) - 0.875) < 1e-12
    a = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    b = np.array([2.0, 1.0, 4.0, 4.0, 5.0])
    assert abs(tdc_metric("spearman", a, b) - 0.7631578947368421) < 1e-12
    assert tdc_metric("mae", a, b) == 1.0
    with pytest.raises(ValueError, match="unknown TDC metric"):
        tdc_metric("rmse", a, b)


def test_metrics_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == (1 + 2 / 3) / 2
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 3.0, 3.5]))
    assert abs(m["rmse"] - np.sqrt(0.125)) < 1e-12 and abs(m["r2"] - 0.9) < 1e-12
    assert m["spearman"] == 1.0
    c = classification_metrics(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]))
    assert abs(c["accuracy"] - 2 / 3) < 1e-12


def test_scaffold_folds_cover_every_molecule_once_and_keep_scaffolds_whole():
    from collections import defaultdict

    from rdkit import Chem

    from molserve.data.bundled import load_bundled
    from molserve.data.splits import murcko_scaffold, scaffold_folds

    smiles = load_bundled("logbb").smiles[:400]
    mols = [m for m in (Chem.MolFromSmiles(s) for s in smiles) if m is not None]
    folds = scaffold_folds(mols, 5, seed=3)
    assert sorted(i for fold in folds for i in fold) == list(range(len(mols)))
    fold_of_scaffold = defaultdict(set)
    for k, fold in enumerate(folds):
        for i in fold:
            fold_of_scaffold[murcko_scaffold(mols[i])].add(k)
    assert all(len(found) == 1 for found in fold_of_scaffold.values())
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= max(len(g) for g in fold_of_scaffold) + 1
    assert folds != scaffold_folds(mols, 5, seed=4)


def test_log10_target_transform_round_trips_and_refuses_non_positive_labels():
    from molserve.models.gbm_runtime import TargetTransform

    transform = TargetTransform("log10", 0.0)
    y = np.array([0.5, 3.0, 120.0])
    assert np.allclose(transform.inverse(transform.forward(y)), y)
    with pytest.raises(ValueError, match="log10"):
        transform.forward(np.array([1.0, 0.0]))
    assert TargetTransform().forward(y) is y
