"""The Modal app: what `modal deploy` would build and declare (read from what the app module
hands Modal's own constructors), its classes and functions run locally on CPU with a tiny model
through Modal's local execution, the deploy guide and `--check` (Modal itself is unreachable
here: the account side is faked at Modal's client calls)."""

from __future__ import annotations

import importlib
import shutil
import sys
import time
import types
import warnings
from pathlib import Path

import pytest

modal = pytest.importorskip("modal")

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the checkout: pyproject.toml, requirements.lock

DEPLOY_ENV = {"MOLSERVE_MODAL_MIN_CONTAINERS": "1", "MOLSERVE_MODAL_MAX_BATCH": "7",
              "MOLSERVE_MODAL_WAIT_MS": "3", "MOLSERVE_MODAL_GPU": "A100"}


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="module")
def built(tmp_path_factory, monkeypatch_module):
    """The app module imported as `modal deploy` imports it, with what it passed to Modal's
    Image, Volume and Dict constructors recorded."""
    root = tmp_path_factory.mktemp("modal") / "registry"
    patch = monkeypatch_module
    for name, value in {**DEPLOY_ENV, "MOLSERVE_MODAL_REGISTRY_MOUNT": str(root),
                        "MOLSERVE_WORKER_TOKEN": "t0ken"}.items():
        patch.setenv(name, value)
    calls: dict[str, list] = {"pip_install": [], "env": [], "run_commands": [], "volume": [], "dict": []}

    def recording(kind, original):
        def method(self, *args, **kwargs):
            calls[kind].append((args, kwargs))
            return original(self, *args, **kwargs)
        return method

    def recording_static(kind, original):
        def method(*args, **kwargs):
            calls[kind].append((args, kwargs))
            return original(*args, **kwargs)
        return staticmethod(method)

    for kind in ("pip_install", "env", "run_commands"):
        patch.setattr(modal.Image, kind, recording(kind, getattr(modal.Image, kind)))
    patch.setattr(modal.Volume, "from_name", recording_static("volume", modal.Volume.from_name))
    patch.setattr(modal.Dict, "from_name", recording_static("dict", modal.Dict.from_name))
    sys.modules.pop("molserve.deploy.modal_app", None)  # imported anew, with the settings above
    module = importlib.import_module("molserve.deploy.modal_app")
    warnings.filterwarnings("ignore", message=".*executing locally.*")
    return types.SimpleNamespace(module=module, calls=calls, root=root)


@pytest.fixture(scope="module")
def modal_app(built, transformer_registry):
    """The app module with a registry of tiny models where its Volume would be mounted."""
    shutil.copytree(transformer_registry.root, built.root)
    return built.module


