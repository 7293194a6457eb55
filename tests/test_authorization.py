"""The authorization matrix: every route the gateway serves, called by an anonymous caller, a
key of each scope and a second key of the same scope as the owner, with the status each must
get (tests/authorization_rules.py states the rules). Ownership of jobs and uploads, anonymous
jobs with their tokens, and key changes picked up without a restart."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from molserve.config import Settings
from molserve.gateway.app import JSON_ROUTES, create_app
from molserve.gateway.keys import KeyStore
from tests.authorization_rules import RULES, admitted

SCOPES = {"read": ["read"], "predict": ["predict"], "predict2": ["predict"], "train": ["train"],
          "admin": ["admin"]}
CALLERS = ["anonymous", *SCOPES]  # predict owns the job below; predict2 is the same scope's other key


def served_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app serves, routers included (walked, not read from
    the OpenAPI document: routes left out of it are served too)."""
    def walk(routes, prefix: str = ""):
        for route in routes:
            if isinstance(route, Mount):
                yield "GET", prefix + route.path
            elif getattr(route, "methods", None):
                yield from ((m, prefix + route.path) for m in route.methods - {"HEAD"})
            elif hasattr(route, "original_router"):  # an included router, kept lazily
                context = getattr(route, "include_context", None)
                yield from walk(route.original_router.routes, prefix + getattr(context, "prefix", ""))
            else:
                raise AssertionError(f"a route of unknown type: {route!r}")

    return set(walk(app.routes))


def build(tmp: Path, registry: Path, **settings) -> tuple[TestClient, dict[str, str], dict]:
    """A gateway (its job runner made but not started: nothing runs) with a key per scope, a
    finished screen owned by `predict`, and an upload of each key that may upload."""
    from molserve.jobs.runner import JobRunner

    tmp.mkdir(parents=True, exist_ok=True)
    keys_file = tmp / "keys.json"
    store = KeyStore(keys_file)
    keys = {name: store.create(name, scopes)[0] for name, scopes in SCOPES.items()}
    app = create_app(Settings(registry=registry, api_keys_file=keys_file, jobs_dir=tmp / "jobs",
                              datasets=tmp / "datasets", **settings))
    app.state.load_models()
    runner = app.state.jobs = JobRunner(tmp / "jobs", registry, tmp / "datasets")
    owner = {name: f"key:{key.split('_')[1]}" for name, key in keys.items()}
    result = tmp / "result.csv"
    result.write_text("row,input\n0,CCO\n")
    job = runner.store.create("screen", {"endpoints": ["tpsa"]}, owner=owner["predict"])
    runner.store.update(job["id"], state="succeeded", result={"path": str(result), "rows": 1})
    uploads = {}
    for name in ("predict", "predict2", "admin"):
        upload_id = uuid.uuid4().hex
        path = tmp / "jobs" / "uploads" / f"{upload_id}.smi"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("CCO\n")
        runner.store.add_upload(upload_id, owner[name], "m.smi", str(path), 4)
        uploads[name] = upload_id
    return TestClient(app), keys, {"job": job["id"], "uploads": uploads, "owner": owner}


def call(client: TestClient, method: str, path: str, caller: str, keys: dict, world: dict):
    """Call one route as `caller` with a request that succeeds when the caller may make it;
    returns the response and the status success has on that route."""
    headers = {} if caller == "anonymous" else {"x-api-key": keys[caller]}
    job = world["job"]
    upload = world["uploads"].get(caller, world["uploads"]["predict"])
    concrete = {
        "/static": ("/static/app.js", {}, 200),
        # The documentation site where it was built (`make docs`), else a JSON 404 saying so.
        "/guide": ("/guide/", {}, 200 if client.app.state.settings.gateway.guide_dir is not None
                   or (Path(__file__).resolve().parents[1] / "site" / "index.html").is_file() else 404),
        "/v1/models/{endpoint}/{version}": ("/v1/models/logbb/1", {}, 200) if method == "GET"
        else ("/v1/models/logbb/999", {}, 404),  # deleting nothing: past the key check is 404
        "/v1/depict": ("/v1/depict?smiles=CCO", {}, 200),
        "/v1/predict": (path, {"json": {"molecules": ["CCO"], "endpoints": ["tpsa"]}}, 200),
        "/v1/uploads": (path, {"files": {"file": ("m.smi", b"CCO\n")}}, 201),
        "/v1/jobs": (path, {"json": {"kind": "screen", "upload_id": upload, "endpoints": ["tpsa"]}}, 202)
        if method == "POST" else (path, {}, 200),
    }
    url, kwargs, success = concrete.get(path, (path.replace("{job_id}", job), {}, 200))
    return client.request(method, url, headers=headers, **kwargs), success


@pytest.mark.parametrize("reads_open", [True, False], ids=["reads open", "reads need a key"])
def test_every_route_answers_every_caller_as_its_rule_says(trained_registry, tmp_path, reads_open):
    client, keys, world = build(tmp_path, trained_registry.root, require_key_for_reads=not reads_open)
    served = served_routes(client.app)
    assert served - set(RULES) == set(), "routes without a rule in tests/authorization_rules.py"
    assert set(RULES) - served == set(), "rules for routes the gateway no longer serves"
    wrong = []
    for (method, path), rule in sorted(RULES.items()):
        for caller in CALLERS:
            scopes = None if caller == "anonymous" else frozenset(SCOPES[caller])
            response, success = call(client, method, path, caller, keys, world)
            if not admitted(rule, scopes, reads_open=reads_open):
                expected = 401 if caller == "anonymous" else 403
            elif rule == "owner" and caller not in ("predict", "admin"):
                expected = 404  # someone else's job does not exist for them
            else:
                expected = success
            if response.status_code != expected:
                wrong.append(f"{method} {path} as {caller}: {response.status_code}, expected {expected}")
            if response.status_code >= 400:
                body = response.json()
                assert set(body) >= {"error", "message"}, (method, path, caller, body)
    assert wrong == []


