"""Settings, read once from the environment (prefix MOLSERVE_) or a .env file."""

from __future__ import annotations

from pathlib import Path

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


def get_settings() -> Settings:
    return Settings()
