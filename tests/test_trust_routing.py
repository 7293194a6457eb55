"""Tiers are compared on equal evidence only: a worker model tested on another split than the
live fast model's (the fast model retrained on a new dataset version or split) is not preferred,
and the reason is available to say why."""

from types import SimpleNamespace

from molserve.prediction import choice
from molserve.registry.manifest import Manifest, split_evidence, unequal_evidence
from molserve.registry.store import Registry


def _fast(version: int, data_sha: str, rmse: float = 0.60, valid: float | None = None):
    metrics = {"test": {"rmse": rmse}, **({"valid": {"rmse": valid}} if valid is not None else {})}
    manifest = {"endpoint": "logbb", "version": version, "kind": "gbm", "task": "regression",
                "metrics": metrics, "files": {"data.csv": {"sha256": data_sha}}}
    return SimpleNamespace(artifact=SimpleNamespace(info=Manifest.model_validate(manifest),
                                                    manifest=manifest, version=version))


def _serving(fast, served: dict):
    """A stand-in for a Router with this fast model and these worker listings."""
    return SimpleNamespace(fast=SimpleNamespace(models={"logbb": fast} if fast else {}),
                           served_remotely=lambda: served)


def _preferred(router, endpoint: str) -> str:
    """What the router chooses (`Router.preferred_tier` asks `prediction.choice` the same)."""
    fast = router.fast.models.get(endpoint)
    listings = {tier: served[endpoint] for tier, served in router.served_remotely().items()
                if endpoint in served}
    return choice.preferred_tier(fast.artifact if fast else None, listings)


ON_V1 = {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"}
GRAPH_ON_V1 = {"metrics": {"rmse": 0.50}, "valid": {"rmse": 0.50}, "evidence": ON_V1}


def _graph_router(fast, listing):
    return _serving(fast, {"graph": {"logbb": listing}})


def test_a_better_worker_model_on_the_same_split_is_preferred():
    router = _graph_router(_fast(1, "aaa", valid=0.60), GRAPH_ON_V1)
    assert _preferred(router, "logbb") == "graph"
    # A newer fast model trained on the same rows and split is the same evidence.
    assert _preferred(_graph_router(_fast(2, "aaa", valid=0.60), GRAPH_ON_V1), "logbb") == "graph"


def test_a_worker_model_tested_on_a_previous_split_is_not_preferred_and_says_why():
    fast = _fast(2, "bbb", valid=0.60)  # retrained on a new dataset version / split
    router = _graph_router(fast, GRAPH_ON_V1)
    assert _preferred(router, "logbb") == "fast"
    why = unequal_evidence(fast.artifact.manifest, {"graph": GRAPH_ON_V1})
    assert "logbb v2 (gbm)" in why["graph"] and "not comparable" in why["graph"]


def test_a_worker_model_that_records_no_split_is_not_preferred():
    old_listing = {"metrics": {"rmse": 0.10}, "valid": {"rmse": 0.10}}  # lists no evidence
    assert _preferred(_graph_router(_fast(1, "aaa", valid=0.6), old_listing), "logbb") == "fast"
    by_version_only = {"metrics": {"rmse": 0.10}, "valid": {"rmse": 0.10},
                       "evidence": split_evidence({"shared_with": "logbb v1 (gbm)"})}
    router = _graph_router(_fast(1, "aaa", valid=0.6), by_version_only)
    assert _preferred(router, "logbb") == "graph"
    router = _graph_router(_fast(3, "aaa", valid=0.6), by_version_only)
    assert _preferred(router, "logbb") == "fast"


def test_a_transformer_better_on_the_test_split_is_not_chosen_by_auto():
    """The test split chooses nothing: a transformer validates on its own part of the split, so
    it has no evidence comparable with the fast tier's and answers only when asked by name."""
    transformer = {"metrics": {"rmse": 0.10}, "valid": {"rmse": 0.10}, "evidence": ON_V1}
    router = _serving(_fast(1, "aaa", 0.60, valid=0.6), {"transformer": {"logbb": transformer}})
    assert _preferred(router, "logbb") == "fast"
    # An endpoint only a worker serves is answered by it.
    alone = _serving(None, {"transformer": {"logbb": transformer}})
    assert _preferred(alone, "logbb") == "transformer"


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
    return _serving(fast, {"graph": {"logbb": graph_listing}})


def _fast_v(version: int, rmse: float, valid: float | None = None):
    return _fast(version, "aaa", rmse, valid)


def test_the_tiers_mean_is_preferred_only_where_it_beat_every_tier_with_the_live_fast_model():
    graph = {"metrics": {"rmse": 0.55}, "valid": {"rmse": 0.55},
             "evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"},
             "tiers_mean": {"fast_version": 1, "test": {"rmse": 0.60}, "valid": {"rmse": 0.50}}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.6), graph), "logbb") == "fast+graph"
    # The mean must beat the best tier alone, not just one of them.
    worse = {**graph, "tiers_mean": {"fast_version": 1, "test": {"rmse": 0.40}, "valid": {"rmse": 0.56}}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.6), worse), "logbb") == "graph"
    # Scored with another fast model (retrained on the same rows): the mean is not preferred.
    assert _preferred(_with_graph(_fast_v(2, 0.60, valid=0.6), graph), "logbb") == "graph"
    # A graph model on another split competes with nothing, its mean neither.
    stale = {**graph, "evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "zzz"}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.6), stale), "logbb") == "fast"


def test_the_fast_and_graph_tiers_are_chosen_on_their_shared_validation_molecules_never_the_test():
    """Where both record validation metrics (the same validation molecules), those decide; where
    one does not, nothing is compared and the fast tier answers: the test split chooses nothing."""
    on_v1 = {"evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"}}
    # Better on test, worse on validation: the validation side decides.
    graph = {**on_v1, "metrics": {"rmse": 0.50}, "valid": {"rmse": 0.70}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.65), graph), "logbb") == "fast"
    graph = {**on_v1, "metrics": {"rmse": 0.65}, "valid": {"rmse": 0.60}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.65), graph), "logbb") == "graph"
    # A fast model written without validation metrics: nothing to compare, the fast tier answers
    # (the test split, where the graph model is better, is not consulted).
    better_on_test = {**on_v1, "metrics": {"rmse": 0.10}, "valid": {"rmse": 0.60}}
    assert _preferred(_with_graph(_fast_v(1, 0.60), better_on_test), "logbb") == "fast"
    # The tiers' mean: its validation score against the best tier's.
    mean = {"fast_version": 1, "test": {"rmse": 0.70}, "valid": {"rmse": 0.55}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.65), {**graph, "tiers_mean": mean}),
                                 "logbb") == "fast+graph"
    mean = {"fast_version": 1, "test": {"rmse": 0.40}, "valid": {"rmse": 0.61}}
    assert _preferred(_with_graph(_fast_v(1, 0.60, valid=0.65), {**graph, "tiers_mean": mean}),
                                 "logbb") == "graph"


