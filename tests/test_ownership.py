"""Models and datasets have owners: a key publishes versions of its own endpoints only (bundled
ones and other keys' need admin), a private endpoint does not exist for other keys, a public
model trained on a key's upload never shows that upload's structures or paths to others, and a
stored dataset is the operator's unless imported as public."""

from __future__ import annotations

import shutil

import pytest

from molserve.registry import Registry
from molserve.registry.store import EndpointNotOwned
from tests.test_authorization import build


def _copy_model(registry: Registry, source: str, endpoint: str, **fields):
    """A version of `endpoint` with `source`'s newest fast model's files and these manifest
    fields (owner, visibility, training_data, publish_as)."""
    artifact = registry.latest(source, kind="gbm")
    files = {name: artifact.path / name for name in artifact.manifest["files"]}
    manifest = {k: v for k, v in artifact.manifest.items() if k not in ("files", "version", "endpoint")}
    return registry.write(endpoint, files, {**manifest, "model_id": f"{endpoint}/gbm", **fields})


@pytest.fixture()
def tenants(trained_registry, tmp_path):
    """A gateway over a copy of the registry, keys of each scope (`predict` and `predict2` are
    two tenants; `train` trains), and two endpoints of the `predict` key's: one private, one
    public that learned from its upload."""
    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root, ignore=shutil.ignore_patterns(".embeddings"))
    registry = Registry(root)
    client, keys, world = build(tmp_path / "gateway", root)
    owner = world["owner"]
    _copy_model(registry, "logbb", "team_a_private", owner=owner["predict"], visibility="private",
                training_data="upload")
    _copy_model(registry, "logbb", "team_a_public", owner=owner["predict"], visibility="public",
                training_data="upload")
    client.app.state.load_models()
    # An upload of the training key's own.
    path = tmp_path / "gateway" / "jobs" / "uploads" / "train.csv"
    path.write_text("smiles,y\nCCO,1\n")
    client.app.state.jobs.store.add_upload("b" * 32, owner["train"], "train.csv", str(path), 16)
    world["uploads"]["train"] = "b" * 32
    return client, keys, world, registry


def _as(keys, who):
    return {} if who == "anonymous" else {"x-api-key": keys[who]}


def test_a_private_endpoint_does_not_exist_for_other_keys(tenants):
    client, keys, _, _ = tenants
    body = {"molecules": ["CCO"], "endpoints": ["team_a_private"]}
    for who in ("predict", "admin"):
        answer = client.post("/v1/predict", json=body, headers=_as(keys, who))
        assert answer.status_code == 200, (who, answer.text)
        assert answer.json()["results"][0]["predictions"]["team_a_private"]["value"] is not None
    missing = client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": ["team_a_nothing"]},
                          headers=_as(keys, "predict2")).json()
    for who in ("predict2", "read", "anonymous"):
        answer = client.post("/v1/predict", json=body, headers=_as(keys, who))  # reads are open
        assert answer.status_code == 404 and answer.json()["error"] == "unknown_endpoint", who
        # As missing as a name that never was: the same answer, and the name nowhere in it but
        # where the caller wrote it.
        assert answer.json()["details"]["available"] == missing["details"]["available"]
        assert "team_a_private" not in answer.json()["details"]["available"]
        assert answer.json()["message"].count("team_a_private") == 1
        # Not among the endpoints a request without names gets, nor listed anywhere.
        everything = client.post("/v1/predict", json={"molecules": ["CCO"]}, headers=_as(keys, who)).json()
        assert "team_a_private" not in everything["endpoints"] and "team_a_public" in everything["endpoints"]
    for who, sees in (("predict", True), ("admin", True), ("predict2", False), ("anonymous", False)):
        names = {e["name"] for e in client.get("/v1/endpoints", headers=_as(keys, who)).json()}
        models = {m["endpoint"] for m in client.get("/v1/models", headers=_as(keys, who)).json()}
        one = client.get("/v1/models/team_a_private/1", headers=_as(keys, who))
        assert ("team_a_private" in names) is sees and ("team_a_private" in models) is sees, who
        assert one.status_code == (200 if sees else 404), who


