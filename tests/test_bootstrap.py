"""Training the bundled endpoints: the catalog, the status file, the gateway while it trains."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from molserve.errors import NotFound, Unavailable
from molserve.operations.bootstrap import (
    StatusWriter,
    bundled_endpoints,
    pending_endpoints,
    read_status,
    status_path,
    training_options,
)
from molserve.prediction.router import Router
from molserve.registry import Registry


def test_forty_five_bundled_endpoints_train_smallest_first_with_their_protocol():
    catalog = bundled_endpoints()
    assert len(catalog) == 45
    rows = [e.rows for e in catalog.values()]
    assert rows == sorted(rows)
    caco2 = training_options(catalog["caco2_permeability"])
    assert caco2["split"] == "tdc-scaffold" and caco2["seed"] == 1 and caco2["metric"] == "mae"
    assert training_options(catalog["half_life"])["target_transform"].kind == "log10"
    tox = training_options(catalog["tox21_sr_p53"])
    assert tox["split"] == "scaffold" and tox["seed"] == 0
    assert training_options(catalog["solubility"]) == {"split": "scaffold", "seed": 0}
    assert {"bbb_penetration", "bbb_martins"} <= set(catalog)  # both BBB sets are kept


def test_status_file_reports_pending_endpoints_and_a_dead_bootstrap_as_interrupted(tmp_path):
    registry = Registry(tmp_path)
    writer = StatusWriter(registry, ["a", "b", "c"])
    writer.update("a", force=True, state="done", progress=1.0)
    writer.update("b", force=True, state="training", progress=0.4, step="ensemble member 2/5")
    pending = pending_endpoints(registry)
    assert set(pending) == {"b", "c"}
    assert pending["b"]["progress"] == 0.4 and pending["c"]["state"] == "queued"
    status = json.loads(status_path(registry).read_text())
    status["pid"] = 2**22 + 12345  # no such process
    status_path(registry).write_text(json.dumps(status))
    assert read_status(registry)["state"] == "interrupted"
    assert pending_endpoints(registry) == {}


def test_cli_models_list_shows_endpoints_still_training(tmp_path, capsys):
    from molserve.cli import main

    registry = Registry(tmp_path)
    writer = StatusWriter(registry, ["caco2_permeability", "ames_mutagenicity"])
    writer.update("caco2_permeability", force=True, state="training", progress=0.25, step="featurizing")
    assert main(["--registry", str(tmp_path), "models", "list"]) == 0
    out = capsys.readouterr().out
    assert "caco2_permeability" in out and "training 25% (featurizing)" in out
    assert "ames_mutagenicity" in out and "queued" in out


class _Training:
    """A bootstrap caught mid-way, as the gateway's watcher would have read it."""

    def __init__(self) -> None:
        self.status = {"state": "running", "endpoints": {
            "caco2_permeability": {"state": "training", "progress": 0.5, "step": "selecting 1/2"},
            "ames_mutagenicity": {"state": "queued", "progress": 0.0},
            "solubility": {"state": "done", "progress": 1.0}}}

    def pending(self):
        return {n: e for n, e in self.status["endpoints"].items() if e["state"] != "done"}

    def summary(self):
        return {"state": "running", "done": 1, "total": 3,
                "training": {"caco2_permeability": {"progress": 0.5, "step": "selecting 1/2"}},
                "queued": ["ames_mutagenicity"], "failed": {}}

    async def stop(self):
        return None


def test_gateway_says_which_endpoints_are_still_training(trained_registry, tmp_path):
    from fastapi.testclient import TestClient

    from molserve.config import Settings
    from molserve.gateway.app import create_app

    app = create_app(Settings(registry=trained_registry.root, jobs_dir=None))
    with TestClient(app) as client:
        app.state.bootstrap = _Training()
        app.state.router.pending = app.state.bootstrap.pending
        ready = client.get("/readyz").json()
        assert ready["ready"] is True
        assert ready["bootstrap"]["done"] == 1 and ready["bootstrap"]["queued"] == ["ames_mutagenicity"]
        listed = {e["name"]: e for e in client.get("/v1/endpoints").json()}
        assert listed["caco2_permeability"]["status"] == "training"
        assert listed["caco2_permeability"]["progress"] == 0.5
        assert listed["caco2_permeability"]["tdc_dataset"] == "Caco2_Wang"
        assert listed["ames_mutagenicity"]["status"] == "queued"
        assert listed["solubility"]["status"] == "available"
        response = client.post("/v1/predict", json={"molecules": ["CCO"],
                                                    "endpoints": ["caco2_permeability"]})
        assert response.status_code == 503
        assert response.json()["error"] == "endpoint_training"
        assert "caco2_permeability (training, 50%)" in response.json()["message"]
        assert response.headers["retry-after"] == "30"
        # Without endpoints named, the available ones answer.
        assert client.post("/v1/predict", json={"molecules": ["CCO"]}).status_code == 200


