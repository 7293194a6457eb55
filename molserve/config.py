"""Settings, read once from the environment (prefix MOLSERVE_) or a .env file, in sections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

_ENV = SettingsConfigDict(env_prefix="MOLSERVE_", env_file=".env", extra="ignore")


class GatewaySettings(BaseSettings):
    """The HTTP gateway: where it listens, what it accepts, who may call it, its start-up."""

    model_config = _ENV

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = Field(1000, ge=1, le=100_000,
                           description="Most molecules in one /v1/predict request (at most 100,000).")
    max_body_bytes: int = Field(8 * 1024 * 1024, description="Largest accepted request body.")
    api_key: str | None = Field(None, description="One admin key (training, deleting models).")
    api_keys_file: Path | None = Field(None, description="Scoped, hashed keys (molserve keys ...).")
    require_key_for_reads: bool = Field(False, description="Also require the key for reads.")
    cors_origins: list[str] = Field(default_factory=list, description="CORS is off when empty.")
    inline_batch: int = Field(
        0, ge=0, description="Batches up to this size are parsed and predicted on the event loop, "
        "larger ones in a thread; 0 (the default): RDKit never runs on the event loop, so one "
        "slow molecule cannot stall other requests.")
    access_log: bool = Field(False, description="One log line per request (method, path, status, ms).")
    compute_threads: int = Field(2, ge=1, description="Threads for large prediction batches.")
    max_pending_molecules: int = Field(20000, ge=1, description="Molecules in flight before 503.")
    bootstrap: bool = Field(False, description="At start-up, train the bundled endpoints the "
                            "registry lacks, in a background process (`molserve serve --bootstrap`).")
    bootstrap_endpoints: list[str] | None = Field(
        None, description="Only these bundled endpoints (JSON list); default: all of them.")
    bootstrap_profile: Literal["standard", "quick"] = Field(
        "standard", description="Training profile of the bootstrap.")
    bootstrap_protocol: Literal["production", "tdc"] = Field(
        "production", description="production: the bundled models learn from every labelled row "
        "(figures out of fold); tdc: TDC's protocol (train_val only, scored on TDC's test set).")
    local_worker: bool = Field(
        False, description="Start a worker process on this machine beside the gateway (`molserve "
        "serve --local-worker`) for the worker tiers' models in the registry, served as they land; "
        "with the bootstrap, the foundation tier's heads are trained after the fast models.")
    reference_default: str | None = Field(
        "clintox_drugs", description="Reference set of every answer's reference_percentile when a "
        "request names none (molserve reference list); empty: none unless asked.")
    reference_warm: bool = Field(
        True, description="At start-up, compute the default reference set's missing values in the "
        "background (else on the first request that needs them).")
    guide_dir: Path | None = Field(
        None, description="The built documentation site, served at /guide/ (default: `site/` of "
        "the checkout, which `make docs` builds); /guide answers 404 `guide_not_built` without it.")


class RemoteSettings(BaseSettings):
    """The transformer tier as the gateway reaches it: workers, deadlines, breakers, batching.
    Empty `worker_urls`: the gateway serves the fast tier alone."""

    model_config = _ENV

    worker_urls: list[str] = Field(default_factory=list,
                                   description='JSON list, e.g. ["http://127.0.0.1:8100"].')
    worker_token: str | None = Field(None, description="Bearer token sent to workers.")
    worker_timeout_ms: float = Field(2000, gt=0, description="Per-call timeout and default deadline.")
    breaker_failures: int = Field(3, ge=1, description="Consecutive failures that open a breaker.")
    breaker_reset_s: float = Field(5.0, gt=0, description="Open time before a half-open probe.")
    health_interval_s: float = Field(2.0, gt=0, description="Worker health-probe period.")
    remote_max_batch: int = Field(64, ge=1, description="Molecules per call to a worker.")
    remote_max_wait_ms: float = Field(2.0, ge=0, description="Longest wait to fill a worker call.")
    remote_max_queue: int = Field(4096, ge=1, description="Molecules waiting for workers, at most.")


class JobSettings(BaseSettings):
    """Persisted jobs (training, screens) and the uploads they read."""

    model_config = _ENV

    jobs_dir: Path | None = Field(Path("jobs"), description="Job store, uploads and results; "
                                  "empty disables jobs.")
    max_concurrent_jobs: int = Field(1, ge=1)
    job_max_attempts: int = Field(3, ge=1, description="Restarts of a crashed job before it fails.")
    job_lease_s: float = Field(30.0, ge=1, description="A running job's lease: its process renews it "
                               "every third of it; a job whose lease runs out (its process or machine "
                               "died) is resumed by any gateway sharing the store.")
    max_upload_bytes: int = Field(2 * 1024**3, description="Largest file POST /v1/uploads accepts.")
    anonymous_jobs: bool = Field(False, description="Let callers without a key upload and start "
                                 "screens; each such job is then readable only with its job token.")
    quota_upload_bytes: int = Field(10 * 1024**3, ge=0, description="Bytes of stored uploads per key "
                                    "(all anonymous callers share one quota).")
    quota_queued_jobs: int = Field(20, ge=0, description="Queued jobs per key.")
    quota_running_jobs: int = Field(1, ge=1, description="Jobs of one key running at once.")
    job_time_limits: dict[str, float] = Field(
        default_factory=lambda: {"screen": 6 * 3600.0, "train": 24 * 3600.0},
        description='Seconds a job of each kind may run, JSON: {"screen": 21600, "train": 86400}; '
        "a kind not named has no limit.")
    retention_days: float = Field(7.0, gt=0, description="Uploads are deleted this many days after "
                                  "their last use, results this many days after their job finished "
                                  "(never those of a queued or running job).")


class FleetSettings(BaseSettings):
    """Several gateways on several machines: what they share. Empty (the default): one machine,
    SQLite in the jobs directory and files in the local directories."""

    model_config = _ENV

    database_url: str | None = Field(
        None, description="postgresql://... : jobs, their leases and quotas, API keys, rate limits "
        "and each endpoint's published versions in PostgreSQL, shared by every gateway (`molserve "
        "db upgrade` applies its migrations); empty: SQLite in the jobs directory (one machine).")
    storage_url: str | None = Field(
        None, description="An object store (fsspec URL: s3://bucket/prefix, gs://..., or "
        "file:///shared/path) for model versions, uploads and results, so that any gateway reads "
        "what another wrote; needs database_url. S3 credentials and endpoint come from the usual "
        "AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL).")
    sync_interval_s: float = Field(1.0, gt=0, description="How often a gateway looks for versions "
                                   "published or withdrawn by another gateway.")


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
    embedding_store: Path | None = Field(
        None, description="The foundation tier's MiniMol embedding store, shared with training "
        "(default: <registry>/.embeddings).")


def child_environment(**settings: str) -> dict[str, str]:
    """The environment of a molserve process this one starts (a local worker): this process's
    own, with `settings` (MOLSERVE_* variables) set, so the child reads them as its settings."""
    return {**os.environ, **settings}


def _xdg_cache() -> Path:
    # The XDG base-directory convention, as every well-behaved tool reads it.
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molserve"


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


# The sections a field may be given by name for (the worker's own settings are separate: its
# names overlap the gateway's).
_SECTIONS = ("gateway", "remote", "jobs", "compute", "engines", "fleet")


class Settings(BaseSettings):
    """Every setting, in sections, validated once. Each section reads its own variables (the
    names in the configuration guide, docs/guides/configuration.md, prefix MOLSERVE_), so a
    section can also be built alone (`RemoteSettings()`); nothing outside this module reads the
    environment.

    Overrides in code name the section: `Settings(registry=path, gateway=GatewaySettings(...))`,
    or `Settings(...).with_overrides(...)` for a few fields by name.
    """

    model_config = _ENV

    registry: Path = Field(Path("registry"), description="Model registry directory.")
    datasets: Path = Field(Path("datasets"), description="Curated dataset store directory.")
    log_json: bool = Field(False, description="Logs as JSON lines.")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    engines: EngineSettings = Field(default_factory=EngineSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)

    def __init__(self, **fields: Any) -> None:
        """`Settings(max_batch=10)` sets `gateway.max_batch`: a field given by name goes to the
        section that owns it (built with the environment for its other fields); a name no
        section owns is an error, never a silent no-op."""
        for section in _SECTIONS:
            model = type(self).model_fields[section].annotation
            assert isinstance(model, type) and issubclass(model, BaseSettings)
            flat = {k: fields.pop(k) for k in list(fields)
                    if k in model.model_fields and k not in type(self).model_fields}
            if flat:
                given = fields.get(section)
                base = given.model_dump() if isinstance(given, BaseModel) else dict(given or {})
                fields[section] = model(**{**base, **flat})
        unknown = sorted(k for k in set(fields) - set(type(self).model_fields)
                         if not k.startswith("_"))  # _env_file and the like
        if unknown:
            raise TypeError(f"no setting named {', '.join(unknown)}")
        super().__init__(**fields)

    def with_overrides(self, **fields: Any) -> Settings:
        """A copy with fields changed by name, wherever they live."""
        data: dict[str, Any] = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**data, **fields})
