"""GET /v1/status: each tier's health (fast, transformer, graph, computed), each worker's breaker,
latency, errors and models."""

from __future__ import annotations

from fastapi import APIRouter, Request

from molserve.gateway.errors import AUTH, documented
from molserve.gateway.schemas import ServiceStatus
from molserve.gateway.security import ReadCaller, hidden_from
from molserve.prediction.router import REMOTE_TIERS
from molserve.registry.manifest import unequal_evidence
from molserve.responses import JSONResponse

router = APIRouter(tags=["health"])


@router.get("/v1/status", response_model=ServiceStatus, responses=documented(*AUTH),
            summary="Tiers and workers: breaker state, recent latency and error rate, models")
async def status(request: Request, caller: ReadCaller) -> JSONResponse:
    router = request.app.state.router
    metrics = request.app.state.metrics
    hidden = hidden_from(request, caller)  # other keys' private endpoints do not exist here

    def seen(names):
        if isinstance(names, dict):
            return {k: v for k, v in names.items() if k not in hidden}
        return [n for n in names if n not in hidden]

    body: dict = {"fast": {"models": seen(router.fast.endpoints()),
                           "load_errors": seen(router.fast.load_errors)}}
    for name in REMOTE_TIERS:
        remote = router.remotes.get(name)
        workers = [{**w, "models": seen(w["models"]), "queue": seen(w["queue"]),
                    "last_error": w["last_error"] if not any(h in str(w["last_error"]) for h in hidden)
                    else "(an error on an endpoint not shown)"}
                   for w in (remote.status() if remote else [])]
        for worker in workers if name == "transformer" else []:  # the gauge's series, as before
            metrics.breaker_state.labels(worker["url"]).set(
                {"closed": 0, "half_open": 1, "open": 2}[worker["breaker"]])
        endpoints = seen(remote.endpoints() if remote else [])
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
