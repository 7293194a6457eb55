"""Local models on bundled ones (molserve.models.on_base): the linear maps, a team assay on a
different scale learned on top of `logbb`, what is served (the combination, computed again here
from the base's own trees), a retrained base (the local part answers, degraded, saying why), a
base that cannot be deleted while read, `--base auto`, training jobs and the learning curve."""

from __future__ import annotations

import csv
import random
import shutil

import numpy as np
import pytest

from molserve.models import on_base
from molserve.registry import Registry


def test_the_linear_maps_recover_a_linear_relation_and_are_cross_fitted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = 2.0 + 3.0 * x[:, 0] - 0.5 * x[:, 1] + rng.normal(scale=0.01, size=400)
    intercept, weights = on_base.fit_linear("regression", x, y, penalty=0.0)
    assert intercept == pytest.approx(2.0, abs=0.01) and weights == pytest.approx([3.0, -0.5], abs=0.01)
    margin = -1.0 + 2.0 * x[:, 0]
    labels = (rng.random(400) < 1 / (1 + np.exp(-margin))).astype(float)
    intercept, weights = on_base.fit_linear("classification", x, labels, penalty=0.0)
    assert intercept == pytest.approx(-1.0, abs=0.4) and weights[0] == pytest.approx(2.0, abs=0.5)
    assert abs(weights[1]) < 0.4
    # Cross-fitted: fold k's rows are predicted by a map that never saw them (a row with an
    # outlying label moves its own prediction only through the other folds' map).
    folds = np.arange(400) % 4
    spiked = y.copy()
    spiked[0] = 1e6
    honest = on_base.cross_fitted("regression", x, spiked, folds)
    assert abs(honest[0] - y[0]) < 0.1
    assert np.isfinite(honest).all()


def test_a_combination_adds_the_bases_to_every_member():
    combination = on_base.Combination("stack", (on_base.BasePin("b", 1, "b/gbm", "x"),), 0.5, 2.0, (3.0,), {})
    local = np.array([[1.0, 2.0], [0.0, 0.0]])
    bases = np.array([[1.0], [-1.0]])
    assert combination.apply(local, bases).tolist() == [[5.5, 7.5], [-2.5, -2.5]]


def _team_file(registry: Registry, path, rows: int = 150, seed: int = 0) -> None:
    """A team's assay: logBB on another scale (3 x logBB + 5) with noise."""
    data = registry.latest("logbb", kind="gbm").file("data.csv")
    records = list(csv.DictReader(data.open()))
    rng = random.Random(seed)
    rng.shuffle(records)
    with open(path, "w") as handle:
        handle.write("smiles,y\n")
        for record in records[:rows]:
            label = 3 * float(record["label"]) + 5 + rng.gauss(0, 0.2)
            handle.write(f"{record['canonical_smiles']},{label:.4f}\n")


@pytest.fixture()
def team(trained_registry, tmp_path):
    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root, ignore=shutil.ignore_patterns(".embeddings", ".serving"))
    registry = Registry(root)
    _team_file(registry, tmp_path / "team.csv")
    return registry, tmp_path / "team.csv"


def _train(registry: Registry, path, base: list[str], endpoint: str = "team_bbb"):
    from molserve.operations.training import FastParams, table_jobs, train_fast

    [(name, dataset)] = table_jobs(path, label_cols=["y"], endpoint=endpoint, split="scaffold")
    return train_fast(registry, dataset, name, FastParams(profile="quick", base=base))


def _served(registry: Registry, molecules: list[str], endpoints: list[str]):
    from molserve.prediction.router import Router

    router = Router(registry)
    router.load()
    import asyncio

    return asyncio.run(router.predict(molecules, endpoints))


def test_a_team_assay_learns_on_top_of_a_bundled_endpoint_and_serves_the_combination(team):
    registry, path = team
    artifact = _train(registry, path, ["logbb"])
    section = artifact.manifest["on_base"]
    base = registry.latest("logbb", kind="gbm")
    assert section["bases"] == [on_base.pin(base).to_dict()]
    # The three candidates scored out of fold; logBB on another scale is what the team measured,
    # so the recalibrated base beats the local model learned from 150 rows.
    assert set(section["scores"]) == {"local", "base", "stack"}
    assert set(section["out_of_fold"]) == {"local", "base", "stack"}
    assert section["scores"]["base"] > section["scores"]["local"]
    assert section["chosen"] in ("base", "stack")
    assert artifact.manifest["metrics"]["out_of_fold"] == section["out_of_fold"][section["chosen"]]
    assert artifact.manifest["metrics"]["on_base"]["chosen"] == section["chosen"]
    # Served: the map applied to the local members and the base's mean member raw score,
    # computed again here from each model's own trees and features.
    molecules = ["CCO", "c1ccccc1CCN", "CC(=O)Oc1ccccc1C(=O)O", "CN1CCC[C@H]1c1cccnc1"]
    answers = _served(registry, molecules, ["team_bbb", "logbb"])
    outputs = on_base.base_outputs([base], [r["canonical_smiles"] for r in answers["results"]])
    from rdkit import Chem

    from molserve.chem.features import featurize
    from molserve.models.gbm_runtime import FastModel

    local = FastModel.load(artifact)
    mols = [Chem.MolFromSmiles(r["canonical_smiles"]) for r in answers["results"]]
    members = local.forest.raw_scores(featurize(mols, local.spec).matrix)
    served = section["served"]
    expected = (served["intercept"] + served["local_weight"] * members.mean(axis=1)
                + outputs[:, 0] * served["base_weights"][0])
    for row, value in zip(answers["results"], expected, strict=True):
        answer = row["predictions"]["team_bbb"]
        assert answer.value == pytest.approx(value, abs=1e-3)
        assert answer.provenance.details["on_base"] == {"combination": section["chosen"],
                                                        "bases": [f"logbb v{base.version}"]}
        assert answer.uncertainty.interval[0] < answer.value < answer.uncertainty.interval[1]
        assert not answer.provenance.degraded
    assert answers["tiers"]["team_bbb"] == "fast"


