"""The bundled models: trained through the real pipeline, evaluated on scaffold-split test sets."""

from molserve.data.bundled import BUNDLED


def test_every_bundled_endpoint_is_registered_with_a_complete_manifest(trained_registry):
    for name in BUNDLED:
        artifact = trained_registry.latest(name, kind="gbm")
        assert artifact is not None, name
        manifest = artifact.manifest
        assert manifest["dataset"]["sha256"] and manifest["dataset"]["licence"]
        assert manifest["split"]["method"] == "scaffold"
        assert set(manifest["files"]) == {"trees.safetensors", "ad_index.safetensors", "data.csv",
                                          "train_smiles.txt", "lightgbm_members.txt", "out_of_fold.csv"}
        assert manifest["metrics"]["test"]["n"] == manifest["split"]["sizes"]["test"]
        assert "baseline_test" in manifest["metrics"]
        artifact.verify()


def test_boosted_models_beat_the_ridge_baseline_on_held_out_scaffolds(trained_registry):
    solubility = trained_registry.latest("solubility").manifest["metrics"]
    assert solubility["test"]["rmse"] < solubility["baseline_test"]["rmse"]
    assert solubility["test"]["r2"] > 0.7
    bbb = trained_registry.latest("bbb_penetration").manifest["metrics"]
    assert bbb["test"]["roc_auc"] > bbb["baseline_test"]["roc_auc"]
    assert bbb["test"]["roc_auc"] > 0.85


def test_intervals_cover_roughly_the_nominal_fraction(trained_registry):
    for name in ("solubility", "logbb", "hydration_free_energy", "pic50_chembl2321810"):
        coverage = trained_registry.latest(name).manifest["metrics"]["test"]["interval_coverage"]
        assert 0.65 <= coverage <= 1.0, (name, coverage)


def test_served_model_reproduces_its_test_predictions(trained_registry):
    """The model as the fast tier serves it gives the numbers the manifest was scored on."""
    import numpy as np

    from molserve.prediction.router import Router

    artifact = trained_registry.latest("logbb")
    rows = [line.split(",") for line in artifact.file("data.csv").read_text().splitlines()[1:]]
    test = [r for r in rows if r[2] == "test"]
    router = Router(trained_registry)
    router.load(only=["logbb"])
    answered = router.predict_local([r[0] for r in test], ["logbb"])["results"]
    served = np.array([r["predictions"]["logbb"].value for r in answered])
    recorded = np.array(artifact.manifest["test_predictions"]["predicted"])
    assert np.abs(served - recorded).max() < 1e-3
