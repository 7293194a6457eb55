"""The graph tier: D-MPNN ensembles trained on a fast model's split, stored without pickles,
served by a real worker through a real gateway, which still imports no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("chemprop")

from molserve.registry import Registry  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.processes import gateway, start_worker, stop  # noqa: E402

# Small networks: the test checks the plumbing, not the accuracy (BENCHMARKS.md has that).
TINY = {"ensemble": 2, "epochs": 2, "hidden": 32, "depth": 2, "batch_size": 64, "patience": 2}
MOLECULES = ["CCO", "c1ccccc1O", "CC(=O)Oc1ccccc1C(=O)O", "not a smiles"]


@pytest.fixture(scope="module")
def graph_registry(trained_registry, tmp_path_factory) -> Registry:
    from molserve.operations.training import GraphParams, train_graph

    root = tmp_path_factory.mktemp("graph") / "registry"
    shutil.copytree(trained_registry.root, root)
    registry = Registry(root)
    train_graph(registry, ["logbb", "dili"], GraphParams(**TINY, device="cpu"))
    return registry


def test_a_graph_model_is_stored_in_safe_formats_and_scored_beside_the_fast_model(graph_registry):
    for endpoint in ("logbb", "dili"):
        artifact = graph_registry.latest(endpoint, kind="graph")
        fast = graph_registry.latest(endpoint, kind="gbm")
        assert artifact is not None and artifact.info.tier == "graph"
        assert {p.suffix for p in artifact.path.iterdir()} <= {".json", ".safetensors", ".txt"}
        assert sorted(artifact.manifest["files"]) == sorted(
            ["spec.json", "member0.safetensors", "member1.safetensors", "descriptor_cdf.safetensors",
             "ad_index.safetensors", "train_smiles.txt"])
        # Same curated data and split as the fast model: both are tested on the same molecules.
        assert artifact.manifest["split"]["shared_with"] == f"{endpoint} v{fast.version} (gbm)"
        assert artifact.info.metrics.fast_model_test == fast.info.metrics.test
        assert artifact.info.metrics.test["n"] == fast.info.metrics.test["n"]


def test_the_tiers_mean_is_scored_on_the_same_test_molecules_with_the_served_fast_answers(graph_registry):
    from molserve import Predictor
    from molserve.models.heldout import read_fast_rows

    artifact = graph_registry.latest("logbb", kind="graph")
    fast = graph_registry.latest("logbb", kind="gbm")
    mean = artifact.manifest["metrics"]["tiers_mean"]
    assert mean["fast_version"] == fast.version and mean["test"]["n"] == fast.info.metrics.test["n"]
    smiles, labels, split = read_fast_rows(fast)
    test = [i for i, side in enumerate(split) if side == "test"]
    served = Predictor(graph_registry.root, endpoints=["logbb"]).predict(
        [smiles[i] for i in test], endpoints=["logbb"])
    fast_values = np.array([row["logbb"] for row in served])
    graph_values = np.array(artifact.manifest["test_predictions"]["predicted"])
    y = np.array([labels[i] for i in test])
    rmse = float(np.sqrt(np.mean(((fast_values + graph_values) / 2 - y) ** 2)))
    assert abs(rmse - mean["test"]["rmse"]) < 1e-3  # logbb is modelled on its own scale
    assert 0 <= mean["test"]["interval_coverage"] <= 1
    from molserve.models.graph.pipeline import describe

    assert f"the tiers' mean RMSE {mean['test']['rmse']:.3f}" in describe(artifact)
    dili = graph_registry.latest("dili", kind="graph").manifest["metrics"]["tiers_mean"]
    assert 0 <= dili["test"]["roc_auc"] <= 1


def test_the_tiers_are_scored_on_the_same_validation_molecules_for_routing(graph_registry):
    """The fast model records its selection model's validation answers and their metrics; the
    graph model its own on the same molecules, and the tiers' mean of the two, recomputed here
    from the reloaded graph model."""
    from molserve.chem.molecules import parse_smiles
    from molserve.models import metrics as M
    from molserve.models.graph.pipeline import describe
    from molserve.models.graph.runtime import GraphModel
    from molserve.models.heldout import read_fast_rows

    fast = graph_registry.latest("logbb", kind="gbm")
    artifact = graph_registry.latest("logbb", kind="graph")
    smiles, labels, split = read_fast_rows(fast)
    valid = [i for i, side in enumerate(split) if side == "valid"]
    y = np.array([labels[i] for i in valid])
    fast_valid = np.array(fast.manifest["valid_predictions"]["predicted"])
    assert len(fast_valid) == len(valid)
    assert abs(M.regression_metrics(y, fast_valid)["rmse"] - fast.info.metrics.valid["rmse"]) < 1e-4
    recorded = artifact.manifest["metrics"]
    assert recorded["fast_model_valid"] == fast.info.metrics.valid
    model = GraphModel.load(artifact, device="cpu")
    graph_valid = model.outputs([parse_smiles(smiles[i]).mol for i in valid]).mean(axis=0)
    assert abs(M.regression_metrics(y, graph_valid)["rmse"] - recorded["valid"]["rmse"]) < 1e-3
    mean = M.regression_metrics(y, (fast_valid + graph_valid) / 2)  # logbb: its own scale
    assert abs(mean["rmse"] - recorded["tiers_mean"]["valid"]["rmse"]) < 1e-3
    assert f"validation RMSE graph {recorded['valid']['rmse']:.3f}" in describe(artifact)
    dili = graph_registry.latest("dili", kind="graph").manifest["metrics"]
    assert 0 <= dili["valid"]["roc_auc"] <= 1 and 0 <= dili["tiers_mean"]["valid"]["roc_auc"] <= 1


def test_a_reloaded_graph_model_answers_as_the_trained_one_with_intervals_and_domain(graph_registry):
    from molserve.chem.molecules import parse_smiles
    from molserve.models.graph.runtime import GraphModel
    from molserve.models.heldout import read_fast_rows

    artifact = graph_registry.latest("logbb", kind="graph")
    model = GraphModel.load(artifact, device="cpu")
    smiles, labels, split = read_fast_rows(graph_registry.latest("logbb", kind="gbm"))
    test = [s for s, side in zip(smiles, split, strict=True) if side == "test"]
    outputs = model.outputs([parse_smiles(s).mol for s in test])
    # The registered test predictions were made by the in-memory networks before saving.
    assert np.allclose(outputs.mean(axis=0), artifact.manifest["test_predictions"]["predicted"],
                       atol=1e-3)
    # Every molecule is predicted whatever the batch size: alone, and last of 65 (chemprop's
    # loader drops a last batch of one unless told not to).
    mols = [parse_smiles(s).mol for s in test[:64]] + [parse_smiles("CCO").mol]
    together = model.outputs(mols)
    alone = model.outputs([mols[-1]])
    assert np.allclose(together[:, -1], alone[:, 0], atol=1e-5)
    assert np.allclose(together[:, :64], outputs[:, :64], atol=1e-5)
    assert np.all(alone != 0)
    answers = model.predict(["CCO", "C1CC"])
    assert "unclosed ring" in answers[1]["error"]
    low, high = answers[0]["uncertainty"]["interval"]
    assert low < answers[0]["value"] < high
    assert answers[0]["provenance"]["tier"] == "graph"
    assert 0 <= answers[0]["applicability_domain"]["max_similarity"] <= 1
    dili = GraphModel.load(graph_registry.latest("dili", kind="graph"), device="cpu")
    answer = dili.predict(["CC(=O)Nc1ccc(O)cc1"])[0]
    assert 0 <= answer["value"] <= 1 and answer["label"] in ("no DILI", "DILI", "negative", "positive",
                                                            *(dili.info.label_names or []))
    low, high = answer["uncertainty"]["interval"]
    assert low <= answer["value"] <= high


def _ask(base: str, client: httpx.Client, tier: str) -> dict:
    response = client.post(f"{base}/v1/predict", json={
        "molecules": MOLECULES, "endpoints": ["logbb", "dili", "solubility"], "tier": tier},
        timeout=20)
    assert response.status_code == 200, response.text
    return response.json()


def test_graph_answers_come_through_a_real_worker_and_degrade_when_it_dies(graph_registry):
    port = free_port()
    worker = start_worker(graph_registry.root, port)
    try:
        with gateway(graph_registry.root, [f"http://127.0.0.1:{port}"],
                     MOLSERVE_WORKER_TIMEOUT_MS="5000") as (base, _):
            with httpx.Client() as client:
                deadline = time.monotonic() + 20
                while _ask(base, client, "graph")["tiers"]["logbb"] != "graph":
                    assert time.monotonic() < deadline, "the gateway never routed to the graph tier"
                    time.sleep(0.2)
                body = _ask(base, client, "graph")
                first = body["results"][0]["predictions"]
                assert first["logbb"]["provenance"]["tier"] == "graph"
                assert first["dili"]["provenance"]["tier"] == "graph"
                assert not first["logbb"]["provenance"].get("degraded")
                assert body["results"][3]["error"]  # the unreadable one, and only it
                # solubility has no graph model: the fast tier answers, saying why.
                assert body["degraded"]["solubility"] == "no_graph_model"
                endpoints = {e["name"]: e for e in client.get(f"{base}/v1/endpoints").json()}
                assert "graph" in endpoints["logbb"]["tiers"] and "fast" in endpoints["logbb"]["tiers"]
                graph_test = next(m for m in endpoints["logbb"]["models"] if m.get("tier") == "graph")
                assert "rmse" in graph_test["metrics"]
                # auto: the tier that scored better on the validation molecules both share.
                fast_valid = graph_registry.latest("logbb", kind="gbm").info.metrics.valid["rmse"]
                graph_valid = graph_test["valid"]["rmse"]
                expected = "graph" if graph_valid < fast_valid else "fast"
                recorded_mean = graph_registry.latest("logbb", kind="graph").manifest["metrics"][
                    "tiers_mean"]
                mean_rmse = recorded_mean["test"]["rmse"]
                if recorded_mean["valid"]["rmse"] < min(fast_valid, graph_valid):
                    expected = "fast+graph"  # the tiers' mean beat both on the same molecules
                assert endpoints["logbb"]["preferred_tier"] == expected
                assert _ask(base, client, "auto")["tiers"]["logbb"] == expected
                # The tiers' mean: listed beside the tiers, and answered on request.
                assert "fast+graph" in endpoints["logbb"]["tiers"]
                listed = next(m for m in endpoints["logbb"]["models"] if m["tier"] == "fast+graph")
                assert listed["metrics"]["rmse"] == mean_rmse
                assert listed["valid"] == recorded_mean["valid"]
                fast_rows = _ask(base, client, "fast")["results"]
                graph_rows = _ask(base, client, "graph")["results"]
                body = _ask(base, client, "fast+graph")
                assert body["tiers"]["logbb"] == "fast+graph"
                for f, g, b in zip(fast_rows[:3], graph_rows[:3], body["results"][:3], strict=True):
                    answer = b["predictions"]["logbb"]
                    assert answer["provenance"]["tier"] == "fast+graph"
                    assert abs(answer["value"] - (f["predictions"]["logbb"]["value"]
                                                  + g["predictions"]["logbb"]["value"]) / 2) < 1e-3
                    low, high = answer["uncertainty"]["interval"]
                    assert low < answer["value"] < high
                    p = b["predictions"]["dili"]["value"]
                    assert abs(p - (f["predictions"]["dili"]["value"]
                                    + g["predictions"]["dili"]["value"]) / 2) < 1e-3

                stop(worker)
                body = _ask(base, client, "graph")
                provenance = body["results"][0]["predictions"]["logbb"]["provenance"]
                assert provenance["tier"] == "fast" and provenance["degraded"]
                assert body["degraded"]["logbb"] in ("worker_unreachable", "circuit_open")
                body = _ask(base, client, "fast+graph")
                provenance = body["results"][0]["predictions"]["logbb"]["provenance"]
                assert provenance["tier"] == "fast" and provenance["degraded"]
    finally:
        stop(worker)


def test_the_gateway_answers_from_the_graph_tier_without_importing_torch(graph_registry):
    port = free_port()
    worker = start_worker(graph_registry.root, port)
    try:
        code = (
            "import json, sys, time\n"
            "from fastapi.testclient import TestClient\n"
            "from molserve.config import Settings\n"
            "from molserve.gateway.app import create_app\n"
            f"settings = Settings(registry={str(graph_registry.root)!r}, jobs_dir=None,\n"
            f"                    worker_urls=['http://127.0.0.1:{port}'], worker_token='t0ken',\n"
            "                    worker_timeout_ms=5000)\n"
            "with TestClient(create_app(settings)) as client:\n"
            "    for _ in range(50):\n"
            "        body = client.post('/v1/predict', json={'molecules': ['CCO'],\n"
            "            'endpoints': ['logbb'], 'tier': 'graph'}).json()\n"
            "        if body['tiers']['logbb'] == 'graph':\n"
            "            break\n"
            "        time.sleep(0.2)\n"
            "print(json.dumps({'tier': body['results'][0]['predictions']['logbb']['provenance']['tier'],\n"
            "                  'modules': sorted({m.split('.')[0] for m in sys.modules})}))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=120)
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["tier"] == "graph"
        assert not {"torch", "chemprop", "lightning", "transformers"} & set(seen["modules"])
    finally:
        stop(worker)
