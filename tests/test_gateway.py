"""The HTTP API, in-process (FastAPI's test client against the real app and real models)."""

import pytest

ISSUE_EXAMPLE = {"molecules": ["CC(=O)Oc1ccccc1C(=O)O", "not a smiles"],
                 "endpoints": ["solubility", "bbb_penetration"]}


def test_the_documented_example(app_client):
    response = app_client.post("/v1/predict", json=ISSUE_EXAMPLE)
    assert response.status_code == 200
    body = response.json()
    aspirin, invalid = body["results"]
    assert aspirin["canonical_smiles"] == "CC(=O)Oc1ccccc1C(=O)O"
    solubility = aspirin["predictions"]["solubility"]
    assert solubility["units"] == "log10(mol/L)" and solubility["kind"] == "predicted"
    low, high = solubility["uncertainty"]["interval"]
    assert low < solubility["value"] < high
    assert 0 <= solubility["applicability_domain"]["max_similarity"] <= 1
    assert isinstance(solubility["applicability_domain"]["in_domain"], bool)
    assert solubility["provenance"] == {**solubility["provenance"], "model_id": "solubility/gbm",
                                        "tier": "fast"}
    assert isinstance(solubility["provenance"]["version"], int)
    bbb = aspirin["predictions"]["bbb_penetration"]
    assert 0 <= bbb["value"] <= 1 and bbb["label"] in {"BBB+", "BBB-"}
    assert invalid["error"].startswith("syntax error while parsing")
    assert invalid["predictions"] == {} and invalid["canonical_smiles"] is None
    assert body["n_errors"] == 1


def test_a_json_body_sent_as_a_form_is_refused_and_the_readme_curl_sends_the_header(app_client):
    """`curl -d` alone sends application/x-www-form-urlencoded, which a web page may also send
    to another site unasked: 415. The README's curl examples send the JSON content type."""
    import json
    from pathlib import Path

    response = app_client.post("/v1/predict", content=json.dumps(ISSUE_EXAMPLE),
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415 and response.json()["error"] == "unsupported_media_type"
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    posts = [block for block in readme.split("curl ")[1:] if " -d " in block.split("\n\n")[0]]
    assert posts and all("content-type: application/json" in b.split("\n\n")[0] for b in posts)


def test_answers_keep_input_order_and_duplicates_are_computed_once(app_client):
    molecules = ["OCC", "c1ccccc1", "CCO", "C(O)C", "bad(", "c1ccccc1"]
    body = app_client.post("/v1/predict", json={"molecules": molecules,
                                               "endpoints": ["logbb"]}).json()
    assert [r["input"] for r in body["results"]] == molecules
    assert [r["index"] for r in body["results"]] == list(range(6))
    assert body["n_unique"] == 2
    values = [r["predictions"].get("logbb", {}).get("value") for r in body["results"]]
    assert values[0] == values[2] == values[3] and values[1] == values[5] and values[4] is None


def test_default_endpoints_are_all_predicted_ones(app_client):
    body = app_client.post("/v1/predict", json={"molecules": ["CCO"]}).json()
    assert set(body["endpoints"]) == {"solubility", "hydration_free_energy", "bbb_penetration",
                                      "logbb", "pic50_chembl2321810", "dili", "half_life",
                                      "carcinogenicity"}
    answers = body["results"][0]["predictions"]
    assert answers["dili"]["provenance"]["dataset"] == "TDC DILI"
    assert answers["dili"]["label"] in ("no DILI", "DILI") and 0 <= answers["dili"]["value"] <= 1
    # Half-life is modelled on log10 and answered in hours: a positive value inside its interval.
    half_life = answers["half_life"]
    assert half_life["units"] == "h" and half_life["value"] > 0
    low, high = half_life["uncertainty"]["interval"]
    assert 0 < low < half_life["value"] < high
    assert half_life["uncertainty"]["space"].endswith("log10 space")


def test_computed_properties_are_labelled_computed(app_client):
    body = app_client.post("/v1/predict", json={
        "molecules": ["CC(=O)Oc1ccccc1C(=O)O"],
        "endpoints": ["logp_crippen", "tpsa", "qed", "structural_alerts", "solubility"]}).json()
    predictions = body["results"][0]["predictions"]
    for name in ("logp_crippen", "tpsa", "qed", "structural_alerts"):
        assert predictions[name]["kind"] == "computed"
        assert predictions[name]["provenance"]["tier"] == "computed"
        assert "uncertainty" not in predictions[name]
    assert predictions["tpsa"]["value"] == 63.6
    assert predictions["solubility"]["kind"] == "predicted"


def test_a_thousand_molecules_with_one_invalid_give_999_answers(app_client):
    from molserve.data.bundled import load_bundled

    smiles = load_bundled("bbb_penetration").smiles[:999]
    molecules = smiles[:500] + ["C1CC"] + smiles[500:]
    body = app_client.post("/v1/predict", json={"molecules": molecules,
                                               "endpoints": ["solubility"]}).json()
    errors = [r for r in body["results"] if r["error"]]
    answered = [r for r in body["results"] if "solubility" in r["predictions"]]
    # B3DB itself holds two SMILES RDKit rejects (a 5-valent carbon).
    invalid_in_source = sum(1 for r in errors if r["input"] != "C1CC")
    assert len(errors) == 1 + invalid_in_source
    assert body["results"][500]["error"].startswith("unclosed ring")
    assert len(answered) == 1000 - len(errors)


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({"molecules": ["CCO"], "endpoints": ["toxicity_magic"]}, 404, "unknown_endpoint"),
        ({"molecules": ["CCO"], "endpoints": []}, 422, "no_endpoints"),
        ({"molecules": []}, 422, "invalid_request"),
        ({"molecules": "CCO"}, 422, "invalid_request"),
        ({"molecules": [1, 2]}, 422, "invalid_request"),
        ({"smiles": ["CCO"]}, 422, "invalid_request"),
        ({"molecules": ["CCO"], "tier": "quantum"}, 422, "invalid_request"),
        ({"molecules": ["C"] * 1001}, 413, "batch_too_large"),
    ],
)
def test_bad_requests_are_4xx_with_a_message(app_client, payload, status, code):
    response = app_client.post("/v1/predict", json=payload)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == code and body["message"]