def _foundation_router(fast, listing, graph=None):
    served = {"foundation": {"logbb": listing}, **({"graph": {"logbb": graph}} if graph else {})}
    return _serving(fast, served)


def _cv(fast: float, foundation: float, blend: float | None, metric: str = "spearman", version: int = 1):
    cv = {"metric": metric, "folds": 5, "molecules": 500, "fast_version": version,
          "fast": {metric: fast}, "foundation": {metric: foundation}}
    if blend is not None:
        cv["fast+foundation"] = {metric: blend}
    return cv


def test_the_fast_foundation_and_blended_tiers_are_chosen_on_out_of_fold_scores_only():
    evidence = {"evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"}}
    blend = {"weight": 0.6, "fast_version": 1}
    # Spearman, higher is better: the blend wins out of fold, whatever the test metrics say.
    listing = {**evidence, "metrics": {"spearman": 0.1}, "cv": _cv(0.50, 0.55, 0.60), "blend": blend}
    assert _preferred(_foundation_router(_fast_v(1, 0.6), listing), "logbb") == "fast+foundation"
    listing = {**listing, "cv": _cv(0.50, 0.58, 0.57)}
    assert _preferred(_foundation_router(_fast_v(1, 0.6), listing), "logbb") == "foundation"
    listing = {**listing, "cv": _cv(0.60, 0.58, 0.57)}
    assert _preferred(_foundation_router(_fast_v(1, 0.6), listing), "logbb") == "fast"
    # MAE, lower is better.
    listing = {**listing, "cv": _cv(0.40, 0.45, 0.38, metric="mae")}
    assert _preferred(_foundation_router(_fast_v(1, 0.6), listing), "logbb") == "fast+foundation"
    # Fitted with another fast model version: no out-of-fold comparison; the fast tier answers.
    listing = {**listing, "cv": _cv(0.40, 0.30, 0.20, metric="mae", version=1)}
    assert _preferred(_foundation_router(_fast_v(2, 0.6), listing), "logbb") == "fast"
    # On another split: not compared at all.
    stale = {**listing, "evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "zzz"}}
    assert _preferred(_foundation_router(_fast_v(1, 0.6), stale), "logbb") == "fast"


def test_a_graph_model_competes_on_validation_only_where_the_fast_tier_won_out_of_fold():
    evidence = {"evidence": {"shared_with": "logbb v1 (gbm)", "data_sha256": "aaa"}}
    graph = {**evidence, "metrics": {"rmse": 0.5}, "valid": {"rmse": 0.50}}
    fast_wins = {**evidence, "cv": _cv(0.60, 0.55, 0.58), "blend": {"weight": 0.5, "fast_version": 1}}
    router = _foundation_router(_fast_v(1, 0.6, valid=0.65), fast_wins, graph)
    assert _preferred(router, "logbb") == "graph"
    foundation_wins = {**fast_wins, "cv": _cv(0.50, 0.65, 0.58)}
    router = _foundation_router(_fast_v(1, 0.6, valid=0.65), foundation_wins, graph)
    assert _preferred(router, "logbb") == "foundation"
