"""The Modal app: declared resources, and its classes and functions run locally on CPU with a
tiny model through Modal's local execution (Modal itself is unreachable here)."""

from __future__ import annotations

import importlib
import shutil
import warnings

import pytest

modal = pytest.importorskip("modal")


@pytest.fixture(scope="module")
def modal_app(transformer_registry, tmp_path_factory, monkeypatch_module):
    root = tmp_path_factory.mktemp("modal") / "registry"
    shutil.copytree(transformer_registry.root, root)
    monkeypatch_module.setenv("MOLSERVE_MODAL_REGISTRY_MOUNT", str(root))
    monkeypatch_module.setenv("MOLSERVE_MODAL_MIN_CONTAINERS", "1")
    import molserve.deploy.modal_app as module

    module = importlib.reload(module)
    warnings.filterwarnings("ignore", message=".*executing locally.*")
    return module


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def test_declared_resources(modal_app):
    assert modal_app.app.name == "molserve-worker"
    assert set(modal_app.VOLUMES) == {modal_app.REGISTRY_MOUNT, modal_app.HF_MOUNT}
    assert modal_app.MIN_CONTAINERS == 1 and modal_app.SCALEDOWN_S == 300
    # What the decorators recorded (Modal's function spec; private, so checked defensively).
    spec = getattr(modal_app.Worker._get_class_service_function(), "_spec_", None)
    if spec is not None:
        assert spec.gpus == modal_app.GPU
        assert set(spec.volumes) == set(modal_app.VOLUMES)
        assert len(spec.secrets) == 1
    finetune_spec = getattr(modal_app.finetune, "_spec_", None)
    if finetune_spec is not None:
        assert finetune_spec.gpus == modal_app.TRAIN_GPU


def test_worker_class_serves_the_worker_api_locally(modal_app):
    from fastapi.testclient import TestClient

    asgi = modal_app.Worker().web.local()
    with TestClient(asgi) as client:
        ready = client.get("/readyz").json()
        assert ready["ready"] and "logbb" in ready["models"]
        body = client.post("/v1/predict", json={"molecules": ["CCO", "c1ccccc1O"],
                                                "endpoints": ["logbb"]}).json()
        assert body["results"]["logbb"][0]["provenance"]["tier"] == "transformer"


def test_batched_predictor_and_finetune_run_locally(modal_app):
    answers = modal_app.BatchPredictor(endpoint="logbb").predict.local(["CCO", "C1CC"])
    assert answers[0]["provenance"]["tier"] == "transformer" and "error" in answers[1]
    summary = modal_app.finetune.local("hydration_free_energy", base="random:tiny", epochs=1,
                                       learning_rate=1e-3)
    assert summary["endpoint"] == "hydration_free_energy" and "rmse" in summary["metrics"]
    assert modal_app.LOCAL_PROGRESS["local"]["step"] == "done"


def test_deploy_modal_prints_the_steps_and_secrets(capsys):
    from molserve.cli import main

    assert main(["deploy", "modal"]) == 0
    out = capsys.readouterr().out
    assert "modal deploy" in out and "modal secret create molserve-worker" in out
    assert "never in a request body" in out
