"""The worker tiers on Modal (serverless GPUs).

Deploy:  molserve deploy modal --check     (validates the account's token, secret and volume)
         molserve deploy modal --execute   (or: modal deploy molserve/deploy/modal_app.py)

- `Worker` serves the worker's HTTP API (`/v1/predict`, `/readyz`, `/metrics`, ...) through
  `@modal.asgi_app`, so the gateway talks to it exactly as to a local worker: set
  MOLSERVE_WORKER_URLS to its URL. Models are loaded once per container in `@modal.enter`;
  a running container picks up a newly trained model (see `deploy.reloading`). Its URL is
  public, so a container refuses to start without a worker token.
- `BatchPredictor` exposes the same models to Python callers with `@modal.batched`
  (e.g. `BatchPredictor(endpoint="solubility").predict.map(smiles)` for a large screen).
- `finetune`, `train_graph` and `train_foundation` train on a GPU; start them with `.spawn()` (never inside a
  request). They write the model to the registry Volume, their progress to a modal.Dict that
  `progress(call_id)` reads, and with a `job_id` register at most one model per job.
- The registry and the Hugging Face cache live on Modal Volumes, created on first use.
  Containers scale to zero after MOLSERVE_MODAL_SCALEDOWN_S idle seconds;
  MOLSERVE_MODAL_MIN_CONTAINERS keeps a warm pool.
- Settings are read at deploy time and baked into the image's environment, so the containers
  read the same values. The image installs the worker's dependencies at the versions
  `requirements.lock` pins (so deploy from a molserve checkout).
- Secrets come from the Modal Secret named MOLSERVE_MODAL_SECRET (default `molserve-worker`,
  holding MOLSERVE_WORKER_TOKEN); they are never accepted in a request body.

Every body here calls the same library code as the local worker.
"""

# No `from __future__ import annotations`: Modal reads class parameter types at import.
import logging
import shlex
import time
from pathlib import Path

import modal

from molserve.config import ModalDeploySettings, Settings
from molserve.deploy.requirements import locked_requirements

log = logging.getLogger("molserve.deploy")

DEPLOY = ModalDeploySettings()
APP_NAME = DEPLOY.app
GPU = DEPLOY.gpu
TRAIN_GPU = DEPLOY.train_gpu
MIN_CONTAINERS = DEPLOY.min_containers
MAX_CONTAINERS = DEPLOY.max_containers
SCALEDOWN_S = DEPLOY.scaledown_s
MAX_BATCH = DEPLOY.max_batch
WAIT_MS = DEPLOY.wait_ms
SECRET_NAME = DEPLOY.secret
REGISTRY_MOUNT = DEPLOY.registry_mount
HF_MOUNT = DEPLOY.hf_mount

REGISTRY_VOLUME = "molserve-registry"
HF_VOLUME = "molserve-hf-cache"
PROGRESS_DICT = "molserve-progress"
# Keys of the progress Dict besides call ids: the registry's generation (changed after every
# commit of a new model; running Workers compare it) and each job's owning call.
GENERATION_KEY = "registry-generation"
RELOAD_CHECK_S = 30.0

# Every named object is created on first use, by `modal deploy` or by whoever looks it up first.
registry_volume = modal.Volume.from_name(REGISTRY_VOLUME, create_if_missing=True)
hf_cache_volume = modal.Volume.from_name(HF_VOLUME, create_if_missing=True)
progress_dict = modal.Dict.from_name(PROGRESS_DICT, create_if_missing=True)
VOLUMES = {REGISTRY_MOUNT: registry_volume, HF_MOUNT: hf_cache_volume}


def container_environment(deploy: ModalDeploySettings) -> dict[str, str]:
    """The deploy-time settings as the variables `ModalDeploySettings` reads, for the image:
    inside a container nothing else sets them."""
    prefix = deploy.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): str(value) for name, value in deploy.model_dump().items()}


CONSTRAINTS_PATH = "/.molserve-constraints.txt"


def build_image(requirements: list[str], constraints: list[str], environment: dict[str, str]):
    image = modal.Image.debian_slim(python_version="3.11")
    if constraints:
        image = image.run_commands(
            "printf '%s\\n' " + " ".join(shlex.quote(c) for c in constraints) + f" > {CONSTRAINTS_PATH}")
    if requirements:
        image = image.pip_install(*requirements,
                                  extra_options=f"-c {CONSTRAINTS_PATH}" if constraints else "")
    return (image.env({"HF_HOME": HF_MOUNT, "MOLSERVE_DEVICE": "auto", **environment})
            .add_local_python_source("molserve"))


# Inside a container the image is already built (and the checkout's files are not there).
IMAGE_REQUIREMENTS, IMAGE_CONSTRAINTS = locked_requirements() if modal.is_local() else ([], [])
image = build_image(IMAGE_REQUIREMENTS, IMAGE_CONSTRAINTS, container_environment(DEPLOY))

