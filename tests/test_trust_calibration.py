"""Intervals and probabilities are calibrated on molecules that played no part in model
selection, at 80, 90 and 95%, and served exactly as they were evaluated."""

import numpy as np
import pytest

import molserve.models.gbm_train as G
from molserve.data.bundled import load_bundled
from molserve.models.gbm_runtime import FastModel
from molserve.registry.store import Registry


def _train(dataset, tmp_path, monkeypatch, seen):
    import lightgbm as lgb

    real_train, real_sides, real_calibration = lgb.train, G._choose_sides, G.calibration_molecules

    def train(params, train_set, *args, valid_sets=None, **kwargs):
        if valid_sets:  # a selection run: record the molecules it was trained and stopped on
            seen["selection"].append((np.asarray(train_set.used_indices),
                                      np.asarray(valid_sets[0].used_indices)))
        return real_train(params, train_set, *args, valid_sets=valid_sets, **kwargs)

    def sides(*args, **kwargs):
        seen["sides"] = real_sides(*args, **kwargs)
        return seen["sides"]

    def calibration(*args, **kwargs):
        seen["calibration"] = real_calibration(*args, **kwargs)
        return seen["calibration"]

    monkeypatch.setattr(lgb, "train", train)
    monkeypatch.setattr(G, "_choose_sides", sides)
    monkeypatch.setattr(G, "calibration_molecules", calibration)
    registry = Registry(tmp_path)
    artifact, result = G.fit_and_evaluate(dataset, dataset.name, profile="quick", seed=0,
                                          threads=1, registry=registry)
    return artifact, result


@pytest.fixture(scope="module")
def solubility():
    return load_bundled("solubility")


def test_calibration_molecules_choose_nothing(solubility, tmp_path, monkeypatch):
    """They are train-side molecules, never among those that stopped boosting (chose the
    rounds and the recipe); the first rule calibrated on every fitted molecule, validation
    molecules included."""
    seen = {"selection": []}
    artifact, _ = _train(solubility, tmp_path, monkeypatch, seen)
    fit, calib = seen["sides"].fit, seen["calibration"]
    assert len(calib) >= 0.15 * len(seen["sides"].train)
    assert set(calib) <= set(seen["sides"].train.tolist())
    assert not set(calib.tolist()) & set(seen["sides"].valid.tolist())
    assert seen["selection"]
    for _trained, stopped in seen["selection"]:
        assert not set(fit[stopped].tolist()) & set(calib.tolist())
    recorded = artifact.manifest["uncertainty"]
    assert recorded["calibration_set"]["molecules"] == len(calib)
    assert set(recorded["quantiles"]) == {"0.8", "0.9", "0.95"}
    q = [recorded["quantiles"][k] for k in ("0.8", "0.9", "0.95")]
    assert q[0] < q[1] < q[2]
    coverage = artifact.manifest["metrics"]["test"]["interval_coverage_by_level"]
    assert set(coverage) == {"0.8", "0.9", "0.95"}
    assert coverage["0.8"] <= coverage["0.9"] <= coverage["0.95"]


def test_the_served_interval_at_each_level_is_the_evaluated_one(solubility, tmp_path, monkeypatch):
    from molserve.errors import InvalidInput

    seen = {"selection": []}
    artifact, result = _train(solubility, tmp_path, monkeypatch, seen)
    model = FastModel.load(artifact)
    test = seen["sides"].test[:20]
    from molserve.chem.features import featurize
    from molserve.data.curation import curate

    curated = curate(solubility)
    features = featurize([curated.mols[i] for i in test], model.spec)
    scores = model.forest.raw_scores(features.matrix)
    similarity, _ = model.reference().index.nearest_many(features.on_bits)
    widths = {}
    for level in (0.8, 0.9, 0.95):
        answers = model.answers(scores, similarity, [None] * len(test), confidence=level)
        low = np.array([a.uncertainty.interval[0] for a in answers])
        high = np.array([a.uncertainty.interval[1] for a in answers])
        assert all(a.uncertainty.confidence == level for a in answers)
        q = artifact.manifest["uncertainty"]["quantiles"][str(level)]
        assert artifact.manifest["uncertainty"]["scale"] == "none"
        assert np.abs((high - low) / 2 - q).max() < 1e-3  # solubility is served in its own units
        widths[level] = float(np.mean(high - low))
    assert widths[0.8] < widths[0.9] < widths[0.95]
    default = model.answers(scores, similarity, [None] * len(test))
    assert default[0].uncertainty.confidence == 0.9
    with pytest.raises(InvalidInput, match="0.8, 0.9, 0.95"):
        model.answers(scores, similarity, [None] * len(test), confidence=0.5)


def test_conformal_quantile_has_the_finite_sample_rank():
    scores = np.arange(1.0, 11.0)  # 1..10
    assert G.conformal_quantile(scores, 0.8) == 9.0  # ceil(11 * 0.8) = 9th smallest
    assert G.conformal_quantile(scores, 0.95) == 10.0  # capped at the largest
    assert G.conformal_quantile(np.zeros(0), 0.9) == float("inf")


def test_platt_scaling_recovers_a_known_miscalibration():
    rng = np.random.default_rng(0)
    margin = rng.normal(scale=2.0, size=4000)
    truth = 1 / (1 + np.exp(-(0.5 * margin - 0.3)))  # the margins are overconfident
    y = (rng.random(4000) < truth).astype(float)
    a, b = G.fit_platt(margin, y)
    assert abs(a - 0.5) < 0.08 and abs(b + 0.3) < 0.1
    chosen = G.choose_probability_calibration(margin, y, seed=0, apply=True)
    assert chosen["applied"]
    # On by default (re-decided by cross-validation inside TDC's train_val).
    assert G.choose_probability_calibration(margin, y, seed=0) == chosen
    # Switched off, the fitted map and the evidence are still recorded.
    off = G.choose_probability_calibration(margin, y, seed=0, apply=False)
    assert not off["applied"] and abs(off["a_fitted"] - chosen["a"]) < 1e-12
    assert off["cross_fitted_log_loss"] == chosen["cross_fitted_log_loss"]
    # Too few calibration molecules to decide: left alone, and the reason recorded.
    record = G.choose_probability_calibration(margin[:60], y[:60], seed=0)
    assert not record["applied"] and "fewer than 200" in record["reason"]


