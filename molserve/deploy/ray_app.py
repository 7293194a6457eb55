"""The worker tiers on Ray Serve (self-hosted clusters).

Run:  molserve deploy ray [--address ray://head:10001] [--gpus-per-replica 1]
      or: serve run molserve.deploy.ray_app:app   (settings from MOLSERVE_WORKER_* variables)

- `WorkerDeployment` serves the worker's HTTP API (the same FastAPI app as `molserve worker`,
  built on each replica, models loaded once per replica) with autoscaling, a GPU per replica
  when asked, and health checks that fail while a replica serves no model; the gateway points
  MOLSERVE_WORKER_URLS at Serve's HTTP address. Ray replaces a replica that dies or fails its
  checks; meanwhile the gateway answers from the fast tier.
- `BatchPredictor` offers one endpoint's transformer to Python callers through a deployment
  handle (`serve.get_app_handle("molserve-batch-<endpoint>")`), `@serve.batch` grouping
  concurrent calls and the model running off the replica's event loop.
- `finetune_task` and `graph_task` train as Ray tasks (GPU when asked), reporting progress to
  a `ProgressBoard` actor; with a job id the model's manifest names the job, and a job that
  already registered a model gets it back instead of a second one.

molserve's code travels with the job that deploys the application (its `runtime_env`
`py_modules`, inherited by the replicas), so the nodes need only its dependencies (or
`pip_from_lock=True`, which has Ray install the locked versions). `serve run` does not ship it:
pass `--runtime-env-json '{"py_modules": ["<checkout>/molserve"]}'` there.
The worker token is a deployment argument, not an environment variable: the dashboard shows
a deployment's runtime_env, not its arguments. The registry directory must be visible to
every node (shared filesystem or synced volume).
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import ray
from ray import serve

APP_NAME = "molserve"
DEPLOYMENT_NAME = "molserve-worker"
BATCH_APP_PREFIX = "molserve-batch-"


def code_runtime_env(*, pip_from_lock: bool = False) -> dict[str, Any]:
    """The runtime_env that ships molserve's code to every worker process of the cluster (and
    with `pip_from_lock`, has Ray install the worker's dependencies at the locked versions)."""
    import molserve

    env: dict[str, Any] = {"py_modules": [str(Path(molserve.__file__).resolve().parent)],
                           "excludes": ["__pycache__", "*.pyc"]}
    if pip_from_lock:
        from molserve.deploy.requirements import locked_requirements

        requirements, _ = locked_requirements()
        env["pip"] = requirements
    return env


def _worker_settings(settings: dict[str, Any]):
    from molserve.config import WorkerSettings

    return WorkerSettings(**settings)


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=64,
    health_check_period_s=5,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=10,
)
@serve.ingress()
class WorkerDeployment:
    """One replica: the worker's models, loaded once, behind the worker's HTTP API."""

    def __init__(self, settings: dict[str, Any]) -> None:
        from molserve.worker.app import load_models

        self.settings = _worker_settings(settings)
        self.models, self.errors = load_models(self.settings)

    def __serve_build_asgi_app__(self):
        from molserve.worker.app import create_worker_app

        return create_worker_app(self.settings, preloaded=(self.models, self.errors))

    def check_health(self) -> None:
        """Ray replaces the replica when this raises: a replica that loaded no model would only
        answer 404s and 503s."""
        if not self.models:
            problems = "; ".join(f"{k}: {v}" for k, v in sorted(self.errors.items())) or "none found"
            raise RuntimeError(f"no model loaded from {self.settings.registry} ({problems})")


@serve.deployment(name="molserve-batch-predictor", max_ongoing_requests=256)
class BatchPredictor:
    """One endpoint's transformer for Python callers: `await handle.remote(smiles)` per
    molecule; concurrent calls are grouped into batches."""

    def __init__(self, settings: dict[str, Any], endpoint: str) -> None:
        from molserve.models.transformer.runtime import TransformerModel, transformer_artifacts
        from molserve.registry import Registry

        config = _worker_settings(settings)
        artifact = transformer_artifacts(Registry(config.registry)).get(endpoint)
        if artifact is None:
            raise RuntimeError(f"no transformer model for {endpoint!r} in {config.registry}")
        self.model = TransformerModel.load(artifact, backend=config.backend).for_endpoint(endpoint)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def __call__(self, smiles: list[str]) -> list[dict]:
        # The model is CPU- or GPU-bound: off the event loop, so batches keep forming and the
        # replica keeps answering its health checks while one runs.
        return await asyncio.to_thread(self.model.predict, smiles)


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Where a training task writes its latest progress, for the job that waits on it."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}

    def put(self, state: dict[str, Any]) -> None:
        self.state = state

    def get(self) -> dict[str, Any]:
        return self.state