def _locked() -> dict[str, str]:
    from packaging.utils import canonicalize_name

    versions = {}
    for line in (SOURCE_ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            versions[canonicalize_name(name)] = version
    return versions


def recorded_spec(function):
    """What Modal recorded from a function's decorator. Modal keeps it as `_spec_` (what `modal
    shell` reads); a Modal without it fails here rather than skipping the checks."""
    spec = function._spec_
    assert spec is not None
    return spec


def test_declared_resources(built):
    modal_app = built.module
    assert modal_app.app.name == "molserve-worker"
    assert set(modal_app.VOLUMES) == {modal_app.REGISTRY_MOUNT, modal_app.HF_MOUNT}
    assert modal_app.MIN_CONTAINERS == 1 and modal_app.SCALEDOWN_S == 300 and modal_app.GPU == "A100"
    worker = recorded_spec(modal_app.Worker._get_class_service_function())
    assert worker.gpus == "A100"
    assert set(worker.volumes) == set(modal_app.VOLUMES)
    assert len(worker.secrets) == 1
    assert recorded_spec(modal_app.finetune).gpus == modal_app.TRAIN_GPU == "A10G"
    assert recorded_spec(modal_app.train_graph).gpus == modal_app.TRAIN_GPU
    assert set(recorded_spec(modal_app.finetune).volumes) == set(modal_app.VOLUMES)


def test_the_image_installs_the_worker_requirements_at_the_locked_versions(built):
    """Every package the image installs is pinned to requirements.lock's version (torch by
    version only: the CUDA build of the same release), onnx included; everything they pull in
    is constrained by the lock."""
    locked = _locked()
    # (Modal's base image makes pip_install calls of its own.)
    [(packages, options)] = [(args, kwargs) for args, kwargs in built.calls["pip_install"]
                             if "-c" in kwargs.get("extra_options", "")]
    pins = dict(p.split("==") for p in packages)
    assert all("==" in p for p in packages), packages
    for name in ("torch", "transformers", "tokenizers", "onnxruntime", "onnx", "onnxscript", "chemprop",
                 "fastapi", "uvicorn", "rdkit", "numpy", "safetensors", "pydantic-settings"):
        assert name in pins, f"{name} is not installed in the image"
        assert pins[name] == locked[name].split("+")[0], (name, pins[name], locked[name])
    assert pins["torch"] == "2.13.0" and "+" not in "".join(packages)
    assert options["extra_options"] == f"-c {built.module.CONSTRAINTS_PATH}"
    [command] = [args[0] for args, _ in built.calls["run_commands"]
                 if built.module.CONSTRAINTS_PATH in args[0]]
    assert command.endswith(f"> {built.module.CONSTRAINTS_PATH}")
    for name, version in locked.items():
        if name not in pins and "+" not in version:
            assert f"{name}=={version}" in command, f"{name} is not constrained to the lock"


def test_deploy_time_settings_reach_the_container(built, monkeypatch):
    """Inside a container only the image's environment sets MOLSERVE_MODAL_*: it must carry what
    was chosen at deploy time."""
    from molserve.config import ModalDeploySettings

    [environment] = [args[0] for args, _ in built.calls["env"] if "HF_HOME" in args[0]]
    for name in list(DEPLOY_ENV) + ["MOLSERVE_MODAL_REGISTRY_MOUNT"]:
        monkeypatch.delenv(name, raising=False)
    assert ModalDeploySettings().max_batch != 7  # what a container would read without them
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert ModalDeploySettings() == built.module.DEPLOY
    assert ModalDeploySettings().registry_mount == str(built.root)
    assert (ModalDeploySettings().max_batch, ModalDeploySettings().wait_ms) == (7, 3)


def test_named_objects_are_created_if_missing(built):
    volumes = {args[0]: kwargs for args, kwargs in built.calls["volume"]}
    assert set(volumes) == {"molserve-registry", "molserve-hf-cache"}
    assert all(kwargs.get("create_if_missing") is True for kwargs in volumes.values())
    [(args, kwargs)] = built.calls["dict"]
    assert args == ("molserve-progress",) and kwargs.get("create_if_missing") is True


def test_worker_class_serves_the_worker_api_locally_with_its_token(modal_app):
    from fastapi.testclient import TestClient

    asgi = modal_app.Worker().web.local()
    with TestClient(asgi) as client:
        assert client.get("/readyz").status_code == 401
        auth = {"authorization": "Bearer t0ken"}
        ready = client.get("/readyz", headers=auth).json()
        assert ready["ready"] and "logbb" in ready["models"]
        body = client.post("/v1/predict", headers=auth,
                           json={"molecules": ["CCO", "c1ccccc1O"], "endpoints": ["logbb"]}).json()
        assert body["results"]["logbb"][0]["provenance"]["tier"] == "transformer"


def test_the_worker_refuses_to_start_without_a_token(modal_app, monkeypatch):
    monkeypatch.delenv("MOLSERVE_WORKER_TOKEN")
    with pytest.raises(RuntimeError, match="MOLSERVE_WORKER_TOKEN is empty: the Worker's URL is public"):
        modal_app._worker_settings()
    monkeypatch.setenv("MOLSERVE_WORKER_TOKEN", "")
    with pytest.raises(RuntimeError, match="modal secret create molserve-worker"):
        modal_app._worker_settings()


def test_a_running_worker_serves_a_newly_registered_model(built, modal_app, monkeypatch):
    """A container started before a model was trained serves it after the registry changes
    (locally the registry's listing is the generation; on Modal the Dict key the training
    functions bump after committing the Volume)."""
    from fastapi.testclient import TestClient

    from molserve.registry import Registry

    monkeypatch.setattr(built.module, "RELOAD_CHECK_S", 0.0)
    auth = {"authorization": "Bearer t0ken"}
    with TestClient(built.module.Worker().web.local()) as client:
        def served_version() -> int:
            models = client.get("/v1/models", headers=auth).json()
            return next(m["version"] for m in models
                        if m["endpoint"] == "logbb" and m["tier"] == "transformer")

        before = served_version()
        latest = Registry(built.root).latest("logbb", kind="transformer")
        assert latest.version == before
        newer = latest.path.parent / f"v{latest.version + 1}"
        shutil.copytree(latest.path, newer)
        manifest = (newer / "manifest.json").read_text()
        (newer / "manifest.json").write_text(
            manifest.replace(f'"version": {before}', f'"version": {before + 1}'))
        deadline = time.monotonic() + 120
        while served_version() != before + 1:
            assert time.monotonic() < deadline, "the running worker never served the new model"
            time.sleep(0.2)
    shutil.rmtree(newer)


def test_training_runs_locally_and_registers_once_per_job(modal_app):
    answers = modal_app.BatchPredictor(endpoint="logbb").predict.local(["CCO", "C1CC"])
    assert answers[0]["provenance"]["tier"] == "transformer" and "error" in answers[1]
    params = {"base": "random:tiny", "epochs": 1, "learning_rate": 1e-3, "export_onnx": False}
    from molserve.registry import Registry

    registry = Registry(modal_app.REGISTRY_MOUNT)
    before = len(registry.versions("hydration_free_energy"))
    summary = modal_app.finetune.local("hydration_free_energy", params, job_id="job-1")
    assert summary["endpoint"] == "hydration_free_energy" and "rmse" in summary["metrics"]
    assert modal_app.LOCAL_PROGRESS["local"]["step"] == "done"
    assert registry.latest("hydration_free_energy").info.job_id == "job-1"
    again = modal_app.finetune.local("hydration_free_energy", params, job_id="job-1")
    assert again == summary
    assert len(registry.versions("hydration_free_energy")) == before + 1


def test_a_second_call_for_a_job_waits_for_the_first(modal_app, monkeypatch):
    """A resumed job whose first call still runs gets that call's result, not a second model."""
    class FunctionCall:
        @staticmethod
        def from_id(call_id):
            assert call_id == "fc-first"
            return types.SimpleNamespace(get=lambda: {"endpoint": "logbb", "version": 9})

    monkeypatch.setattr(modal, "FunctionCall", FunctionCall)
    monkeypatch.setitem(modal_app.LOCAL_PROGRESS, "job:job-2", "fc-first")
    trained = []
    assert modal_app._train_once("job-2", trained.append) == {"endpoint": "logbb", "version": 9}
    assert trained == []


# The deploy guide and --check.

def _modal_command(args: list[str]):
    """Resolve `modal <args>` through Modal's own command line, as the shell would run it,
    without running it."""
    import click
    from modal.cli.entry_point import entrypoint_cli

    command, rest = entrypoint_cli, list(args)
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"modal has no command {name!r} (in `modal {' '.join(args)}`)"
        command = found
    command.make_context(command.name, list(rest))  # raises on an unknown option or missing argument
    return command


def test_the_guide_runs_in_a_working_order(capsys):
    from molserve.cli import main

    assert main(["deploy", "modal"]) == 0
    out = capsys.readouterr().out
    steps = [line.split("#")[0].strip() for line in out.splitlines()
             if line.strip()[:2].rstrip(".").isdigit()]
    commands = [step.split(None, 1)[1] for step in steps]
    for command in commands:
        if command.startswith("modal "):
            _modal_command(command.split()[1:])
    creates = commands.index("molserve deploy modal --check")
    puts = next(i for i, c in enumerate(commands) if c.startswith("modal volume put molserve-registry"))
    deploys = next(i for i, c in enumerate(commands) if c.startswith("modal deploy"))
    secret = next(i for i, c in enumerate(commands) if c.startswith("modal secret create molserve-worker"))
    # The secret before the check that looks for it; the Volume created before `put`; the
    # models uploaded before the first Worker starts.
    assert secret < creates < puts < deploys
    assert "never in a request body" in out


def test_execute_runs_modal_from_this_python(monkeypatch, capsys):
    import subprocess

    from molserve.cli import main

    ran = []
    monkeypatch.setattr(subprocess, "run", lambda command, check: ran.append(command) or
                        types.SimpleNamespace(returncode=0))
    assert main(["deploy", "modal", "--execute"]) == 0
    [command] = ran
    assert command[:4] == [sys.executable, "-m", "modal", "deploy"]
    assert command[4].endswith("molserve/deploy/modal_app.py")


class _FakeAccount:
    """Modal's client calls `--check` makes, answered as an account would."""

    def __init__(self, *, secret: bool = True, reachable: bool = True, models: list[str] = ()) -> None:
        self.created: list[tuple[str, str, dict]] = []
        self.secret, self.reachable, self.models = secret, reachable, list(models)

    def install(self, monkeypatch) -> None:
        from modal.exception import NotFoundError

        account = self

        def hello():
            if not account.reachable:
                raise ConnectionError("api.modal.com: Name or service not known")

        def secret_from_name(name, **kwargs):
            def hydrate():
                if not account.secret:
                    raise NotFoundError(f"Secret '{name}' not found")
            return types.SimpleNamespace(hydrate=hydrate)

        def creator(kind):
            return types.SimpleNamespace(
                create=lambda name, **kwargs: account.created.append((kind, name, kwargs)))

        entries = [types.SimpleNamespace(path=f"{m}/") for m in self.models]
        monkeypatch.setenv("MODAL_TOKEN_ID", "ak-test")
        monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-test")
        monkeypatch.setattr(modal.Client, "from_env", lambda *a, **k: types.SimpleNamespace(hello=hello))
        monkeypatch.setattr(modal.Secret, "from_name", secret_from_name)
        monkeypatch.setattr(modal.Volume, "objects", creator("volume"))
        monkeypatch.setattr(modal.Dict, "objects", creator("dict"))
        monkeypatch.setattr(modal.Volume, "from_name", lambda name, **k: types.SimpleNamespace(
            listdir=lambda path: entries))


def test_check_without_a_token_says_how_to_get_one(monkeypatch, capsys):
    from molserve.cli import main

    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("MODAL_CONFIG_PATH", "/nonexistent/.modal.toml")
    from modal.config import config

    monkeypatch.setattr(config, "get", lambda key, **kwargs: None)
    assert main(["deploy", "modal", "--check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("molserve: error: no Modal token on this machine: run `modal token new`")
    assert "Traceback" not in err


@pytest.mark.parametrize("account, message", [
    (dict(reachable=False), "cannot reach Modal to check the token"),
    (dict(secret=False), "no Modal secret 'molserve-worker': run `modal secret create molserve-worker"),
])
def test_check_names_what_is_missing(monkeypatch, capsys, account, message):
    from molserve.cli import main

    fake = _FakeAccount(**account)
    fake.install(monkeypatch)
    assert main(["deploy", "modal", "--check"]) != 0
    err = capsys.readouterr().err
    assert err.startswith(f"molserve: error: {message}") and "Traceback" not in err
    assert fake.created == []  # nothing is created for an account that is not ready


def test_check_creates_volumes_and_dict_idempotently_and_warns_on_an_empty_registry(monkeypatch, capsys):
    from molserve.cli import main

    fake = _FakeAccount(models=[])
    fake.install(monkeypatch)
    assert main(["deploy", "modal", "--check"]) == 0
    assert main(["deploy", "modal", "--check"]) == 0
    expected = [("volume", "molserve-registry", {"allow_existing": True}),
                ("volume", "molserve-hf-cache", {"allow_existing": True}),
                ("dict", "molserve-progress", {"allow_existing": True})]
    assert fake.created == expected * 2
    out = capsys.readouterr().out
    assert "the molserve-registry volume is empty: upload models with `modal volume put" in out
    assert "ready to deploy (see the warnings above)" in out

    stocked = _FakeAccount(models=["logbb", "dili"])
    stocked.install(monkeypatch)
    assert main(["deploy", "modal", "--check"]) == 0
    out = capsys.readouterr().out
    assert "registry volume holds 2 endpoint folders: dili, logbb" in out and "!!" not in out