def test_a_public_model_trained_on_an_upload_keeps_its_structures_and_paths_to_its_owner(tenants):
    client, keys, _, registry = tenants
    body = {"molecules": ["CCO", "c1ccccc1O"], "endpoints": ["team_a_public"]}
    for who, sees in (("predict", True), ("admin", True), ("predict2", False), ("anonymous", False)):
        rows = client.post("/v1/predict", json=body, headers=_as(keys, who)).json()["results"]
        domains = [r["predictions"]["team_a_public"]["applicability_domain"] for r in rows]
        assert all(d["max_similarity"] is not None and "in_domain" in d for d in domains)
        assert all(bool(d["nearest_training_smiles"]) is sees for d in domains), who
        manifest = client.get("/v1/models/team_a_public/1", headers=_as(keys, who)).json()
        source = registry.latest("team_a_public").manifest["dataset"]["source"]
        assert (manifest["dataset"]["source"] == source) is sees, who
    # A bundled endpoint's answers keep their nearest training molecule for everyone.
    bundled = client.post("/v1/predict", json={"molecules": ["CCO"], "endpoints": ["logbb"]},
                          headers=_as(keys, "predict2")).json()
    assert bundled["results"][0]["predictions"]["logbb"]["applicability_domain"]["nearest_training_smiles"]


@pytest.mark.parametrize("model", ["gbm", "graph", "foundation", "transformer"])
def test_a_key_publishes_versions_of_its_own_endpoints_only(tenants, model):
    client, keys, world, _ = tenants

    def submit(who: str, endpoint: str) -> int:
        body = {"kind": "train", "model": model, "endpoint": endpoint}
        if model == "gbm":
            body.update(upload_id=world["uploads"][who], label_col="y")
        return client.post("/v1/jobs", json=body, headers=_as(keys, who))

    # A bundled endpoint: only an admin key may publish a version of it.
    refused = submit("train", "logbb")
    assert refused.status_code == 403 and refused.json()["error"] == "endpoint_not_owned"
    assert submit("admin", "logbb").status_code == 202
    # Another key's endpoint: refused. A private one is missing to a job that would read its
    # data (a worker-tier model on it); its name is taken for a new fast model all the same.
    assert submit("train", "team_a_public").status_code == 403
    private = submit("train", "team_a_private")
    if model == "gbm":
        assert private.status_code == 403
    else:
        assert private.status_code == 404 and private.json()["error"] == "no_fast_model"
    if model == "gbm":
        # A new name is the submitter's.
        accepted = submit("train", "train_key_assay")
        assert accepted.status_code == 202, accepted.text
        params = client.get(f"/v1/jobs/{accepted.json()['id']}", headers=_as(keys, "train")).json()["params"]
        assert params["visibility"] == "private" and params["owner"] == world["owner"]["train"]
        assert "input_path" not in params  # no server path in a job's view


def test_the_registry_refuses_a_version_for_a_key_that_does_not_own_the_endpoint(tenants):
    _, _, world, registry = tenants
    owner, other = world["owner"]["predict"], world["owner"]["predict2"]
    with pytest.raises(EndpointNotOwned):
        _copy_model(registry, "logbb", "team_a_private", owner=other, publish_as=other)
    with pytest.raises(EndpointNotOwned):
        _copy_model(registry, "logbb", "logbb", owner=other, publish_as=other)  # the operator's
    mine = _copy_model(registry, "logbb", "team_a_private", owner=owner, publish_as=owner,
                       visibility="private")
    assert mine.version == 2 and registry.owner("team_a_private") == owner
    # Two keys racing for a new name: the first version to land owns it; the other is rolled
    # back (simulated: the loser's check ran before the winner's version landed).
    first = _copy_model(registry, "logbb", "contested", owner=owner, publish_as=owner)
    registry._check_publisher = lambda endpoint, publisher: None  # the loser's early check passed
    with pytest.raises(EndpointNotOwned):
        _copy_model(registry, "logbb", "contested", owner=other, publish_as=other)
    assert [a.version for a in registry.versions("contested")] == [first.version]


def test_a_stored_dataset_is_the_operators_unless_imported_public(tenants, tmp_path):
    client, keys, world, _ = tenants
    from molserve.data.store import DatasetStore

    datasets = DatasetStore(tmp_path / "gateway" / "datasets")
    molecules = ["CCO", "CCN", "CCC", "c1ccccc1"]
    rows = [{"canonical_smiles": s, "label": float(i)} for i, s in enumerate(molecules)]
    for name, public in (("operators_set", False), ("shared_set", True)):
        datasets.save(name, rows * 10, task="regression", units="u", description="d", source="s",
                      licence="l", curation={}, extra={"public": public})

    def screen(who: str, name: str):
        return client.post("/v1/jobs", headers=_as(keys, who),
                           json={"kind": "screen", "dataset": name, "endpoints": ["tpsa"]})

    missing = screen("predict", "no_such_set")
    assert missing.status_code == 404
    hidden = screen("predict", "operators_set")
    assert hidden.status_code == 404 and hidden.json() == {
        **missing.json(), "message": missing.json()["message"].replace("no_such_set", "operators_set")}
    assert screen("predict", "shared_set").status_code == 202
    assert screen("admin", "operators_set").status_code == 202


