import lightgbm as lgb
import numpy as np
import onnxruntime as ort

from molserve.models.metrics import average_precision, classification_metrics, regression_metrics, roc_auc
from molserve.models.onnx_trees import boosters_to_onnx


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 4, size=(600, 40)).astype(np.float32)
    x[:, 3] = rng.normal(size=600).astype(np.float32)
    y = 2 * x[:, 0] - x[:, 3] + rng.normal(scale=0.3, size=600) + 5
    return x, y


def test_onnx_ensemble_reproduces_lightgbm_regressors():
    x, y = _data()
    members = [
        lgb.train({"objective": "regression", "verbose": -1, "use_missing": False, "seed": s,
                   "bagging_fraction": 0.8, "bagging_freq": 1, "num_leaves": 15},
                  lgb.Dataset(x, y), 60)
        for s in range(3)
    ]
    session = ort.InferenceSession(boosters_to_onnx(members, 40), providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": x})[0]
    expected = np.stack([m.predict(x, raw_score=True) for m in members], axis=1)
    assert out.shape == (600, 3)
    assert np.abs(out - expected).max() < 1e-4


def test_onnx_reproduces_lightgbm_classifier_margins():
    x, y = _data(1)
    labels = (y > np.median(y)).astype(float)
    booster = lgb.train({"objective": "binary", "verbose": -1, "use_missing": False},
                        lgb.Dataset(x, labels), 40)
    session = ort.InferenceSession(boosters_to_onnx([booster], 40), providers=["CPUExecutionProvider"])
    margin = session.run(None, {"features": x})[0][:, 0]
    assert np.abs(margin - booster.predict(x, raw_score=True)).max() < 1e-4


def test_metrics_known_values():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert average_precision(np.array([1, 0, 1]), np.array([0.9, 0.8, 0.7])) == (1 + 2 / 3) / 2
    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 3.0, 3.5]))
    assert abs(m["rmse"] - np.sqrt(0.125)) < 1e-12 and abs(m["r2"] - 0.9) < 1e-12
    assert m["spearman"] == 1.0
    c = classification_metrics(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]))
    assert abs(c["accuracy"] - 2 / 3) < 1e-12
