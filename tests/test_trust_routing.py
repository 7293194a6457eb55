"""Tiers are compared on equal evidence only: a worker model tested on another split than the
live fast model's (the fast model retrained on a new dataset version or split) is not preferred,
and the reason is available to say why."""

from types import SimpleNamespace

from molserve.prediction.router import Router
from molserve.registry.manifest import Manifest, split_evidence, unequal_evidence
from molserve.registry.store import Registry


def _fast(version: int, data_sha: str, rmse: float = 0.60, valid: float | None = None):
    metrics = {"test": {"rmse": rmse}, **({"valid": {"rmse": valid}} if valid is not None else {})}
    manifest = {"endpoint": "logbb", "version": version, "kind": "gbm", "task": "regression",
                "metrics": metrics, "files": {"data.csv": {"sha256": data_sha}}}
    return SimpleNamespace(artifact=SimpleNamespace(info=Manifest.model_validate(manifest),
                                                    manifest=manifest))


def _router(fast, listing):
    return SimpleNamespace(fast=SimpleNamespace(models={"logbb": fast}),
                           served_remotely=lambda: {"transformer": {"logbb": listing}})


TRANSFORMER_ON_V1 = {"metrics": {"rmse": 0.50},
                     "evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"}}


def test_a_better_worker_model_on_the_same_split_is_preferred():
    router = _router(_fast(1, "aaa"), TRANSFORMER_ON_V1)
    assert Router.preferred_tier(router, "logbb") == "transformer"
    # A newer fast model trained on the same rows and split is the same evidence.
    assert Router.preferred_tier(_router(_fast(2, "aaa"), TRANSFORMER_ON_V1), "logbb") == "transformer"


def test_a_worker_model_tested_on_a_previous_split_is_not_preferred_and_says_why():
    fast = _fast(2, "bbb")  # retrained on a new dataset version / split
    router = _router(fast, TRANSFORMER_ON_V1)
    assert Router.preferred_tier(router, "logbb") == "fast"
    why = unequal_evidence(fast.artifact.manifest, {"transformer": TRANSFORMER_ON_V1})
    assert "logbb v2 (gbm)" in why["transformer"] and "not comparable" in why["transformer"]


def test_a_worker_model_that_records_no_split_is_not_preferred():
    old_listing = {"metrics": {"rmse": 0.10}}  # a worker that lists no evidence
    assert Router.preferred_tier(_router(_fast(1, "aaa"), old_listing), "logbb") == "fast"
    by_version_only = {"metrics": {"rmse": 0.10},
                       "evidence": split_evidence({"shared_with": "logbb v1 (gbm)"})}
    assert Router.preferred_tier(_router(_fast(1, "aaa"), by_version_only), "logbb") == "transformer"
    assert Router.preferred_tier(_router(_fast(3, "aaa"), by_version_only), "logbb") == "fast"


def test_models_list_can_say_which_worker_models_are_on_a_stale_split(tmp_path):
    registry = Registry(tmp_path)
    fast = registry.write("logbb", {"data.csv": b"smiles,label,split\nCCO,1,train\n"},
                          {"kind": "gbm", "task": "regression"})
    transformer = registry.write("logbb", {"model.onnx": b"x"}, {
        "kind": "transformer", "task": "regression",
        "split": {"shared_with": f"logbb v{fast.version} (gbm)",
                  "evidence": {"data_sha256": fast.manifest["files"]["data.csv"]["sha256"]}}})
    assert registry.evidence_notes(transformer) == {}
    registry.write("logbb", {"data.csv": b"smiles,label,split\nCCO,1,test\n"},
                   {"kind": "gbm", "task": "regression"})
    notes = registry.evidence_notes(transformer)
    assert "not comparable" in notes["logbb"]
    # ... and `molserve models list` prints the note under the transformer's row.
    from typer.testing import CliRunner

    from molserve.cli import app

    listed = CliRunner().invoke(app, ["--registry", str(tmp_path), "models", "list"])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    row = next(i for i, line in enumerate(lines) if line.split()[:3] == ["logbb", "2", "transformer"])
    assert "not comparable" in lines[row + 1]


def _with_graph(fast, graph_listing):
    return SimpleNamespace(fast=SimpleNamespace(models={"logbb": fast}),
                           served_remotely=lambda: {"graph": {"logbb": graph_listing}})


def _fast_v(version: int, rmse: float, valid: float | None = None):
    fast = _fast(version, "aaa", rmse, valid)
    fast.artifact.version = version
    return fast


def test_the_tiers_mean_is_preferred_only_where_it_beat_every_tier_with_the_live_fast_model():
    graph = {"metrics": {"rmse": 0.55}, "evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"},
             "tiers_mean": {"fast_version": 1, "test": {"rmse": 0.50}}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60), graph), "logbb") == "fast+graph"
    # The mean must beat the best tier alone, not just one of them.
    worse = {**graph, "tiers_mean": {"fast_version": 1, "test": {"rmse": 0.56}}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60), worse), "logbb") == "graph"
    # Scored with another fast model (retrained on the same rows): the mean is not preferred.
    assert Router.preferred_tier(_with_graph(_fast_v(2, 0.60), graph), "logbb") == "graph"
    # A graph model on another split competes with nothing, its mean neither.
    stale = {**graph, "evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "zzz"}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60), stale), "logbb") == "fast"


def test_the_fast_and_graph_tiers_are_chosen_on_their_shared_validation_molecules_not_the_test():
    """Where both record validation metrics (the same validation molecules), those decide, even
    against the test split; where one does not, the test split does, as before."""
    on_v1 = {"evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"}}
    # Better on test, worse on validation: the validation side decides.
    graph = {**on_v1, "metrics": {"rmse": 0.50}, "valid": {"rmse": 0.70}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60, valid=0.65), graph), "logbb") == "fast"
    graph = {**on_v1, "metrics": {"rmse": 0.65}, "valid": {"rmse": 0.60}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60, valid=0.65), graph), "logbb") == "graph"
    # A fast model written without validation metrics: the test split decides.
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60), graph), "logbb") == "fast"
    # The tiers' mean: its validation score against the best tier's.
    mean = {"fast_version": 1, "test": {"rmse": 0.70}, "valid": {"rmse": 0.55}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60, valid=0.65), {**graph, "tiers_mean": mean}),
                                 "logbb") == "fast+graph"
    mean = {"fast_version": 1, "test": {"rmse": 0.40}, "valid": {"rmse": 0.61}}
    assert Router.preferred_tier(_with_graph(_fast_v(1, 0.60, valid=0.65), {**graph, "tiers_mean": mean}),
                                 "logbb") == "graph"
    # A transformer records no validation on the fast model's molecules: compared on test.
    transformer = {**on_v1, "metrics": {"rmse": 0.55}}
    router = SimpleNamespace(fast=SimpleNamespace(models={"logbb": _fast_v(1, 0.60, valid=0.40)}),
                             served_remotely=lambda: {"transformer": {"logbb": transformer}})
    assert Router.preferred_tier(router, "logbb") == "transformer"