def test_expected_calibration_error_sees_overconfidence():
    from molserve.models.metrics import expected_calibration_error, reliability_curve

    y = np.array([1, 0] * 50, dtype=float)
    assert expected_calibration_error(y, np.full(100, 0.5)) == 0.0
    assert abs(expected_calibration_error(y, np.full(100, 0.9)) - 0.4) < 1e-12
    curve = reliability_curve(y, np.full(100, 0.9))
    assert curve == {"predicted": [0.9], "observed": [0.5], "count": [100]}


@pytest.mark.parametrize("scaled", [False, True])
def test_a_classifiers_calibrated_probabilities_are_served_as_evaluated(tmp_path, monkeypatch, scaled):
    from molserve.chem.features import featurize
    from molserve.data import tdc
    from molserve.models.gbm_train import _parse_rows

    if scaled:  # the served path of a model whose margins are Platt-scaled
        monkeypatch.setattr(G, "choose_probability_calibration", lambda raw, y, seed: {
            "method": "Platt", "fitted_on": f"{len(y)} test double", "applied": True,
            "a": 0.7, "b": 0.1})
    train_val, test = tdc.load("dili")
    artifact, result = G.fit_and_evaluate(train_val, "dili", test=test, split="tdc-scaffold",
                                          profile="quick", seed=1, threads=1,
                                          registry=Registry(tmp_path))
    platt = artifact.manifest["uncertainty"]["probability_calibration"]
    sizes = artifact.manifest["split"]["sizes"]
    calibration_size = sizes["calibration (part of train, never validation)"]
    assert platt["fitted_on"].startswith(f"{calibration_size} ")
    assert platt["applied"] == scaled
    if not scaled:
        assert calibration_size < 200  # too few to decide on
    test_metrics = artifact.manifest["metrics"]["test"]
    assert 0 <= test_metrics["ece"] <= 1 and 0 <= test_metrics["ece_uncalibrated"] <= 1
    if not platt["applied"]:
        assert test_metrics["ece"] == test_metrics["ece_uncalibrated"]
    model = FastModel.load(artifact)
    keys, mols, _ = _parse_rows(test.smiles[:25])
    features = featurize(mols, model.spec)
    similarity, _ = model.reference().index.nearest_many(features.on_bits)
    answers = model.answers(model.forest.raw_scores(features.matrix), similarity, [None] * 25)
    served = np.array([a.value for a in answers])
    assert np.abs(served - result["test_predictions"][:25]).max() < 1e-4


def test_the_manifest_says_how_each_threshold_was_computed_and_on_which_molecules(
        solubility, tmp_path, monkeypatch):
    seen = {"selection": []}
    artifact, _ = _train(solubility, tmp_path, monkeypatch, seen)
    uncertainty = artifact.manifest["uncertainty"]
    assert uncertainty["calibration_set"]["molecules"] == len(seen["calibration"])
    assert "chose nothing" in uncertainty["method"]
    assert set(uncertainty["test_coverage"]) == {"0.8", "0.9", "0.95"}
    domain = artifact.manifest["applicability_domain"]
    assert domain["computed_on"]["molecules"] == len(seen["sides"].fit)
    assert abs(domain["computed_on"]["similarity_quantiles"]["0.05"] - domain["threshold"]) < 1e-4
    assert domain["test"]["molecules"] == len(seen["sides"].test)
    assert 0.0 <= domain["test"]["in_domain_fraction"] <= 1.0


def test_the_calibration_set_is_drawn_as_the_test_side_is(solubility):
    """A scaffold split's test side is its rarest scaffolds, and so is the calibration set: no
    scaffold group left in training is smaller than one taken for calibration. (Shuffled groups
    of any size once made the intervals too narrow: LD50 was covered 83% of the time at 90%.)
    A random split calibrates on random molecules."""
    from collections import Counter

    from molserve.data.curation import curate
    from molserve.data.splits import murcko_scaffold

    curated = curate(solubility)
    sides = G._choose_sides(solubility, curated, split="scaffold", seed=0, split_labels=None,
                            has_test=False)
    calibration = G.calibration_molecules(curated.mols, sides.train, 0)
    assert 0.15 * len(sides.train) <= len(calibration) <= 0.2 * len(sides.train)
    sizes = Counter(murcko_scaffold(curated.mols[i]) for i in sides.train)
    chosen = {murcko_scaffold(curated.mols[i]) for i in calibration}
    assert all(sizes[g] == sum(murcko_scaffold(curated.mols[i]) == g for i in calibration) for g in chosen)
    assert max(sizes[g] for g in chosen) <= min(sizes[g] for g in sizes if g not in chosen)
    assert len(chosen) >= 10
    # Another seed takes other groups of the same sizes.
    assert set(G.calibration_molecules(curated.mols, sides.train, 1)) != set(calibration.tolist())

    random_side = G.calibration_molecules(curated.mols, sides.train, 0, rule="random")
    assert len(random_side) == len(sides.train) // 5 and set(random_side) <= set(sides.train.tolist())
    random_sizes = [sizes[murcko_scaffold(curated.mols[i])] for i in random_side]
    assert max(random_sizes) > max(sizes[g] for g in chosen)  # not only rare scaffolds
