"""The Ray Serve application's own decisions, checked without a cluster (the two-node test in
test_deploy_ray_e2e.py runs them on a real one): where proxies bind and which URL is printed,
what travels in runtime_env and what does not, health that reflects the loaded models, a
BatchPredictor that is deployed and keeps its event loop free, and a shutdown that removes
only molserve's applications."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import types

import pytest

pytest.importorskip("ray.serve")

from molserve.deploy import ray_app  # noqa: E402


@pytest.mark.parametrize("address, host, expected", [
    (None, None, ("127.0.0.1", "http://127.0.0.1:8100")),
    ("auto", None, ("127.0.0.1", "http://127.0.0.1:8100")),
    ("ray://127.0.0.1:10001", None, ("127.0.0.1", "http://127.0.0.1:8100")),
    ("ray://head.example.org:10001", None, ("0.0.0.0", "http://head.example.org:8100")),
    ("10.0.0.5:6379", None, ("0.0.0.0", "http://10.0.0.5:8100")),
    ("ray://head:10001", "10.0.0.7", ("10.0.0.7", "http://10.0.0.7:8100")),
])
def test_proxies_on_a_remote_cluster_bind_every_interface_and_the_url_names_the_head(address, host,
                                                                                     expected):
    assert ray_app.http_endpoint(address, host, 8100) == expected


def test_the_token_is_a_deployment_argument_not_runtime_env():
    application = ray_app.build_app(registry="/shared/registry", token="s3cret-t0ken", backend="onnx",
                                    resources={"molserve_node": 1})
    deployment = application._bound_deployment
    options = deployment.ray_actor_options
    assert options["resources"] == {"molserve_node": 1}
    # What the dashboard shows of a deployment: its options and runtime_env.
    assert "s3cret" not in json.dumps(options) and "runtime_env" not in options
    [settings] = deployment.init_args
    assert settings == {"registry": "/shared/registry", "backend": "onnx", "token": "s3cret-t0ken"}


def _replica(models: dict, errors: dict):
    replica = object.__new__(ray_app.WorkerDeployment.func_or_class)
    from molserve.config import WorkerSettings

    replica.settings = WorkerSettings(registry="/shared/registry")
    replica.models, replica.errors = models, errors
    return replica


def test_a_replica_that_loaded_no_model_fails_its_health_check():
    broken = _replica({}, {"logbb": "manifest.json: checksum mismatch"})
    with pytest.raises(RuntimeError, match="no model loaded from /shared/registry .logbb: manifest"):
        broken.check_health()
    _replica({"logbb": object()}, {}).check_health()


def test_the_batch_predictor_keeps_its_event_loop_free():
    """A batch that takes 0.3 s must not stall the replica's loop (health checks, new calls)."""
    predictor = object.__new__(ray_app.BatchPredictor.func_or_class)
    predictor.model = types.SimpleNamespace(
        predict=lambda smiles: time.sleep(0.3) or [{"smiles": s} for s in smiles])

    async def scenario() -> tuple[float, list]:
        gaps, stop = [], asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticking = asyncio.create_task(ticker())
        # The batch body `@serve.batch` calls with a list (the batching itself needs a replica).
        batch = type(predictor).__call__.__wrapped__
        answers = await batch(predictor, ["CCO", "CCN"])
        stop.set()
        await ticking
        return max(gaps), answers

    longest_gap, answers = asyncio.run(scenario())
    assert answers == [{"smiles": "CCO"}, {"smiles": "CCN"}]
    assert longest_gap < 0.15, f"the event loop stalled for {longest_gap:.2f} s"


class _FakeServe:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, **kwargs):
        self.calls.append(("start", kwargs))

    def run(self, application, **kwargs):
        self.calls.append(("run", application._bound_deployment.name, kwargs))

    def delete(self, name):
        self.calls.append(("delete", name))

    def shutdown(self):
        self.calls.append(("shutdown",))


def test_stopping_deletes_only_molserves_applications(monkeypatch):
    serve, inits = _FakeServe(), []
    monkeypatch.setattr(ray_app, "serve", serve)
    monkeypatch.setattr(ray_app, "ray", types.SimpleNamespace(
        init=lambda **kwargs: inits.append(kwargs), shutdown=lambda: inits.append("shutdown")))
    stop = threading.Event()
    urls = []
    ray_app.serve_until_stopped(registry="/shared/registry", address="ray://head:10001",
                                on_ready=lambda url: (urls.append(url), stop.set()), stop=stop,
                                batch_endpoints=["logbb"], poll_s=0.01)
    assert urls == ["http://head:8100"]
    # The code travels in the deploying job's runtime_env (Ray uploads local directories only
    # from there), which the replicas inherit.
    assert inits[0]["runtime_env"]["py_modules"][0].endswith("/molserve") and inits[-1] == "shutdown"
    assert "env_vars" not in inits[0]["runtime_env"]
    assert ("start", {"http_options": {"host": "0.0.0.0", "port": 8100}, "proxy_location": "EveryNode"}) \
        in serve.calls
    runs = [c for c in serve.calls if c[0] == "run"]
    assert [(name, kwargs["name"]) for _, name, kwargs in runs] == [
        ("molserve-batch-predictor", "molserve-batch-logbb"), ("molserve-worker", "molserve")]
    assert [c for c in serve.calls if c[0] in ("delete", "shutdown")] == [
        ("delete", "molserve"), ("delete", "molserve-batch-logbb")]