def test_a_retrained_base_leaves_the_local_part_answering_and_saying_why(team):
    registry, path = team
    artifact = _train(registry, path, ["logbb"])
    old = registry.latest("logbb", kind="gbm")
    # A bundled base the local model reads is not deleted unless forced.
    from molserve.errors import Conflict

    with pytest.raises(Conflict) as refused:
        registry.delete("logbb", old.version)
    assert refused.value.code == "base_in_use" and f"team_bbb v{artifact.version}" in str(refused.value)
    # A new version of the base (its files copied): the fitted map no longer applies.
    files = {name: old.path / name for name in old.manifest["files"]}
    manifest = {k: v for k, v in old.manifest.items() if k not in ("files", "version", "endpoint")}
    registry.write("logbb", files, manifest)
    answers = _served(registry, ["CCO", "c1ccccc1CCN"], ["team_bbb"])
    from molserve.models.gbm_runtime import FastModel

    local = FastModel.load(artifact)
    from rdkit import Chem

    from molserve.chem.features import featurize

    members = local.forest.raw_scores(featurize([Chem.MolFromSmiles(s) for s in ("CCO", "NCCc1ccccc1")],
                                                local.spec).matrix)
    for row, value in zip(answers["results"], members.mean(axis=1), strict=True):
        answer = row["predictions"]["team_bbb"]
        assert answer.provenance.degraded
        assert f"logbb v{old.version}" in answer.provenance.degraded_reason
        assert "local part alone" in answer.provenance.degraded_reason
        assert answer.value == pytest.approx(value, abs=1e-3)
    # Forced, the old version goes.
    registry.delete("logbb", old.version, force=True)
    assert old.version in registry.deleted("logbb")


def test_auto_keeps_the_bases_that_help_out_of_fold(team):
    registry, path = team
    artifact = _train(registry, path, ["auto"], endpoint="team_auto")
    section = artifact.manifest["on_base"]
    kept = [b["endpoint"] for b in section["bases"]]
    assert "logbb" in kept and len(kept) <= on_base.MAX_AUTO_BASES
    trail = section["auto"]
    assert trail[0]["bases"] == [] and trail[-1]["bases"] == kept
    scores = [step["stack_score"] for step in trail]
    assert scores == sorted(scores)  # each base kept improved the stack out of fold
    regression = {a.endpoint for a in on_base.candidate_bases(registry, "regression", "team_auto")}
    assert set(kept) <= regression


def test_bad_bases_are_refused_before_training(team):
    registry, path = team
    from molserve.errors import InvalidInput

    for base, code in ((["no_such_endpoint"], "no_base"), (["auto", "logbb"], "invalid_base"),
                       (["team_bbb"], "invalid_base")):
        with pytest.raises(InvalidInput) as refused:
            _train(registry, path, base)
        assert refused.value.code == code, base


def test_the_learning_curve_scores_the_three_candidates_at_growing_sizes(team):
    registry, path = team
    from molserve.operations.training import FastParams, learning_curve, table_jobs

    [(name, dataset)] = table_jobs(path, label_cols=["y"], endpoint="team_bbb", split="scaffold")
    params = FastParams(profile="quick", base=["logbb"])
    rows = learning_curve(registry, dataset, name, params, sizes=(50, 100))
    assert [r["rows"] for r in rows] == [50, 100, 150]
    for row in rows:
        assert set(row["scores"]) == {"local", "base", "stack"}, row
        assert row["bases"] == ["logbb"]
    assert registry.latest("team_bbb") is None  # nothing registered


def test_a_training_job_names_its_bases_and_other_keys_private_endpoints_are_missing(trained_registry,
                                                                                    tmp_path):
    from tests.test_authorization import build
    from tests.test_ownership import _copy_model

    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root, ignore=shutil.ignore_patterns(".embeddings"))
    client, keys, world = build(tmp_path / "gateway", root)
    _copy_model(Registry(root), "logbb", "someone_elses", owner=world["owner"]["predict"],
                visibility="private")
    client.app.state.load_models()
    upload = tmp_path / "gateway" / "jobs" / "uploads" / "team.csv"
    _team_file(Registry(root), upload, rows=60)
    client.app.state.jobs.store.add_upload("a" * 32, world["owner"]["train"], "team.csv", str(upload),
                                           upload.stat().st_size)
    headers = {"x-api-key": keys["train"]}

    def submit(bases):
        return client.post("/v1/jobs", headers=headers, json={
            "kind": "train", "upload_id": "a" * 32, "label_col": "y", "endpoint": "team_job",
            "profile": "quick", "bases": bases})

    accepted = submit(["logbb"])
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["params"]["bases"] == ["logbb"]
    assert submit(["auto"]).status_code == 202
    for bases in (["someone_elses"], ["no_such_endpoint"]):
        refused = submit(bases)
        assert refused.status_code == 404 and refused.json()["error"] == "no_base", (bases, refused.text)
    refused = submit(["auto", "logbb"])
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_base", refused.text
    # The job runs it: the model names its base.
    from molserve.jobs.execute import main

    argv = ["--job", accepted.json()["id"], "--jobs-dir", str(tmp_path / "gateway" / "jobs"),
            "--registry", str(root), "--datasets", str(tmp_path / "gateway" / "datasets")]
    assert main(argv) == 0
    model = Registry(root).latest("team_job")
    assert model.manifest["on_base"]["bases"][0]["endpoint"] == "logbb"
