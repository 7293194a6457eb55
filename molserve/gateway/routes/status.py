"""GET /v1/status: each tier's health (fast, transformer, graph, computed), each worker's breaker,
latency, errors and models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from molserve.gateway.errors import AUTH, documented
from molserve.gateway.schemas import ServiceStatus
from molserve.gateway.security import require_read
from molserve.prediction.router import REMOTE_TIERS
from molserve.registry.manifest import unequal_evidence
from molserve.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/v1/status", response_model=ServiceStatus, responses=documented(*AUTH),
            dependencies=[Depends(require_read)],
            summary="Tiers and workers: breaker state, recent latency and error rate, models")
async def status(request: Request) -> JSONResponse:
    router = request.app.state.router
    metrics = request.app.state.metrics
    body: dict = {"fast": {"models": router.fast.endpoints(), "load_errors": router.fast.load_errors}}
    for name in REMOTE_TIERS:
        remote = router.remotes.get(name)
        workers = remote.status() if remote else []
        for worker in workers if name == "transformer" else []:  # the gauge's series, as before
            metrics.breaker_state.labels(worker["url"]).set(
                {"closed": 0, "half_open": 1, "open": 2}[worker["breaker"]])
        endpoints = remote.endpoints() if remote else []
        served = remote.served_endpoints() if remote else {}
        # Why a worker model is not compared with the fast model (tested on another split).
        not_preferred = {}
        for e in endpoints:
            fast = router.fast.models.get(e)
            why = unequal_evidence(fast.artifact.manifest if fast else None,
                                   {name: served[e]} if e in served else {}).get(name)
            if why:
                not_preferred[e] = why
        body[name] = {"configured": remote is not None, "endpoints": endpoints,
                      "preferred": {e: router.preferred_tier(e) for e in endpoints},
                      "not_preferred": not_preferred, "workers": workers}
    body["computed"] = {"endpoints": router.computed.endpoints()}
    return JSONResponse(body)