def new_board():
    """A progress board on the driver's own node (soft: anywhere if that fails), so it lives as
    long as the job that reads it rather than on a worker node that may be lost."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    return ProgressBoard.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=True)).remote()


def _reporter(board) -> Callable[[str, float, dict], None]:
    last = [0.0]

    def report(step: str, fraction: float, info: dict) -> None:
        now = time.monotonic()
        if board is None or now - last[0] < 0.5:
            return
        last[0] = now
        board.put.remote({"step": step, "progress": round(fraction, 4),
                          **{k: v for k, v in info.items() if isinstance(v, int | float)}})

    return report


def _extra(job_id: str | None, manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a job's models add to their manifests: the job, and its ownership fields."""
    extra = {**({"job_id": job_id} if job_id else {}), **(manifest or {})}
    return extra or None


@ray.remote(max_retries=0)
def finetune_task(registry: str, endpoint: str, params: dict[str, Any], tasks: list[str] | None = None,
                  job_id: str | None = None, board=None, manifest: dict[str, Any] | None = None) -> dict:
    """Fine-tune a transformer for `endpoint` (with `tasks`, one multi-task model registered as
    `endpoint`); with `job_id`, at most one model per job."""
    from molserve.operations import training
    from molserve.registry import Registry

    store = Registry(registry)
    artifact = training.registered_by(store, endpoint, job_id) if job_id else None
    if artifact is None:
        artifact = training.finetune(
            store, tasks or [endpoint], training.TransformerParams(**params),
            name=endpoint if tasks else None, extra_manifest=_extra(job_id, manifest),
            progress=_reporter(board))
    return training.outcome(artifact)


def _train_each(kind: str, registry: str, endpoints: list[str], params: dict[str, Any],
                job_id: str | None, board, manifest: dict[str, Any] | None = None) -> dict:
    """Models of `kind` (graph, foundation) for `endpoints`, one each, with the same code as
    `molserve finetune --model <kind>`; with `job_id`, endpoints the job already trained are not
    trained again."""
    from molserve.operations import training
    from molserve.registry import Registry

    store = Registry(registry)
    done = {e: training.registered_by(store, e, job_id) for e in endpoints} if job_id else {}
    todo = [e for e in endpoints if done.get(e) is None]
    if todo:
        train, parameters = ((training.train_graph, training.GraphParams) if kind == "graph"
                             else (training.train_foundation, training.FoundationParams))
        for artifact in train(store, todo, parameters(**params),
                              extra_manifest=_extra(job_id, manifest), progress=_reporter(board)):
            done[artifact.endpoint] = artifact
    artifacts = [done[e] for e in endpoints]
    return {**training.outcome(artifacts[0]), "models": [training.outcome(a) for a in artifacts]}


@ray.remote(max_retries=0)
def graph_task(registry: str, endpoints: list[str], params: dict[str, Any], job_id: str | None = None,
               board=None, manifest: dict[str, Any] | None = None) -> dict:
    """Graph models for `endpoints` (see `_train_each`)."""
    return _train_each("graph", registry, endpoints, params, job_id, board, manifest)


@ray.remote(max_retries=0)
def foundation_task(registry: str, endpoints: list[str], params: dict[str, Any],
                    job_id: str | None = None, board=None, manifest: dict[str, Any] | None = None) -> dict:
    """Foundation models (heads on MiniMol embeddings) for `endpoints` (see `_train_each`); the
    embeddings go to the store in the registry the cluster shares."""
    return _train_each("foundation", registry, endpoints, params, job_id, board, manifest)


def submit_finetune(registry: str, endpoint: str, params: dict[str, Any], *, num_gpus: float = 0,
                    tasks: list[str] | None = None, job_id: str | None = None, board=None,
                    manifest: dict[str, Any] | None = None):
    """Start fine-tuning on the cluster; returns the task's ObjectRef at once."""
    return finetune_task.options(num_gpus=num_gpus).remote(registry, endpoint, params, tasks, job_id,
                                                           board, manifest)


def submit_graph(registry: str, endpoints: list[str], params: dict[str, Any], *, num_gpus: float = 0,
                 job_id: str | None = None, board=None, manifest: dict[str, Any] | None = None):
    """Start graph training on the cluster; returns the task's ObjectRef at once."""
    return graph_task.options(num_gpus=num_gpus).remote(registry, endpoints, params, job_id, board,
                                                        manifest)


def submit_foundation(registry: str, endpoints: list[str], params: dict[str, Any], *,
                      num_gpus: float = 0, job_id: str | None = None, board=None,
                      manifest: dict[str, Any] | None = None):
    """Start foundation training on the cluster; returns the task's ObjectRef at once."""
    return foundation_task.options(num_gpus=num_gpus).remote(registry, endpoints, params, job_id, board,
                                                             manifest)


def worker_settings(*, registry: str | Path, backend: str = "torch", token: str | None = None) -> dict:
    """The replicas' worker settings (passed as a deployment argument, never as environment)."""
    settings: dict[str, Any] = {"registry": str(Path(registry).resolve()), "backend": backend}
    if token:
        settings["token"] = token
    return settings


