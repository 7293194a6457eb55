"""Two tenants, every route, every kind of owned object: tenant A (the `predict` key) owns a
private model, an upload, a finished screen job and its result, and reference-set values of its
private model; the operator owns a stored dataset. Every route is called by tenant B's keys of
every scope (`read`, `predict2`, `train`, and one key with all three) and by an anonymous caller,
aimed at A's objects: a request naming an object of A's gets exactly the answer the same request
naming an object that never existed gets (so B cannot even tell A's objects exist), no answer
carries anything of A's, and nothing of A's changes. A and an admin, making the same requests,
see A's objects (the checks are not vacuous)."""

from __future__ import annotations

import json

import pytest

from molserve.gateway.keys import KeyStore
from tests.authorization_rules import RULES
from tests.test_ownership import tenants  # noqa: F401 (the fixture)

TENANT_B = ["read", "predict2", "train", "b_all", "anonymous"]
SECRET_SMILES = "CCCCCCCCCCCCCCCCCCCO"  # a structure only A's result and the operator's dataset hold


def _as(keys, who):
    return {} if who == "anonymous" else {"x-api-key": keys[who]}


def _comparable(response, *names: str) -> tuple[int, str]:
    """Status and body with the named identifiers replaced (and request ids dropped)."""
    try:
        body = response.json()
        if isinstance(body, dict):
            body.pop("request_id", None)
        text = json.dumps(body, sort_keys=True)
    except ValueError:
        text = response.text
    for name in names:
        text = text.replace(name, "<ID>")
    return response.status_code, text


@pytest.fixture()
def world(tenants, tmp_path):  # noqa: F811 (the imported fixture)
    client, keys, world, registry = tenants
    owner = world["owner"]
    store = client.app.state.jobs.store
    # Tenant B's key with every non-admin scope, picked up from the key file without a restart.
    key_file = tmp_path / "gateway" / "keys.json"
    b_all, record = KeyStore(key_file).create("b_all", ["read", "predict", "train"])
    keys["b_all"] = b_all
    owner["b_all"] = f"key:{record.id}"
    for who in ("b_all",):
        path = tmp_path / "gateway" / "jobs" / "uploads" / f"{who}.smi"
        path.write_text("CCO\n")
        store.add_upload("c" * 32, owner[who], "b.smi", str(path), 4)
        world["uploads"][who] = "c" * 32
    # A's finished screen holds a structure nobody else has.
    job = store.get(world["job"])
    with open(job["result"]["path"], "w") as handle:
        handle.write(f"row,input\n0,{SECRET_SMILES}\n")
    # The operator's stored dataset (not public).
    from molserve.data.store import DatasetStore

    molecules = [SECRET_SMILES, "CCN", "CCC", "c1ccccc1"]
    DatasetStore(tmp_path / "gateway" / "datasets").save(
        "operators_set", [{"canonical_smiles": s, "label": float(i)} for i, s in enumerate(molecules)] * 10,
        task="regression", units="u", description="d", source="s", licence="l", curation={},
        extra={"public": False})
    # A uses its private model (so metrics have its series) and has reference values computed.
    answer = client.post("/v1/predict", headers=_as(keys, "predict"),
                         json={"molecules": ["CCO"], "endpoints": ["team_a_private"]})
    assert answer.status_code == 200, answer.text
    references = client.app.state.router.references
    reference = references.names()[0]
    assert "team_a_private" in references.refresh(reference, ["team_a_private"])
    world.update(registry=registry, reference=reference)
    return client, keys, world


def _cases(world: dict, who: str) -> list[tuple[str, str, str, dict, dict | None, tuple[str, ...]]]:
    """(method, route, url, request, twin request or None, identifiers) per call aimed at A's
    objects; the twin names objects that never existed (None: a listing, no object named)."""
    job, missing_job = world["job"], "f" * 32
    upload = world["uploads"]["predict"]
    own_upload = world["uploads"].get(who, "e" * 32)
    screen = {"kind": "screen", "endpoints": ["tpsa"]}
    plain = ("GET", "DELETE")
    cases = [
        ("GET", "/v1/models/{endpoint}/{version}", "/v1/models/team_a_private/1", {},
         ("/v1/models/team_a_privatz/1", {}), ("team_a_private", "team_a_privatz")),
        ("DELETE", "/v1/models/{endpoint}/{version}", "/v1/models/team_a_private/1", {},
         ("/v1/models/team_a_privatz/1", {}), ("team_a_private", "team_a_privatz")),
        ("POST", "/v1/predict", "/v1/predict",
         {"json": {"molecules": ["CCO"], "endpoints": ["team_a_private"]}},
         ("/v1/predict", {"json": {"molecules": ["CCO"], "endpoints": ["team_a_privatz"]}}),
         ("team_a_private", "team_a_privatz")),
        ("POST", "/v1/jobs", "/v1/jobs", {"json": {**screen, "upload_id": upload}},
         ("/v1/jobs", {"json": {**screen, "upload_id": "d" * 32}}), (upload, "d" * 32)),
        ("POST", "/v1/jobs", "/v1/jobs", {"json": {**screen, "dataset": "operators_set"}},
         ("/v1/jobs", {"json": {**screen, "dataset": "no_such_set"}}), ("operators_set", "no_such_set")),
        ("POST", "/v1/jobs", "/v1/jobs",
         {"json": {"kind": "screen", "upload_id": own_upload, "endpoints": ["team_a_private"]}},
         ("/v1/jobs", {"json": {"kind": "screen", "upload_id": own_upload, "endpoints": ["team_a_privatz"]}}),
         ("team_a_private", "team_a_privatz")),
        ("POST", "/v1/jobs", "/v1/jobs",
         {"json": {"kind": "train", "model": "graph", "endpoint": "team_a_private"}},
         ("/v1/jobs", {"json": {"kind": "train", "model": "graph", "endpoint": "team_a_privatz"}}),
         ("team_a_private", "team_a_privatz")),
        ("POST", "/v1/jobs/{job_id}/cancel", f"/v1/jobs/{job}/cancel", {},
         (f"/v1/jobs/{missing_job}/cancel", {}), (job, missing_job)),
    ]
    cases += [(method, "/v1/jobs/{job_id}", f"/v1/jobs/{job}", {}, (f"/v1/jobs/{missing_job}", {}),
               (job, missing_job)) for method in plain]
    cases.append(("GET", "/v1/jobs/{job_id}/result", f"/v1/jobs/{job}/result", {},
                  (f"/v1/jobs/{missing_job}/result", {}), (job, missing_job)))
    listings = {"/static": "/static/app.js", "/v1/depict": "/v1/depict?smiles=CCO", "/guide": "/guide/"}
    for (method, route), _ in sorted(RULES.items()):
        if any(c[0] == method and c[1] == route for c in cases):
            continue
        request = {"files": {"file": ("b.smi", b"CCO\n")}} if route == "/v1/uploads" else {}
        cases.append((method, route, listings.get(route, route), request, None, ()))
    return cases