app = modal.App(APP_NAME, image=image)


def _worker_settings():
    from molserve.config import WorkerSettings

    # The token comes from the Modal Secret, exposed to the container as MOLSERVE_WORKER_TOKEN.
    token = Settings().remote.worker_token
    if not token:
        raise RuntimeError(
            f"MOLSERVE_WORKER_TOKEN is empty: the Worker's URL is public, so it needs a token. Set "
            f"it with `modal secret create {SECRET_NAME} MOLSERVE_WORKER_TOKEN=<a long random "
            "token> --force` and redeploy")
    return WorkerSettings(registry=Path(REGISTRY_MOUNT), backend="torch", device="auto",
                          token=token, max_batch=MAX_BATCH, max_wait_ms=float(WAIT_MS))


def _generation():
    if modal.is_local():
        from molserve.deploy.reloading import registry_generation

        return registry_generation(REGISTRY_MOUNT)
    return progress_dict.get(GENERATION_KEY)


def _refresh_registry() -> None:
    if not modal.is_local():
        registry_volume.reload()


def _replace_container(error: BaseException) -> None:
    # The Volume could not be reloaded under the loaded models (open files): let a fresh
    # container, which mounts the current Volume, take this one's place.
    if not modal.is_local():
        from modal.experimental import stop_fetching_inputs

        stop_fetching_inputs()


@app.cls(gpu=GPU, volumes=VOLUMES, secrets=[modal.Secret.from_name(SECRET_NAME)],
         min_containers=MIN_CONTAINERS, max_containers=MAX_CONTAINERS,
         scaledown_window=SCALEDOWN_S, timeout=600)
@modal.concurrent(max_inputs=64)
class Worker:
    @modal.enter()
    def load(self) -> None:
        from molserve.worker.app import load_models

        self.settings = _worker_settings()
        self.generation = _generation()
        self.preloaded = load_models(self.settings)

    @modal.asgi_app()
    def web(self):
        from molserve.deploy.reloading import ReloadingApp
        from molserve.worker.app import create_worker_app, load_models

        preloaded = [self.preloaded]

        def build():
            # The first build serves what @enter loaded; later ones load the registry anew.
            models = preloaded.pop() if preloaded else load_models(self.settings)
            return create_worker_app(self.settings, preloaded=models)

        generation = [self.generation]

        def current_generation():
            return generation.pop() if generation else _generation()

        return ReloadingApp(build, current_generation, refresh=_refresh_registry,
                            on_failure=_replace_container, check_s=RELOAD_CHECK_S)


@app.cls(gpu=GPU, volumes=VOLUMES, min_containers=0, max_containers=MAX_CONTAINERS,
         scaledown_window=SCALEDOWN_S, timeout=600)
class BatchPredictor:
    endpoint: str = modal.parameter()

    @modal.enter()
    def load(self) -> None:
        from molserve.models.transformer.runtime import TransformerModel, transformer_artifacts
        from molserve.registry import Registry

        artifact = transformer_artifacts(Registry(REGISTRY_MOUNT)).get(self.endpoint)
        if artifact is None:
            raise RuntimeError(f"no transformer model for {self.endpoint!r} on the registry volume")
        self.model = TransformerModel.load(artifact, backend="torch").for_endpoint(self.endpoint)

    @modal.batched(max_batch_size=MAX_BATCH, wait_ms=WAIT_MS)
    def predict(self, smiles: list[str]) -> list[dict]:
        return self.model.predict(smiles)


def _call_id() -> str:
    return (modal.current_function_call_id() if not modal.is_local() else None) or "local"


def _reporter(call_id: str):
    def report(step: str, fraction: float, info: dict) -> None:
        progress_dict_put(call_id, {"step": step, "progress": round(fraction, 4),
                                    **{k: v for k, v in info.items() if isinstance(v, int | float)}})

    return report


def claim_job(job_id: str, call_id: str) -> str | None:
    """Make `call_id` the call that trains for `job_id`; the id of another call that already
    does, if one does (a resumed job whose first call is still running)."""
    key = f"job:{job_id}"
    if modal.is_local():
        owner = LOCAL_PROGRESS.setdefault(key, call_id)
    else:
        owner = call_id if progress_dict.put(key, call_id, skip_if_exists=True) else progress_dict.get(key)
    return None if owner in (None, call_id) else owner


