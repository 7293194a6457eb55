"""The numpy tree evaluators (level by level and the served forest) against LightGBM's own
predict, on random inputs full of NaN, zeros, near-zeros and split-threshold values."""

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molserve.models.trees import Forest, TreeEnsemble, from_lightgbm

WIDTH = 6

# LightGBM settings that give each kind of split: missing type None (use_missing=False, or a
# feature with no NaN in training), NaN (NaN seen in training), Zero (zero_as_missing).
CONFIGS = {
    "no_missing": {"use_missing": False},
    "nan_missing": {"use_missing": True},
    "zero_as_missing": {"use_missing": True, "zero_as_missing": True},
}


def _training_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 800
    x = rng.normal(size=(n, WIDTH)).astype(np.float32)
    x[:, 1] = rng.integers(-2, 3, size=n)  # many exact zeros, both signs around them
    x[rng.random(n) < 0.25, 0] = np.nan
    x[rng.random(n) < 0.3, 2] = 0.0
    x[rng.random(n) < 0.2, 3] = np.nan
    y = np.nan_to_num(x[:, 0], nan=3.0) + 2 * x[:, 1] - np.nan_to_num(x[:, 3], nan=-2.0) \
        + (x[:, 2] == 0) * 1.5 + rng.normal(scale=0.1, size=n)
    return x, y


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def trained(request):
    x, y = _training_data(7)
    params = {"objective": "regression", "verbose": -1, "num_leaves": 15, "min_data_in_leaf": 5,
              "seed": 3, "deterministic": True, "num_threads": 1, **CONFIGS[request.param]}
    boosters = [lgb.train({**params, "seed": s}, lgb.Dataset(x, y), 30) for s in (1, 2)]
    kinds: set[str] = set()

    def visit(node):
        if "split_feature" in node:
            kinds.add(node["missing_type"])
            visit(node["left_child"])
            visit(node["right_child"])

    for booster in boosters:
        for tree in booster.dump_model()["tree_info"]:
            visit(tree["tree_structure"])
    # The configuration exercises the split kind it is named for (else the test proves nothing).
    assert {"no_missing": "None", "nan_missing": "NaN", "zero_as_missing": "Zero"}[request.param] in kinds
    ensemble = from_lightgbm(boosters)
    thresholds = ensemble.threshold[np.isfinite(ensemble.threshold)]
    return request.param, boosters, ensemble, thresholds


def _special_values(thresholds: np.ndarray) -> st.SearchStrategy:
    at = st.sampled_from(thresholds.tolist())
    near = at.flatmap(lambda t: st.sampled_from([
        float(np.nextafter(np.float32(t), np.float32(np.inf))),
        float(np.nextafter(np.float32(t), np.float32(-np.inf)))]))
    return st.one_of(
        st.just(float("nan")), st.just(0.0), st.just(-0.0),
        st.sampled_from([1e-36, -1e-36, 1e-35, -1e-35, 1.1e-35, 1e-40, 1e-30]),
        at, near,
        st.floats(-4, 4, width=32),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_numpy_trees_match_lightgbm_predict_on_nan_zero_and_threshold_inputs(trained, data):
    _, boosters, ensemble, thresholds = trained
    rows = data.draw(st.integers(1, 12))
    values = data.draw(st.lists(_special_values(thresholds), min_size=rows * WIDTH,
                                max_size=rows * WIDTH))
    x = np.array(values, dtype=np.float32).reshape(rows, WIDTH)
    expected = np.stack([b.predict(x.astype(np.float64), raw_score=True) for b in boosters], axis=1)
    level_by_level = ensemble.raw_scores(x)
    forest = Forest.from_ensemble("m", ensemble).raw_scores(x)
    assert np.abs(level_by_level - expected).max() < 1e-9
    assert np.abs(forest - expected).max() < 1e-9


def test_each_kind_of_split_routes_nan_and_zero_as_lightgbm_does(trained):
    # A fixed grid as well: every column NaN, zero, or a near-zero in turn, the rest typical values.
    _, boosters, ensemble, _ = trained
    base = np.array([0.3, 1.0, -0.7, 0.2, 1.5, -1.2], dtype=np.float32)
    rows = [base.copy()]
    for column in range(WIDTH):
        for value in (np.nan, 0.0, -0.0, 1e-36, -1e-38):
            row = base.copy()
            row[column] = value
            rows.append(row)
    x = np.array(rows, dtype=np.float32)
    x_all_nan = np.full((1, WIDTH), np.nan, dtype=np.float32)
    x = np.concatenate([x, x_all_nan, np.zeros((1, WIDTH), np.float32)])
    expected = np.stack([b.predict(x.astype(np.float64), raw_score=True) for b in boosters], axis=1)
    assert np.abs(ensemble.raw_scores(x) - expected).max() < 1e-9
    assert np.abs(Forest.from_ensemble("m", ensemble).raw_scores(x) - expected).max() < 1e-9


def test_missing_rules_survive_storage_and_stacking(tmp_path, trained):
    name, boosters, ensemble, _ = trained
    ensemble.save(tmp_path / "t.safetensors")
    loaded = TreeEnsemble.load(tmp_path / "t.safetensors")
    assert np.array_equal(loaded.missing, ensemble.missing)
    x = np.array([[np.nan, 0.0, 0.0, np.nan, 1.0, -1.0], [0.5, np.nan, 1e-36, 0.0, 0.0, 0.0]],
                 dtype=np.float32)
    expected = np.stack([b.predict(x.astype(np.float64), raw_score=True) for b in boosters], axis=1)
    # Two models in one forest, the first with its columns moved (as the fast tier's stack does).
    moved = np.array([5, 4, 3, 2, 1, 0])
    forest = Forest.concat([(Forest.from_ensemble("a", loaded), moved),
                            (Forest.from_ensemble("b", loaded), None)])
    assert np.abs(forest.part(["b"]).raw_scores(x) - expected).max() < 1e-9
    inverse = np.argsort(moved)
    assert np.abs(forest.part(["a"]).raw_scores(x[:, inverse]) - expected).max() < 1e-9
