"""The transformer worker tier on Ray Serve (self-hosted clusters).

Run:  molserve deploy ray [--address ray://head:10001] [--gpus-per-replica 1]
      or: serve run molserve.deploy.ray_app:app   (settings from MOLSERVE_WORKER_* variables)

- `WorkerDeployment` serves the worker's HTTP API (the same FastAPI app as `molserve worker`,
  built on each replica, models loaded once per replica) with autoscaling, a GPU per replica
  when asked, and health checks; the gateway points MOLSERVE_WORKER_URLS at Serve's HTTP
  address. Ray restarts a replica that dies; meanwhile the gateway answers from the fast tier.
- `BatchPredictor` offers the models to Python callers through a deployment handle, with
  `@serve.batch` grouping concurrent calls.
- `finetune_task` runs fine-tuning as a Ray task (GPU when asked); `submit_finetune` starts it
  and returns its ObjectRef without blocking.

The registry directory must be visible to every node (shared filesystem or synced volume).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

import ray
from ray import serve

DEPLOYMENT_NAME = "molserve-worker"


def _settings():
    from molserve.config import WorkerSettings

    return WorkerSettings()


def build_worker_asgi():
    """Evaluated on each replica: the worker app with its models already loaded."""
    from molserve.worker.app import create_worker_app, load_models

    settings = _settings()
    return create_worker_app(settings, preloaded=load_models(settings))


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=64,
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress(build_worker_asgi)
class WorkerDeployment:
    def check_health(self) -> None:
        """Ray restarts the replica when this raises; the process being up is the check here."""
        return None


@serve.deployment(name="molserve-batch-predictor", max_ongoing_requests=256)
class BatchPredictor:
    def __init__(self, endpoint: str) -> None:
        from molserve.models.transformer.runtime import TransformerModel, transformer_artifacts
        from molserve.registry import Registry

        settings = _settings()
        artifact = transformer_artifacts(Registry(settings.registry)).get(endpoint)
        if artifact is None:
            raise RuntimeError(f"no transformer model for {endpoint!r} in {settings.registry}")
        self.model = TransformerModel.load(artifact, backend=settings.backend).for_endpoint(endpoint)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def __call__(self, smiles: list[str]) -> list[dict]:
        return self.model.predict(smiles)


@ray.remote(max_retries=0)
def finetune_task(registry: str, endpoint: str, base: str, epochs: int = 30,
                  learning_rate: float = 5e-5, tasks: list[str] | None = None) -> dict:
    """Fine-tune for `endpoint`, or with `tasks` one multi-task model registered as `endpoint`."""
    from molserve.models.transformer.pipeline import finetune_endpoints
    from molserve.registry import Registry

    artifact = finetune_endpoints(Registry(registry), tasks or [endpoint],
                                  name=endpoint if tasks else None, base=base, epochs=epochs,
                                  learning_rate=learning_rate)
    return {"endpoint": artifact.endpoint, "version": artifact.version,
            "metrics": artifact.info.test_metrics()}


def submit_finetune(registry: str, endpoint: str, base: str, *, num_gpus: float = 0, **kwargs):
    """Start fine-tuning on the cluster; returns the task's ObjectRef at once."""
    return finetune_task.options(num_gpus=num_gpus).remote(registry, endpoint, base, **kwargs)


@ray.remote(max_retries=0)
def graph_task(registry: str, endpoints: list[str], params: dict) -> dict:
    """Graph models for `endpoints` (one each), with the same code as `molserve finetune
    --model graph`."""
    from molserve.operations.training import GraphParams, outcome, train_graph
    from molserve.registry import Registry

    artifacts = train_graph(Registry(registry), endpoints, GraphParams(**params))
    return {**outcome(artifacts[0]), "models": [outcome(a) for a in artifacts]}


def submit_graph(registry: str, endpoints: list[str], params: dict, *, num_gpus: float = 0):
    """Start graph training on the cluster; returns the task's ObjectRef at once."""
    return graph_task.options(num_gpus=num_gpus).remote(registry, endpoints, params)


def build_app(*, registry: str | Path, backend: str = "torch", token: str | None = None,
              num_gpus: float = 0, num_cpus: float = 1, min_replicas: int = 1,
              max_replicas: int = 4, target_ongoing_requests: int = 16):
    """The Serve application for `serve.run`, with replica settings passed as environment."""
    env = {"MOLSERVE_WORKER_REGISTRY": str(Path(registry).resolve()),
           "MOLSERVE_WORKER_BACKEND": backend}
    if token:
        env["MOLSERVE_WORKER_TOKEN"] = token
    return WorkerDeployment.options(
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus,
                           "runtime_env": {"env_vars": env}},
        autoscaling_config={"min_replicas": min_replicas, "max_replicas": max_replicas,
                            "target_ongoing_requests": target_ongoing_requests},
    ).bind()


def run(*, registry: str | Path, address: str | None = None, host: str = "127.0.0.1", port: int = 8100,
        blocking: bool = True, **options) -> str:
    """Start (or join) Ray, deploy the worker, and return its base URL."""
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
             log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(registry=registry, **options), name="molserve", route_prefix="/",
              blocking=blocking)
    return f"http://{host}:{port}"


def serve_until_stopped(*, registry: str | Path, address: str | None = None, host: str = "127.0.0.1",
                        port: int = 8100, on_ready: Callable[[str], None] | None = None,
                        poll_s: float = 0.5, **options) -> None:
    """Deploy the worker (as `run`), tell `on_ready` its URL, and keep it up until SIGINT or
    SIGTERM; then shut Serve and Ray down (a local Ray instance goes with them)."""
    url = run(registry=registry, address=address, host=host, port=port, blocking=False, **options)
    if on_ready is not None:
        on_ready(url)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Short waits rather than one long one: the signal handler runs between them.
        while not stop.wait(poll_s):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.shutdown()
        ray.shutdown()


# For `serve run molserve.deploy.ray_app:app`: the worker's settings (MOLSERVE_WORKER_*) and the
# replicas' GPUs (MOLSERVE_RAY_GPUS_PER_REPLICA).
def _app_from_settings():
    from molserve.config import RayDeploySettings, WorkerSettings

    worker = WorkerSettings()
    return build_app(registry=worker.registry, backend=worker.backend, token=worker.token,
                     num_gpus=RayDeploySettings().gpus_per_replica)


app = _app_from_settings()