@pytest.mark.parametrize("tier", ["auto", "fast", "transformer"])
def test_a_request_with_no_readable_molecule_answers_each_with_its_error(app_client, tier):
    """Found by schemathesis: with tier "transformer" and no readable SMILES, the router had
    nothing to route and the answer lacked its tiers (a 500)."""
    raw = '{"molecules": ["\\ud96d\\udf45\\u00cd4", ""], "endpoints": ["logbb"], "tier": "' + tier + '"}'
    response = app_client.post("/v1/predict", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["n_errors"] == 2 and all(r["error"] and r["predictions"] == {} for r in body["results"])
    assert set(body["tiers"]) == {"logbb"} and body["degraded"] == {}


def test_malformed_json_is_a_400_with_a_message(app_client):
    response = app_client.post("/v1/predict", content=b'{"molecules": [',
                               headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"] == "invalid_json"
    assert response.json()["message"].startswith("the request body is not valid JSON")


def test_oversized_body_is_refused(app_client):
    huge = {"molecules": ["C" * 1000] * 2500}
    response = app_client.post("/v1/predict", json=huge)
    assert response.status_code == 413 and "exceeds" in response.json()["message"]


def test_endpoints_listing_carries_data_and_metrics(app_client):
    listing = {e["name"]: e for e in app_client.get("/v1/endpoints").json()}
    solubility = listing["solubility"]
    assert solubility["task"] == "regression" and solubility["units"] == "log10(mol/L)"
    model = solubility["models"][0]
    assert model["dataset"]["rows"] == 1282 and model["split"]["method"] == "scaffold"
    assert "rmse" in model["metrics"]["test"] and "rmse" in model["metrics"]["baseline_test"]
    assert listing["tpsa"]["kind"] == "computed"
    dili = listing["dili"]
    assert dili["tdc_dataset"] == "DILI" and dili["status"] == "available"
    assert "CC BY 4.0" in dili["licence"] and "doi:10.1021/acs.jcim.5b00238" in dili["citation"]
    assert dili["models"][0]["metrics"]["tdc"]["metric"] == "roc-auc"


def test_health_routes(app_client):
    assert app_client.get("/healthz").json() == {"status": "ok"}
    ready = app_client.get("/readyz")
    assert ready.status_code == 200 and len(ready.json()["fast_models"]) == 8
    legacy = app_client.get("/api/health").json()
    assert legacy["status"] == "healthy" and legacy["models_loaded"] == 8
    assert "solubility" in legacy["available_targets"]
    app_client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": ["solubility", "tpsa"]})
    metrics = app_client.get("/metrics").text
    assert "molserve_requests_total" in metrics and "molserve_models_loaded 8.0" in metrics
    assert 'molserve_tier_seconds_count{endpoint="solubility",tier="fast"}' in metrics
    assert 'molserve_tier_seconds_count{endpoint="tpsa",tier="computed"}' in metrics
    assert 'molserve_jobs{state="queued"}' in metrics


def test_openapi_describes_every_route_with_examples(app_client):
    spec = app_client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/endpoints", "/healthz", "/readyz", "/metrics", "/api/health",
                 "/v1/models"):
        assert path in spec["paths"], path
    request_schema = spec["components"]["schemas"]["PredictRequest"]
    assert request_schema["examples"][0]["molecules"][0] == "CC(=O)Oc1ccccc1C(=O)O"
    assert app_client.get("/docs").status_code == 200


def test_write_routes_need_the_api_key(app_client):
    assert app_client.post("/v1/models/reload").status_code == 401
    assert app_client.post("/v1/models/reload", headers={"x-api-key": "wrong"}).status_code == 403
    response = app_client.post("/v1/models/reload", headers={"authorization": "Bearer test-key"})
    assert response.status_code == 200 and len(response.json()["loaded"]) == 8
    assert app_client.delete("/v1/models/solubility/1").status_code == 401


def test_model_listing_and_manifest(app_client):
    listing = app_client.get("/v1/models").json()
    assert {m["endpoint"] for m in listing} >= {"solubility", "logbb"}
    manifest = app_client.get("/v1/models/logbb/1").json()
    assert manifest["kind"] == "gbm" and manifest["files"]["trees.safetensors"]["sha256"]
    assert app_client.get("/v1/models/logbb/99").status_code == 404


def test_a_multitask_training_job_is_checked_before_it_is_queued(app_client):
    key = {"authorization": "Bearer test-key"}
    body = {"kind": "train", "model": "transformer", "endpoint": "b3db", "base": "random:tiny"}
    one = app_client.post("/v1/jobs", json={**body, "endpoints": ["logbb"]}, headers=key)
    assert one.status_code == 422 and one.json()["error"] == "invalid_multitask_job"
    unknown = app_client.post("/v1/jobs", json={**body, "endpoints": ["logbb", "nope"]}, headers=key)
    assert unknown.status_code == 422 and "nope" in unknown.json()["message"]
    unnamed = app_client.post("/v1/jobs", json={"kind": "train", "model": "transformer",
                                                "endpoints": ["logbb", "bbb_penetration"]}, headers=key)
    assert unnamed.status_code == 422 and "`endpoint`" in unnamed.json()["message"]


def test_unknown_paths_and_wrong_methods_answer_an_error_body_with_a_true_allow(app_client):
    missing = app_client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = app_client.request("OPTIONS", "/v1/jobs")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert wrong.headers["allow"] == "GET, HEAD, POST"  # both routes at the path, not the first one's
    assert app_client.put("/v1/models/logbb/1").headers["allow"] == "DELETE, GET, HEAD"


def test_every_json_answer_is_documented_with_its_model(app_client):
    spec = app_client.get("/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema is not None:
                    assert schema != {"type": "string"}, (method, path, status)
                    if status.startswith(("4", "5")) and (path, status) != ("/readyz", "503"):
                        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    predict = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert predict["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictResponse")
    assert {"400", "401", "403", "413", "422", "429", "503"} <= set(predict)
