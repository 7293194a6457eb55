"""Jobs: the dispatcher runs each kind through the same engine interface, whichever engine."""

import shutil
import sys
import types

import pytest

from molserve.config import EngineSettings
from molserve.jobs import engines
from molserve.jobs.engines import FinetuneRequest, LocalEngine, ModalEngine, RayEngine
from molserve.jobs.store import SQLiteJobStore
from molserve.operations.training import TransformerParams
from molserve.registry import Registry


def test_the_engine_is_the_one_the_settings_name(monkeypatch):
    assert isinstance(engines.engine(EngineSettings(training_backend="local")), LocalEngine)
    monkeypatch.setenv("MOLSERVE_TRAINING_BACKEND", "ray")
    monkeypatch.setenv("MOLSERVE_RAY_ADDRESS", "ray://head:10001")
    monkeypatch.setenv("MOLSERVE_RAY_TRAIN_GPUS", "1")
    chosen = engines.engine()
    assert isinstance(chosen, RayEngine)
    assert (chosen.address, chosen.num_gpus) == ("ray://head:10001", 1.0)
    monkeypatch.setenv("MOLSERVE_TRAINING_BACKEND", "modal")
    monkeypatch.setenv("MOLSERVE_MODAL_APP", "my-molserve")
    assert engines.engine().app_name == "my-molserve"
    monkeypatch.setenv("MOLSERVE_TRAINING_BACKEND", "slurm")
    with pytest.raises(ValueError, match="training_backend"):
        engines.engine()


class _FakeCall:
    object_id = "fc-123"

    def __init__(self, finished_after: int) -> None:
        self.polls = 0
        self.finished_after = finished_after

    def get(self, timeout: float):
        self.polls += 1
        if self.polls <= self.finished_after:
            raise TimeoutError
        return {"endpoint": "logbb", "version": 3, "metrics": {"rmse": 0.5}}


def test_the_modal_engine_spawns_polls_the_progress_dict_and_returns_the_outcome(monkeypatch):
    """Modal's client is unreachable here; this checks the engine's own contract against the
    calls it makes (Function.from_name(...).spawn, FunctionCall.get(timeout), Dict.from_name)."""
    call = _FakeCall(finished_after=2)
    spawned = {}

    class Function:
        @staticmethod
        def from_name(app, name):
            spawned["where"] = (app, name)
            return types.SimpleNamespace(spawn=lambda *a, **k: spawned.update(args=a, kwargs=k) or call)

    states = {"fc-123": {"step": "epoch 1", "progress": 0.5}}
    fake = types.SimpleNamespace(Function=Function,
                                 Dict=types.SimpleNamespace(from_name=lambda name: states))
    monkeypatch.setitem(sys.modules, "modal", fake)
    seen = []
    result = ModalEngine("molserve-worker", poll_s=0).finetune(
        "unused", FinetuneRequest("logbb", TransformerParams(base="random:tiny", epochs=2)),
        lambda fraction, step, metrics: seen.append((round(fraction, 2), step)))
    assert spawned["where"] == ("molserve-worker", "finetune")
    assert spawned["args"] == ("logbb",) and spawned["kwargs"]["epochs"] == 2
    assert spawned["kwargs"]["base"] == "random:tiny"
    assert seen[0][1] == "modal: spawned call fc-123"
    assert seen[1:] == [(0.49, "modal: epoch 1")] * 2
    assert result == {"endpoint": "logbb", "version": 3, "metrics": {"rmse": 0.5},
                      "kind": "transformer", "engine": "modal"}


def test_a_transformer_training_job_runs_on_the_local_engine_and_registers_once(trained_registry,
                                                                                 tmp_path):
    from molserve.jobs.execute import main

    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root)
    store = SQLiteJobStore(tmp_path / "jobs" / "jobs.sqlite3")
    params = {"kind": "train", "model": "transformer", "endpoint": "logbb", "base": "random:tiny",
              "epochs": 1, "learning_rate": 1e-3, "batch_size": 64}
    job = store.create("train", params)
    argv = ["--job", job["id"], "--jobs-dir", str(tmp_path / "jobs"), "--registry", str(root),
            "--datasets", str(tmp_path / "datasets")]
    assert main(argv) == 0
    done = store.get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["engine"] == "local" and done["result"]["kind"] == "transformer"
    versions = Registry(root).versions("logbb")
    assert [a.kind for a in versions].count("transformer") == 1
    assert versions[-1].info.job_id == job["id"]
    # Run again (a job process restarted after registering): no second model.
    store.update(job["id"], state="running")
    assert main(argv) == 0
    assert [a.kind for a in Registry(root).versions("logbb")].count("transformer") == 1


def test_the_modal_engine_hands_graph_training_to_its_own_function(monkeypatch):
    from molserve.operations.training import GraphParams

    spawned = {}

    class Function:
        @staticmethod
        def from_name(app, name):
            spawned["where"] = (app, name)
            return types.SimpleNamespace(spawn=lambda *a, **k: spawned.update(args=a) or _FakeCall(0))

    fake = types.SimpleNamespace(Function=Function, Dict=types.SimpleNamespace(from_name=lambda n: {}))
    monkeypatch.setitem(sys.modules, "modal", fake)
    result = ModalEngine("molserve-worker", poll_s=0).finetune(
        "unused", FinetuneRequest("logbb", GraphParams(ensemble=3), tasks=["logbb", "dili"]),
        lambda *_: None)
    assert spawned["where"] == ("molserve-worker", "train_graph")
    assert spawned["args"][0] == ["logbb", "dili"] and spawned["args"][1]["ensemble"] == 3
    assert result["kind"] == "graph" and result["engine"] == "modal"


def test_a_graph_training_job_trains_each_endpoint_on_the_local_engine(trained_registry, tmp_path):
    pytest.importorskip("chemprop")
    from molserve.jobs.execute import main

    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root)
    store = SQLiteJobStore(tmp_path / "jobs" / "jobs.sqlite3")
    params = {"kind": "train", "model": "graph", "endpoint": "logbb", "tasks": ["logbb", "dili"],
              "epochs": 1, "ensemble": 1, "hidden": 16}
    job = store.create("train", params)
    argv = ["--job", job["id"], "--jobs-dir", str(tmp_path / "jobs"), "--registry", str(root),
            "--datasets", str(tmp_path / "datasets")]
    assert main(argv) == 0
    done = store.get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["kind"] == "graph" and done["result"]["engine"] == "local"
    assert [m["endpoint"] for m in done["result"]["models"]] == ["logbb", "dili"]
    for endpoint in ("logbb", "dili"):
        graph = Registry(root).latest(endpoint, kind="graph")
        assert graph is not None and graph.info.job_id == job["id"]