def _train_once(job_id: str | None, train):
    """Run `train` at most once per job: an earlier call of the same job still running is
    waited for instead (its result is this call's); without a job id, just run it."""
    call_id = _call_id()
    if job_id:
        owner = claim_job(job_id, call_id)
        if owner is not None:
            try:
                return modal.FunctionCall.from_id(owner).get()
            except Exception as error:  # that call failed or was cancelled: this one trains
                log.warning("the earlier call %s of job %s ended without a result (%s)", owner,
                            job_id, error)
                progress_dict_put(f"job:{job_id}", call_id)
    return train(call_id)


def _commit(call_id: str) -> None:
    if not modal.is_local():
        registry_volume.commit()  # the new version becomes visible to other containers
        progress_dict[GENERATION_KEY] = f"{call_id}@{time.time():.3f}"  # running Workers reload


def _extra(job_id: str | None, manifest: dict | None) -> dict | None:
    """What a job's models add to their manifests: the job, and its ownership fields."""
    extra = {**({"job_id": job_id} if job_id else {}), **(manifest or {})}
    return extra or None


@app.function(gpu=TRAIN_GPU, volumes=VOLUMES, timeout=6 * 3600)
def finetune(endpoint: str, params: dict | None = None, tasks: list[str] | None = None,
             job_id: str | None = None, manifest: dict | None = None) -> dict:
    """Fine-tune a transformer (`operations.training.TransformerParams` as `params`) on the
    endpoint's curated data and split from the registry volume; with `tasks`, one multi-task
    model over those endpoints, registered as `endpoint`. With `job_id`, the model's manifest
    names the job and a job that already registered one gets that model back."""
    from molserve.operations import training
    from molserve.registry import Registry

    def train(call_id: str) -> dict:
        if not modal.is_local():
            registry_volume.reload()
        registry = Registry(REGISTRY_MOUNT)
        existing = training.registered_by(registry, endpoint, job_id) if job_id else None
        if existing is None:
            existing = training.finetune(
                registry, tasks or [endpoint], training.TransformerParams(**(params or {})),
                name=endpoint if tasks else None,
                extra_manifest=_extra(job_id, manifest), progress=_reporter(call_id))
            _commit(call_id)
        summary = training.outcome(existing)
        progress_dict_put(call_id, {"step": "done", "progress": 1.0})
        return summary

    return _train_once(job_id, train)


def _train_each(kind: str, endpoints: list[str], params: dict, job_id: str | None,
                manifest: dict | None = None) -> dict:
    """Models of `kind` (graph, foundation) for `endpoints`, one each, on the registry volume,
    with the same code as `molserve finetune --model <kind>`; progress in the same modal.Dict.
    With `job_id`, endpoints the job already trained are not trained again."""
    from molserve.operations import training
    from molserve.registry import Registry

    train_models, parameters = ((training.train_graph, training.GraphParams) if kind == "graph"
                                else (training.train_foundation, training.FoundationParams))

    def train(call_id: str) -> dict:
        if not modal.is_local():
            registry_volume.reload()
        registry = Registry(REGISTRY_MOUNT)
        done = {e: training.registered_by(registry, e, job_id) for e in endpoints} if job_id else {}
        todo = [e for e in endpoints if done.get(e) is None]
        if todo:
            for artifact in train_models(
                    registry, todo, parameters(**params),
                    extra_manifest=_extra(job_id, manifest), progress=_reporter(call_id)):
                done[artifact.endpoint] = artifact
            _commit(call_id)
        artifacts = [done[e] for e in endpoints]
        progress_dict_put(call_id, {"step": "done", "progress": 1.0})
        return {**training.outcome(artifacts[0]), "models": [training.outcome(a) for a in artifacts]}

    return _train_once(job_id, train)


@app.function(gpu=TRAIN_GPU, volumes=VOLUMES, timeout=12 * 3600)
def train_graph(endpoints: list[str], params: dict, job_id: str | None = None,
                manifest: dict | None = None) -> dict:
    """Graph models (D-MPNN ensembles) for `endpoints`, one each (see `_train_each`)."""
    return _train_each("graph", endpoints, params, job_id, manifest)


@app.function(gpu=TRAIN_GPU, volumes=VOLUMES, timeout=12 * 3600)
def train_foundation(endpoints: list[str], params: dict, job_id: str | None = None,
                     manifest: dict | None = None) -> dict:
    """Foundation models (heads on MiniMol embeddings, onnxruntime's CUDA provider on the GPU)
    for `endpoints`, one each (see `_train_each`); the embeddings are kept in the registry
    volume's store, which the Workers read."""
    return _train_each("foundation", endpoints, params, job_id, manifest)


LOCAL_PROGRESS: dict[str, object] = {}


def progress_dict_put(key: str, value) -> None:
    if modal.is_local():
        LOCAL_PROGRESS[key] = value
    else:
        progress_dict[key] = value


def progress(call_id: str) -> dict | None:
    """A spawned training call's latest progress (readable from the gateway or the CLI)."""
    return progress_dict.get(call_id)
