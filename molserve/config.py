"""Settings, read once from the environment (prefix MOLSERVE_) or a .env file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOLSERVE_", env_file=".env", extra="ignore")

    registry: Path = Field(Path("registry"), description="Model registry directory.")
    datasets: Path = Field(Path("datasets"), description="Curated dataset store directory.")
    jobs_dir: Path | None = Field(Path("jobs"), description="Job store, uploads and results; "
                                  "empty disables jobs.")
    bootstrap: bool = Field(False, description="At start-up, train the bundled endpoints the "
                            "registry lacks, in a background process (`molserve serve --bootstrap`).")
    bootstrap_endpoints: list[str] | None = Field(
        None, description="Only these bundled endpoints (JSON list); default: all of them.")
    bootstrap_profile: str = Field("standard", description="Training profile of the bootstrap.")
    max_concurrent_jobs: int = Field(1, ge=1)
    job_max_attempts: int = Field(3, ge=1, description="Restarts of a crashed job before it fails.")
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest file POST /v1/uploads accepts.")
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = Field(1000, ge=1, description="Most molecules in one /v1/predict request.")
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Largest accepted request body.")
    api_key: str | None = Field(None, description="One admin key (training, deleting models).")
    api_keys_file: Path | None = Field(None, description="Scoped, hashed keys (molserve keys ...).")
    require_key_for_reads: bool = Field(False, description="Also require the key for reads.")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off when empty.")
    inline_batch: int = Field(
        16, description="Batches up to this size run on the event loop; larger ones in a thread."
    )
    log_json: bool = False
    access_log: bool = Field(False, description="One log line per request (method, path, status, ms).")
    compute_threads: int = Field(2, ge=1, description="Threads for large prediction batches.")
    max_pending_molecules: int = Field(20000, ge=1, description="Molecules in flight before 503.")
    # The transformer tier (remote workers). Empty: the gateway serves the fast tier alone.
    worker_urls: list[str] = Field(default_factory=list,
                                   description='JSON list, e.g. ["http://127.0.0.1:8100"].')
    worker_token: str | None = Field(None, description="Bearer token sent to workers.")
    worker_timeout_ms: float = Field(2000, description="Per-call timeout and default deadline.")
    breaker_failures: int = Field(3, description="Consecutive failures that open a breaker.")
    breaker_reset_s: float = Field(5.0, description="Open time before a half-open probe.")
    health_interval_s: float = Field(2.0, description="Worker health-probe period.")
    remote_max_batch: int = 64
    remote_max_wait_ms: float = 2.0
    remote_max_queue: int = Field(4096, description="Molecules waiting for workers, at most.")


def _xdg_cache() -> Path:
    # The XDG base-directory convention, as every well-behaved tool reads it.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molserve"


class WorkerSettings(BaseSettings):
    """The transformer worker service (`molserve worker`, and its Modal and Ray hosts)."""

    model_config = SettingsConfigDict(env_prefix="MOLSERVE_WORKER_", env_file=".env", extra="ignore")

    registry: Path = Path("registry")
    host: str = "127.0.0.1"
    port: int = 8100
    backend: str = Field("torch", description="torch | onnx | onnx-int8")
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:1")
    token: str | None = Field(None, description="Bearer token the gateway must send.")
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_queue: int = 2048
    threads: int | None = None
    max_molecules_per_request: int = 1000
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Largest request body; 413 beyond.")
    log_json: bool = False


class ComputeSettings(BaseSettings):
    """Where training and transformer inference run, and where downloads are cached."""

    model_config = SettingsConfigDict(env_prefix="MOLSERVE_", env_file=".env", extra="ignore")

    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:1.")
    cache_dir: Path = Field(default_factory=_xdg_cache, description="Downloaded data (TDC files) "
                            "are cached here; default $XDG_CACHE_HOME/molserve or ~/.cache/molserve.")


class EngineSettings(BaseSettings):
    """Where jobs run their heavy work (`molserve.jobs.engines`)."""

    model_config = SettingsConfigDict(env_prefix="MOLSERVE_", env_file=".env", extra="ignore")

    training_backend: Literal["local", "modal", "ray"] = Field(
        "local", description="Transformer training jobs: in the job's process, on Modal, or on Ray.")
    modal_app: str = Field("molserve-worker", description="The deployed Modal app's name.")
    ray_address: str = Field("auto", description="Ray cluster to submit training tasks to.")
    ray_train_gpus: float = Field(0, ge=0, description="GPUs per Ray training task.")


class ModalDeploySettings(BaseSettings):
    """The Modal app's resources, read when `modal deploy` imports `deploy/modal_app.py`."""

    model_config = SettingsConfigDict(env_prefix="MOLSERVE_MODAL_", env_file=".env", extra="ignore")

    app: str = "molserve-worker"
    gpu: str = Field("L4", description="GPU type of the serving containers.")
    train_gpu: str = Field("A10G", description="GPU type of fine-tuning calls.")
    min_containers: int = Field(0, ge=0, description="Warm containers (0: scale to zero).")
    max_containers: int = Field(10, ge=1)
    scaledown_s: int = Field(300, ge=2, description="Idle seconds before a container stops.")
    max_batch: int = Field(128, ge=1, description="Molecules per batched call.")
    wait_ms: int = Field(10, ge=0, description="Longest wait to fill a batch.")
    secret: str = Field("molserve-worker", description="Modal Secret holding MOLSERVE_WORKER_TOKEN.")
    registry_mount: str = "/registry"
    hf_mount: str = "/hf-cache"


class RayDeploySettings(BaseSettings):
    """`serve run molserve.deploy.ray_app:app`: replica resources (the worker's own settings
    come from MOLSERVE_WORKER_*)."""

    model_config = SettingsConfigDict(env_prefix="MOLSERVE_RAY_", env_file=".env", extra="ignore")

    gpus_per_replica: float = Field(0, ge=0)


def get_settings() -> Settings:
    return Settings()