def test_keys_see_only_their_own_jobs_and_admins_see_all(trained_registry, tmp_path):
    client, keys, world = build(tmp_path, trained_registry.root)

    def listed(caller):
        headers = {} if caller == "anonymous" else {"x-api-key": keys[caller]}
        return [j["id"] for j in client.get("/v1/jobs", headers=headers).json()]

    assert listed("predict") == [world["job"]] and listed("admin") == [world["job"]]
    assert listed("predict2") == [] and listed("read") == [] and listed("anonymous") == []
    own = client.get(f"/v1/jobs/{world['job']}", headers={"x-api-key": keys["predict"]}).json()
    assert own["owner"] == world["owner"]["predict"] and "token_hash" not in own
    # Another key's upload is as missing as an upload that never was.
    other = client.post("/v1/jobs", headers={"x-api-key": keys["predict2"]}, json={
        "kind": "screen", "upload_id": world["uploads"]["predict"], "endpoints": ["tpsa"]})
    nothing = client.post("/v1/jobs", headers={"x-api-key": keys["predict2"]}, json={
        "kind": "screen", "upload_id": "f" * 32, "endpoints": ["tpsa"]})
    assert other.status_code == nothing.status_code == 404
    assert other.json()["message"].replace(world["uploads"]["predict"], "ID") == \
        nothing.json()["message"].replace("f" * 32, "ID")
    refused = client.post(f"/v1/jobs/{world['job']}/cancel", headers={"x-api-key": keys["predict2"]})
    assert refused.status_code == 404
    owner = {"x-api-key": keys["predict"]}
    assert client.get(f"/v1/jobs/{world['job']}", headers=owner).json()["state"] == "succeeded"


def test_anonymous_jobs_are_off_by_default_and_reached_by_their_token_when_on(trained_registry,
                                                                               tmp_path):
    client, keys, _ = build(tmp_path / "off", trained_registry.root)
    assert client.post("/v1/uploads", files={"file": ("m.smi", b"CCO\n")}).status_code == 401
    assert client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": ["tpsa"]}).status_code == 200

    client, keys, _ = build(tmp_path / "on", trained_registry.root, anonymous_jobs=True)
    upload = client.post("/v1/uploads", files={"file": ("m.smi", b"CCO\n")})
    assert upload.status_code == 201
    submitted = client.post("/v1/jobs", json={"kind": "screen", "upload_id": upload.json()["upload_id"],
                                              "endpoints": ["tpsa"]})
    assert submitted.status_code == 202
    job_id, token = submitted.json()["id"], submitted.json()["job_token"]
    assert len(token) > 40 and submitted.json()["owner"] == "anonymous"
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers={"x-job-token": token + "x"}).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers={"x-job-token": token}).status_code == 200
    assert client.get(f"/v1/jobs/{job_id}", headers={"x-api-key": keys["predict"]}).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers={"x-api-key": keys["admin"]}).status_code == 200
    assert client.get("/v1/jobs").json() == []  # anonymous jobs are never listed
    assert token not in (tmp_path / "on" / "jobs" / "jobs.sqlite3").read_bytes().decode("latin-1")
    train = client.post("/v1/jobs", json={"kind": "train", "dataset": "logbb_copy"})
    assert train.status_code == 401  # training always needs a key
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel", headers={"x-job-token": token})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


def test_a_revoked_or_changed_key_takes_effect_within_a_second_without_a_restart(trained_registry,
                                                                                 tmp_path):
    client, keys, _ = build(tmp_path, trained_registry.root)
    admin = {"x-api-key": keys["admin"]}
    reader = {"x-api-key": keys["read"]}
    assert client.post("/v1/models/reload", headers=admin).status_code == 200
    assert client.post("/v1/models/reload", headers=reader).status_code == 403
    cli_store = KeyStore(tmp_path / "keys.json")  # what `molserve keys` does, in another process
    cli_store.revoke(keys["admin"].split("_")[1])
    cli_store.records[keys["read"].split("_")[1]].scopes = ["read", "admin"]
    cli_store.save()
    changed = time.monotonic()
    while client.post("/v1/models/reload", headers=admin).status_code != 403:
        assert time.monotonic() - changed < 1.0, "the revoked key still works after a second"
        time.sleep(0.05)
    assert time.monotonic() - changed < 1.0
    assert client.post("/v1/models/reload", headers=reader).status_code == 200


def test_json_routes_are_exactly_the_routes_whose_body_is_json(trained_registry, tmp_path):
    client, _, _ = build(tmp_path, trained_registry.root)
    spec = client.get("/openapi.json").json()
    with_json = {path for path, methods in spec["paths"].items() for operation in methods.values()
                 if "application/json" in (operation.get("requestBody") or {}).get("content", {})}
    assert with_json == JSON_ROUTES