def build_app(*, registry: str | Path, backend: str = "torch", token: str | None = None,
              num_gpus: float = 0, num_cpus: float = 1, min_replicas: int = 1,
              max_replicas: int = 4, target_ongoing_requests: int = 16,
              resources: dict[str, float] | None = None):
    """The worker's Serve application for `serve.run`. Its replicas inherit the runtime_env
    of the job that deploys it (`run` ships molserve's code there: Ray uploads a local
    directory only from the job's own runtime_env)."""
    actor_options: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": num_cpus}
    if resources:
        actor_options["resources"] = resources
    return WorkerDeployment.options(
        ray_actor_options=actor_options,
        autoscaling_config={"min_replicas": min_replicas, "max_replicas": max_replicas,
                            "target_ongoing_requests": target_ongoing_requests},
    ).bind(worker_settings(registry=registry, backend=backend, token=token))


def build_batch_app(endpoint: str, *, registry: str | Path, backend: str = "torch", num_gpus: float = 0,
                    num_cpus: float = 1, resources: dict[str, float] | None = None):
    """A BatchPredictor application for one endpoint (deployed as BATCH_APP_PREFIX + endpoint)."""
    actor_options: dict[str, Any] = {"num_gpus": num_gpus, "num_cpus": num_cpus}
    if resources:
        actor_options["resources"] = resources
    return BatchPredictor.options(ray_actor_options=actor_options).bind(
        worker_settings(registry=registry, backend=backend), endpoint)


def http_endpoint(address: str | None, host: str | None, port: int) -> tuple[str, str]:
    """(the host Serve's proxies bind, the URL to print). On this machine: loopback. On a
    cluster (an address naming another machine): every interface, and the head's host name in
    the URL, since a proxy bound to 127.0.0.1 cannot be reached from the gateway's machine."""
    cluster_host = None
    if address and address != "auto":
        cluster_host = urlsplit(address if "://" in address else f"ray://{address}").hostname
    remote = cluster_host not in (None, "127.0.0.1", "localhost", "::1")
    bind = host or ("0.0.0.0" if remote else "127.0.0.1")
    shown = cluster_host if bind in ("0.0.0.0", "::") and remote else (
        "127.0.0.1" if bind in ("0.0.0.0", "::") else bind)
    return bind, f"http://{shown}:{port}"


def run(*, registry: str | Path, address: str | None = None, host: str | None = None, port: int = 8100,
        blocking: bool = True, proxy_location: str = "EveryNode",
        batch_endpoints: list[str] | tuple[str, ...] = (), **options) -> str:
    """Start (or join) Ray, deploy the worker (and a BatchPredictor per `batch_endpoints`), and
    return the worker's base URL."""
    bind, url = http_endpoint(address, host, port)
    pip_from_lock = options.pop("pip_from_lock", False)
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
             runtime_env=code_runtime_env(pip_from_lock=pip_from_lock))
    serve.start(http_options={"host": bind, "port": port}, proxy_location=proxy_location)
    for endpoint in batch_endpoints:
        serve.run(build_batch_app(endpoint, registry=registry, backend=options.get("backend", "torch"),
                                  num_gpus=options.get("num_gpus", 0),
                                  resources=options.get("resources")),
                  name=f"{BATCH_APP_PREFIX}{endpoint}", route_prefix=None, blocking=False)
    serve.run(build_app(registry=registry, **options), name=APP_NAME, route_prefix="/",
              blocking=blocking)
    return url


def serve_until_stopped(*, registry: str | Path, address: str | None = None, host: str | None = None,
                        port: int = 8100, on_ready: Callable[[str], None] | None = None,
                        poll_s: float = 0.5, stop: threading.Event | None = None,
                        batch_endpoints: list[str] | tuple[str, ...] = (), **options) -> None:
    """Deploy the worker (as `run`), tell `on_ready` its URL, and keep it up until SIGINT or
    SIGTERM (or `stop` is set); then delete this application (and its BatchPredictors) only:
    other applications on the cluster keep running, and a local Ray instance stops with us."""
    url = run(registry=registry, address=address, host=host, port=port, blocking=False,
              batch_endpoints=batch_endpoints, **options)
    if on_ready is not None:
        on_ready(url)
    stop = stop or threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # Short waits rather than one long one: the signal handler runs between them.
        while not stop.wait(poll_s):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for name in [APP_NAME, *(f"{BATCH_APP_PREFIX}{e}" for e in batch_endpoints)]:
            serve.delete(name)
        ray.shutdown()


# For `serve run molserve.deploy.ray_app:app`: the worker's settings (MOLSERVE_WORKER_*) and the
# replicas' GPUs (MOLSERVE_RAY_GPUS_PER_REPLICA).
def _app_from_settings():
    from molserve.config import RayDeploySettings, WorkerSettings

    worker = WorkerSettings()
    return build_app(registry=worker.registry, backend=worker.backend, token=worker.token,
                     num_gpus=RayDeploySettings().gpus_per_replica)


app = _app_from_settings()
