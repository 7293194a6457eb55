"""Liveness, readiness, Prometheus metrics, and the health shape older clients expect."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from molserve.gateway.schemas import LegacyHealth, Liveness, Readiness
from molserve.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Liveness, summary="The process is alive")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Not ready: the body says why"}},
            summary="Models are loaded and requests can be answered")
async def readyz(request: Request) -> JSONResponse:
    router = request.app.state.router
    ready = router.loaded_at is not None and bool(router.fast.models)
    private = router.hidden_from(None)  # an open route: endpoints private to a key are left out
    body = {
        "ready": ready,
        "fast_models": [e for e in router.fast.endpoints() if e not in private],
        "load_errors": {e: why for e, why in router.fast.load_errors.items() if e not in private},
    }
    bootstrap = request.app.state.bootstrap.summary() if request.app.state.bootstrap else None
    if bootstrap:
        body["bootstrap"] = bootstrap
    if not ready:
        body["message"] = (
            f"no fast-tier model is loaded yet; the start-up bootstrap has trained "
            f"{bootstrap['done']} of {bootstrap['total']} bundled endpoints"
            if bootstrap and bootstrap["state"] == "running" else
            "no fast-tier model is loaded; run `molserve bootstrap` (or `make serve`) to train "
            "the bundled models")
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "The Prometheus text format"}})
async def metrics(request: Request) -> Response:
    metrics_ = request.app.state.metrics
    states = {"closed": 0, "half_open": 1, "open": 2}
    for name, remote in request.app.state.router.remotes.items():
        for worker in remote.workers:
            # One breaker per worker and tier; the gauge shows the transformer tier's, as before.
            if name == "transformer":
                metrics_.breaker_state.labels(worker.url).set(states[worker.breaker.state])
        for endpoint, batcher in remote.batchers.items():
            label = metrics_.endpoint(endpoint)
            label = label if name == "transformer" else f"{name}:{label}"
            metrics_.remote_queue.labels(label).set(batcher.waiting)
    jobs = request.app.state.jobs
    if jobs is not None:
        counts = jobs.store.counts()
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            metrics_.jobs.labels(state).set(counts.get(state, 0))
    return Response(generate_latest(request.app.state.metrics.registry),
                    media_type=CONTENT_TYPE_LATEST)


@router.get("/api/health", response_model=LegacyHealth,
            summary="Health in the shape clients of the older API expect")
async def legacy_health(request: Request) -> JSONResponse:
    router = request.app.state.router
    private = router.hidden_from(None)  # an open route: endpoints private to a key are left out
    loaded = [e for e in router.fast.endpoints() if e not in private]
    return JSONResponse({
        "status": "healthy" if loaded else "degraded",
        "models_loaded": len(loaded),
        "model_type": "lightgbm ensemble (numpy trees), fast tier" if loaded else "none",
        "available_targets": loaded,
        "computed_properties": router.computed.endpoints(),
    })
