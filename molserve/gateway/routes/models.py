"""Registry views and changes: list versions, reload, delete (writes need the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from molserve.gateway.security import require_key, require_read
from molserve.prediction.router import RequestError
from molserve.registry.store import ArtifactError
from molserve.responses import JSONResponse

router = APIRouter(tags=["models"])


def _summary(artifact) -> dict:
    m = artifact.manifest
    summary = {
        "endpoint": artifact.endpoint, "version": artifact.version, "kind": artifact.kind,
        "tier": m.get("tier"), "created": m.get("created"), "task": m.get("task"),
        "metrics": (m.get("metrics") or {}).get("test"), "dataset": (m.get("dataset") or {}).get("name"),
    }
    if m.get("task") == "multitask":
        # One model, several endpoints: each endpoint's test metrics on its own split.
        summary["tasks"] = {e: {"task": t["task"], "metrics": t["metrics"]["test"]}
                            for e, t in (m.get("tasks") or {}).items()}
    return summary


@router.get("/v1/models", dependencies=[Depends(require_read)], summary="Registered model versions")
async def list_models(request: Request) -> JSONResponse:
    registry = request.app.state.router.registry
    return JSONResponse([_summary(a) for a in registry.all_artifacts()])


@router.get("/v1/models/{endpoint}/{version}", dependencies=[Depends(require_read)],
            summary="One version's full manifest")
async def get_model(endpoint: str, version: int, request: Request) -> JSONResponse:
    try:
        artifact = request.app.state.router.registry.get(endpoint, version)
    except ArtifactError as error:
        raise RequestError(404, "not_found", str(error)) from None
    return JSONResponse(artifact.manifest)


@router.post("/v1/models/reload", dependencies=[Depends(require_key)],
             summary="Load the newest version of every endpoint (after training)")
async def reload_models(request: Request) -> JSONResponse:
    router = request.app.state.router
    request.app.state.load_models()
    return JSONResponse({"loaded": router.fast.endpoints(), "errors": router.fast.load_errors})


@router.delete("/v1/models/{endpoint}/{version}", dependencies=[Depends(require_key)],
               summary="Delete one model version and reload")
async def delete_model(endpoint: str, version: int, request: Request) -> JSONResponse:
    router = request.app.state.router
    try:
        router.registry.delete(endpoint, version)
    except ArtifactError as error:
        raise RequestError(404, "not_found", str(error)) from None
    request.app.state.load_models()
    return JSONResponse({"deleted": {"endpoint": endpoint, "version": version}})