def test_predictor_raises_503_for_a_pending_endpoint(trained_registry):
    predictor = Router(trained_registry)
    predictor.load()
    predictor.pending = lambda: {"ld50": {"state": "queued", "progress": 0.0}}
    with pytest.raises(Unavailable) as raised:
        predictor.predict_local(["CCO"], ["ld50"])
    assert raised.value.code == "endpoint_training"
    with pytest.raises(NotFound) as raised:
        predictor.predict_local(["CCO"], ["no_such_endpoint"])
    assert raised.value.code == "unknown_endpoint"


@pytest.mark.slow
def test_gateway_trains_missing_endpoints_in_the_background_and_serves_each_as_it_lands(tmp_path):
    from tests.processes import gateway

    registry = tmp_path / "registry"
    wanted = ["carcinogenicity", "skin_reaction"]
    with gateway(registry, [], MOLSERVE_BOOTSTRAP="true",
                 MOLSERVE_BOOTSTRAP_ENDPOINTS=json.dumps(wanted),
                 MOLSERVE_BOOTSTRAP_PROFILE="quick") as (url, _process):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            listed = {e["name"]: e for e in httpx.get(f"{url}/v1/endpoints").json()}
            if all(listed.get(n, {}).get("status") == "available" for n in wanted):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"not trained in time: {listed}")
        answer = httpx.post(f"{url}/v1/predict", json={"molecules": ["CCO"], "endpoints": wanted}).json()
        predictions = answer["results"][0]["predictions"]
        assert predictions["carcinogenicity"]["provenance"]["dataset"] == "TDC Carcinogens_Lagunin"
        assert predictions["skin_reaction"]["kind"] == "predicted"
        # The last model is served a moment before the bootstrap process writes "done".
        deadline = time.monotonic() + 30
        while (ready := httpx.get(f"{url}/readyz").json())["bootstrap"]["state"] == "running" \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready["bootstrap"]["done"] == 2 and ready["bootstrap"]["state"] == "done"
    assert read_status(Registry(registry))["state"] == "done"


def test_production_models_learn_from_every_labelled_row_and_state_out_of_fold_figures(tmp_path):
    """The served protocol: a TDC benchmark endpoint learns from train_val and test alike, a
    dataset of our own holds nothing out either; the quality figures are out of fold, and a model
    trained on top of one (graph, foundation) needs no test rows."""
    import csv

    from molserve.chem.molecules import try_parse
    from molserve.data.catalog import bundled_endpoints
    from molserve.operations.bootstrap import bootstrap, load_for

    registry = Registry(tmp_path / "registry")
    outcome = bootstrap(registry, ["dili", "logbb"], profile="quick", workers=1)
    assert not [n for n, r in outcome.items() if "error" in r], outcome
    assert "every labelled row; out of fold" in outcome["dili"]["summary"]
    catalog = bundled_endpoints()
    for endpoint in ("dili", "logbb"):
        fast = registry.latest(endpoint, kind="gbm")
        manifest = fast.manifest
        assert manifest["protocol"] == "production" and manifest["metrics"]["test"] == {}
        assert manifest["trained_on"]["rows"].startswith("every labelled row")
        with open(fast.file("data.csv"), newline="") as handle:
            sides = [row["split"] for row in csv.DictReader(handle)]
        assert "test" not in sides and sides.count("valid") > 0
        oof = manifest["metrics"]["out_of_fold"]
        assert oof["n"] == len(sides) == manifest["trained_on"]["molecules"]
        if endpoint == "logbb":
            assert 0.5 < oof["interval_coverage"] <= 1
    # TDC's test molecules are among the ones the production model learned from.
    _, test = catalog["dili"].load()
    fitted = set(registry.latest("dili", kind="gbm").file("train_smiles.txt").read_text().split())
    readable = [try_parse(s) for s in test.smiles]
    assert sum(p.canonical_smiles in fitted for p in readable if hasattr(p, "canonical_smiles")) \
        >= 0.9 * len(test)
    train, held, hold_out = load_for(catalog["dili"], "tdc")
    everything, none, production_hold_out = load_for(catalog["dili"], "production")
    assert held is not None and hold_out and none is None and not production_hold_out
    assert len(everything) == len(train) + len(held)
    with pytest.raises(ValueError):
        load_for(catalog["dili"], "everything")
    # Served, and listed with their out-of-fold figures.
    router = Router(registry)
    router.load()
    answer = router.predict_local(["CCO"], ["dili", "logbb"])["results"][0]["predictions"]
    assert answer["logbb"].uncertainty.interval and 0 <= answer["dili"].value <= 1
    info = {e["name"]: e for e in router.endpoint_info()}
    assert info["dili"]["models"][0]["metrics"]["test"] == {}
