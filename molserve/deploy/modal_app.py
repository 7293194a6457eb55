"""The transformer worker tier on Modal (serverless GPUs).

Deploy:  modal deploy molserve/deploy/modal_app.py     (or: molserve deploy modal --execute)

- `Worker` serves the worker's HTTP API (`/v1/predict`, `/readyz`, `/metrics`, ...) through
  `@modal.asgi_app`, so the gateway talks to it exactly as to a local worker: set
  MOLSERVE_WORKER_URLS to its URL. Models are loaded once per container in `@modal.enter`;
  molecules from concurrent requests are batched inside the container.
- `BatchPredictor` exposes the same models to Python callers with `@modal.batched`
  (e.g. `BatchPredictor(endpoint="solubility").predict.map(smiles)` for a large screen).
- `finetune` fine-tunes on a GPU; start it with `.spawn()` (never inside a request). It writes
  the model to the registry Volume and its progress to a modal.Dict that `progress(call_id)`
  reads.
- The registry and the Hugging Face cache live on Modal Volumes. Containers scale to zero after
  MOLSERVE_MODAL_SCALEDOWN_S idle seconds; MOLSERVE_MODAL_MIN_CONTAINERS keeps a warm pool.
- Secrets come from the Modal Secret named MOLSERVE_MODAL_SECRET (default `molserve-worker`,
  holding MOLSERVE_WORKER_TOKEN); they are never accepted in a request body.

Every body here calls the same library code as the local worker.
"""

# No `from __future__ import annotations`: Modal reads class parameter types at import.
from pathlib import Path

import modal

from molserve.config import ModalDeploySettings, Settings

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

registry_volume = modal.Volume.from_name("molserve-registry", create_if_missing=True)
hf_cache_volume = modal.Volume.from_name("molserve-hf-cache", create_if_missing=True)
progress_dict = modal.Dict.from_name("molserve-progress", create_if_missing=True)
VOLUMES = {REGISTRY_MOUNT: registry_volume, HF_MOUNT: hf_cache_volume}

image = (
    modal.Image.debian_slim(python_version="3.11")
    # On Modal's GPUs a CUDA build of torch is what we want.
    .pip_install("torch>=2.4", "transformers>=4.44", "tokenizers>=0.19", "onnxruntime>=1.18",
                 "fastapi>=0.115", "uvicorn>=0.30", "pydantic-settings>=2.3", "rdkit>=2024.9.1",
                 "numpy>=1.26", "safetensors>=0.4", "prometheus-client>=0.20", "httpx>=0.27",
                 "orjson>=3.10", "tqdm>=4.66", "chemprop>=2.2.4,<2.3")
    .env({"HF_HOME": HF_MOUNT, "MOLSERVE_DEVICE": "auto"})
    .add_local_python_source("molserve")
)

app = modal.App(APP_NAME, image=image)


def _worker_settings():
    from molserve.config import WorkerSettings

    # The token comes from the Modal Secret, exposed to the container as MOLSERVE_WORKER_TOKEN.
    return WorkerSettings(registry=Path(REGISTRY_MOUNT), backend="torch", device="auto",
                          token=Settings().remote.worker_token, max_batch=MAX_BATCH,
                          max_wait_ms=float(WAIT_MS))


@app.cls(gpu=GPU, volumes=VOLUMES, secrets=[modal.Secret.from_name(SECRET_NAME)],
         min_containers=MIN_CONTAINERS, max_containers=MAX_CONTAINERS,
         scaledown_window=SCALEDOWN_S, timeout=600)
@modal.concurrent(max_inputs=64)
class Worker:
    @modal.enter()
    def load(self) -> None:
        from molserve.worker.app import load_models

        self.settings = _worker_settings()
        self.preloaded = load_models(self.settings)

    @modal.asgi_app()
    def web(self):
        from molserve.worker.app import create_worker_app

        return create_worker_app(self.settings, preloaded=self.preloaded)


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


@app.function(gpu=TRAIN_GPU, volumes=VOLUMES, timeout=6 * 3600)
def finetune(endpoint: str, base: str = "seyonec/ChemBERTa-zinc-base-v1", epochs: int = 30,
             learning_rate: float = 5e-5, batch_size: int = 32, tasks: list[str] | None = None) -> dict:
    """Fine-tune on the endpoint's curated data and split (from the registry volume); with
    `tasks`, one multi-task model over those endpoints, registered as `endpoint`."""
    from molserve.models.transformer.pipeline import finetune_endpoints
    from molserve.registry import Registry

    call_id = modal.current_function_call_id() if not modal.is_local() else "local"

    def report(step: str, fraction: float, info: dict) -> None:
        progress_dict_put(call_id, {"step": step, "progress": round(fraction, 4),
                                    **{k: v for k, v in info.items() if isinstance(v, int | float)}})

    if not modal.is_local():
        registry_volume.reload()
    artifact = finetune_endpoints(Registry(REGISTRY_MOUNT), tasks or [endpoint],
                                  name=endpoint if tasks else None, base=base, epochs=epochs,
                                  learning_rate=learning_rate, batch_size=batch_size, progress=report)
    if not modal.is_local():
        registry_volume.commit()  # the new version becomes visible to Worker containers
    summary = {"endpoint": artifact.endpoint, "version": artifact.version,
               "metrics": artifact.info.test_metrics()}
    progress_dict_put(call_id, {"step": "done", "progress": 1.0, **summary})
    return summary


@app.function(gpu=TRAIN_GPU, volumes=VOLUMES, timeout=12 * 3600)
def train_graph(endpoints: list[str], params: dict) -> dict:
    """Graph models (D-MPNN ensembles) for `endpoints`, one each, on the registry volume, with
    the same code as `molserve finetune --model graph`; progress in the same modal.Dict."""
    from molserve.operations.training import GraphParams, outcome
    from molserve.operations.training import train_graph as train_graph_models
    from molserve.registry import Registry

    call_id = modal.current_function_call_id() if not modal.is_local() else "local"

    def report(step: str, fraction: float, info: dict) -> None:
        progress_dict_put(call_id, {"step": step, "progress": round(fraction, 4),
                                    **{k: v for k, v in info.items() if isinstance(v, int | float)}})

    if not modal.is_local():
        registry_volume.reload()
    artifacts = train_graph_models(Registry(REGISTRY_MOUNT), endpoints, GraphParams(**params),
                                   progress=report)
    if not modal.is_local():
        registry_volume.commit()
    summary = {**outcome(artifacts[0]), "models": [outcome(a) for a in artifacts]}
    progress_dict_put(call_id, {"step": "done", "progress": 1.0})
    return summary


LOCAL_PROGRESS: dict[str, dict] = {}


def progress_dict_put(call_id: str, value: dict) -> None:
    if modal.is_local():
        LOCAL_PROGRESS[call_id] = value
    else:
        progress_dict[call_id] = value


def progress(call_id: str) -> dict | None:
    """A spawned fine-tuning call's latest progress (readable from the gateway or the CLI)."""
    return progress_dict.get(call_id)