def test_a_screen_names_only_the_endpoints_its_submitter_may_see(tenants):
    client, keys, world, _ = tenants
    submitted = client.post("/v1/jobs", headers=_as(keys, "predict2"),
                            json={"kind": "screen", "upload_id": world["uploads"]["predict2"]})
    assert submitted.status_code == 202, submitted.text
    endpoints = submitted.json()["params"]["endpoints"]
    assert "team_a_public" in endpoints and "team_a_private" not in endpoints
    own = client.post("/v1/jobs", headers=_as(keys, "predict"),
                      json={"kind": "screen", "upload_id": world["uploads"]["predict"]})
    assert "team_a_private" in own.json()["params"]["endpoints"]


def test_a_training_job_records_its_owner_and_the_model_is_private_to_it(tenants, tmp_path):
    """Through the job process: the model a key trains from its upload names it as owner and is
    private; another key's job cannot publish over it."""
    client, keys, world, registry = tenants
    upload_path = tmp_path / "gateway" / "jobs" / "uploads" / "assay.csv"
    molecules = [f"C{'C' * i}{end}" for i in range(20) for end in ("O", "N")]
    upload_path.write_text("smiles,y\n" + "".join(f"{s},{i / 10}\n" for i, s in enumerate(molecules)))
    store = client.app.state.jobs.store
    store.add_upload("a" * 32, world["owner"]["train"], "assay.csv", str(upload_path),
                     upload_path.stat().st_size)
    job = client.post("/v1/jobs", headers=_as(keys, "train"), json={
        "kind": "train", "upload_id": "a" * 32, "label_col": "y", "endpoint": "train_key_assay",
        "profile": "quick", "split": "random"}).json()
    from molserve.jobs.execute import main

    argv = ["--job", job["id"], "--jobs-dir", str(tmp_path / "gateway" / "jobs"), "--registry",
            str(registry.root), "--datasets", str(tmp_path / "gateway" / "datasets")]
    assert main(argv) == 0, store.get(job["id"])["error"]
    model = registry.latest("train_key_assay")
    assert model.manifest["owner"] == world["owner"]["train"] and model.manifest["visibility"] == "private"
    assert model.manifest["training_data"] == "upload"
    assert registry.owner("train_key_assay") == world["owner"]["train"]
    client.app.state.load_models()
    names = {e["name"] for e in client.get("/v1/endpoints", headers=_as(keys, "predict")).json()}
    assert "train_key_assay" not in names
    owners_view = client.get("/v1/endpoints", headers=_as(keys, "train")).json()
    assert "train_key_assay" in {e["name"] for e in owners_view}


def test_a_transformer_jobs_base_reaches_the_hub_not_the_servers_files_unless_admin(tenants, tmp_path):
    client, keys, world, registry = tenants
    _copy_model(registry, "logbb", "train_key_endpoint", owner=world["owner"]["train"],
                visibility="private")
    client.app.state.load_models()
    local = tmp_path / "models" / "base"
    local.mkdir(parents=True)

    def submit(who: str, base: str):
        return client.post("/v1/jobs", headers=_as(keys, who), json={
            "kind": "train", "model": "transformer", "endpoint": "train_key_endpoint", "base": base})

    for base in (str(local), "../models/base", "/etc/passwd", "org/../../etc"):
        refused = submit("train", base)
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_base", base
    for base in ("random:tiny", "seyonec/ChemBERTa-zinc-base-v1"):
        accepted = submit("train", base)
        assert accepted.status_code == 202, (base, accepted.text)
        assert accepted.json()["params"]["base_from"] == "hub"
    admins = submit("admin", str(local))  # the operator's own files
    assert admins.status_code == 202, admins.text
    assert "base_from" not in admins.json()["params"]
    # The job checks again: a hub-only job naming a path fails before torch is imported.
    from molserve.errors import InvalidInput
    from molserve.operations.training import TransformerParams, finetune

    with pytest.raises(InvalidInput):
        finetune(registry, ["train_key_endpoint"], TransformerParams(base=str(local), base_from="hub"))
