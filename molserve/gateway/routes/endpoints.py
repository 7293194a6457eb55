"""GET /v1/endpoints: what can be asked, with the data and held-out metrics behind it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from molserve.gateway.errors import AUTH, documented
from molserve.gateway.schemas import EndpointInfo
from molserve.gateway.security import ReadCaller, hidden_from
from molserve.responses import JSONResponse

router = APIRouter(tags=["endpoints"])


@router.get("/v1/endpoints", response_model=list[EndpointInfo], responses=documented(*AUTH),
            summary="List every endpoint with task, units, training data and held-out metrics")
async def list_endpoints(request: Request, caller: ReadCaller) -> JSONResponse:
    """Every endpoint the caller may see: another key's private endpoints are not listed."""
    return JSONResponse(request.app.state.router.endpoint_info(hidden_from(request, caller)))