def _secrets(world: dict) -> list[str]:
    return ["team_a_private", world["job"], world["uploads"]["predict"], world["owner"]["predict"],
            "operators_set", SECRET_SMILES]


def test_no_route_lets_another_tenant_read_or_change_what_a_tenant_owns(world):
    client, keys, world = world
    registry = world["registry"]
    covered = {(c[0], c[1]) for c in _cases(world, "predict")}
    assert covered == set(RULES), "every route the gateway serves is called"
    versions_before = [a.version for a in registry.versions("team_a_private")]
    leaks, told_apart, calls = [], [], 0
    for who in TENANT_B:
        for method, _route, url, request, twin, names in _cases(world, who):
            response = client.request(method, url, headers=_as(keys, who), **request)
            calls += 1
            shown = [s for s in _secrets(world) if s in response.text]
            # A request that names A's object may see that name echoed where it wrote it
            # (e.g. "no endpoint named ..."): the twin comparison below decides those.
            shown = [s for s in shown if s not in names]
            if shown:
                leaks.append(f"{method} {url} as {who}: {shown}")
            if twin is not None:
                other = client.request(method, twin[0], headers=_as(keys, who), **twin[1])
                if _comparable(response, *names) != _comparable(other, *names):
                    told_apart.append(f"{method} {url} as {who}: {response.status_code} "
                                      f"{response.text} / {other.status_code} {other.text}")
            assert response.status_code < 500, (method, url, who, response.text)
    assert leaks == [], leaks
    assert told_apart == [], "\n".join(told_apart)
    assert calls >= len(TENANT_B) * len(RULES)
    # Nothing of A's changed: its model, its job and result, its upload.
    owner = _as(keys, "predict")
    assert [a.version for a in registry.versions("team_a_private")] == versions_before
    job = client.get(f"/v1/jobs/{world['job']}", headers=owner).json()
    assert job["state"] == "succeeded" and not job["cancel_requested"]
    assert SECRET_SMILES in client.get(f"/v1/jobs/{world['job']}/result", headers=owner).text
    reuse = client.post("/v1/jobs", headers=owner, json={
        "kind": "screen", "upload_id": world["uploads"]["predict"], "endpoints": ["tpsa"]})
    assert reuse.status_code == 202, reuse.text


def test_the_owner_and_admins_see_the_objects_the_other_tenant_cannot(world):
    """The same requests as the owner and as an admin: A's objects are there to be found."""
    client, keys, world = world
    for who in ("predict", "admin"):
        headers = _as(keys, who)
        assert client.get("/v1/models/team_a_private/1", headers=headers).status_code == 200
        assert "team_a_private" in client.get("/v1/endpoints", headers=headers).text
        assert "team_a_private" in client.get("/v1/status", headers=headers).text
        values = [v["endpoint"] for s in client.get("/v1/references", headers=headers).json()
                  for v in s["values"]]
        assert "team_a_private" in values
        assert world["job"] in client.get("/v1/jobs", headers=headers).text
        assert SECRET_SMILES in client.get(f"/v1/jobs/{world['job']}/result", headers=headers).text
    admin = _as(keys, "admin")
    assert client.post("/v1/jobs", headers=admin, json={
        "kind": "screen", "dataset": "operators_set", "endpoints": ["tpsa"]}).status_code == 202
    assert client.post("/v1/jobs", headers=admin, json={
        "kind": "screen", "upload_id": world["uploads"]["predict"], "endpoints": ["tpsa"]}).status_code == 202
    # The open routes and the metrics never name a private endpoint, even to its owner: they
    # are the same for every caller; its series are labelled `private`.
    metrics = client.get("/metrics").text
    assert 'endpoint="private"' in metrics and "team_a_private" not in metrics
