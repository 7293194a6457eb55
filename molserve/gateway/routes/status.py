"""GET /v1/status: each tier's health, each worker's breaker, latency, errors and models."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from molserve.gateway.errors import AUTH, documented
from molserve.gateway.schemas import ServiceStatus
from molserve.gateway.security import require_read
from molserve.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/v1/status", response_model=ServiceStatus, responses=documented(*AUTH),
            dependencies=[Depends(require_read)],
            summary="Tiers and workers: breaker state, recent latency and error rate, models")
async def status(request: Request) -> JSONResponse:
    router = request.app.state.router
    remote = router.remote
    workers = remote.status() if remote else []
    metrics = request.app.state.metrics
    for worker in workers:
        metrics.breaker_state.labels(worker["url"]).set(
            {"closed": 0, "half_open": 1, "open": 2}[worker["breaker"]])
    return JSONResponse({
        "fast": {"models": router.fast.endpoints(), "load_errors": router.fast.load_errors},
        "transformer": {
            "configured": remote is not None,
            "endpoints": router.remote_endpoints,
            "preferred": {e: router.preferred_tier(e) for e in router.remote_endpoints},
            "workers": workers,
        },
        "computed": {"endpoints": router.computed.endpoints()},
    })
