"""Registry views and changes: list versions, reload, delete (writes need the API key)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request

from molserve.errors import NotFound
from molserve.gateway.errors import AUTH, documented
from molserve.gateway.schemas import ENDPOINT_NAME, DeleteResult, ModelManifest, ModelSummary, ReloadResult
from molserve.gateway.security import Caller, ReadCaller, require_key
from molserve.registry.store import Artifact, ArtifactError
from molserve.responses import JSONResponse

router = APIRouter(tags=["models"])

# The registry's own rule for endpoint names and versions (v1, v2, ...): anything else names
# nothing, so the document says so and such a path is refused before the registry is read.
EndpointName = Path(pattern=ENDPOINT_NAME, description="An endpoint name.")
Version = Path(ge=1, description="A version number (GET /v1/models lists them).")


def _summary(artifact: Artifact) -> dict[str, Any]:
    try:
        info = artifact.info
    except ArtifactError as error:  # one unreadable manifest does not hide the others
        return {"endpoint": artifact.endpoint, "version": artifact.version, "kind": artifact.kind,
                "error": error.message}
    summary: dict[str, Any] = {
        "endpoint": artifact.endpoint, "version": artifact.version, "kind": artifact.kind,
        "tier": info.tier, "created": info.created, "task": info.task,
        "metrics": info.metrics.test, "dataset": info.dataset.name if info.dataset else None,
    }
    if info.multitask:
        # One model, several endpoints: each endpoint's test metrics on its own split.
        summary["tasks"] = {e: {"task": t.task, "metrics": t.metrics.test}
                            for e, t in (info.tasks or {}).items()}
    return summary


@contextmanager
def _missing_is_not_found() -> Iterator[None]:
    # The registry says "no such version" with its general ArtifactError.
    try:
        yield
    except ArtifactError as error:
        raise NotFound(error.message) from None


def _visible(artifact: Artifact, caller: Caller) -> bool:
    """Another key's private model does not exist for the caller (admins see every model)."""
    manifest = artifact.manifest
    return caller.admin or manifest.get("visibility") != "private" or (
        caller.key is not None and manifest.get("owner") == caller.owner)


def _shown(artifact: Artifact, caller: Caller) -> dict[str, Any]:
    """A manifest as the caller may read it: a model that learned from another key's upload
    shows neither the server's path to the upload nor the job's input."""
    manifest = artifact.manifest
    if caller.admin or manifest.get("training_data") != "upload" or (
            caller.key is not None and manifest.get("owner") == caller.owner):
        return manifest
    dataset = {**(manifest.get("dataset") or {}), "source": "an upload of the model's owner"}
    return {**manifest, "dataset": dataset}


@router.get("/v1/models", response_model=list[ModelSummary], responses=documented(*AUTH),
            summary="Registered model versions")
async def list_models(request: Request, caller: ReadCaller) -> JSONResponse:
    registry = request.app.state.router.registry
    return JSONResponse([_summary(a) for a in registry.all_artifacts() if _visible(a, caller)])


@router.get("/v1/models/{endpoint}/{version}", response_model=ModelManifest,
            responses=documented(*AUTH, 404, 422), summary="One version's full manifest")
async def get_model(request: Request, caller: ReadCaller, endpoint: str = EndpointName,
                    version: int = Version) -> JSONResponse:
    with _missing_is_not_found():
        artifact = request.app.state.router.registry.get(endpoint, version)
    if not _visible(artifact, caller):
        raise NotFound(f"no version {version} of endpoint {endpoint!r}")
    return JSONResponse(_shown(artifact, caller))


@router.post("/v1/models/reload", response_model=ReloadResult, responses=documented(*AUTH),
             dependencies=[Depends(require_key)],
             summary="Load the newest version of every endpoint (after training)")
async def reload_models(request: Request) -> JSONResponse:
    router = request.app.state.router
    request.app.state.load_models()
    return JSONResponse({"loaded": router.fast.endpoints(), "errors": router.fast.load_errors})


@router.delete("/v1/models/{endpoint}/{version}", response_model=DeleteResult,
               responses=documented(*AUTH, 404, 409, 422), dependencies=[Depends(require_key)],
               summary="Delete one model version and reload")
async def delete_model(request: Request, endpoint: str = EndpointName,
                       version: int = Version,
                       force: bool = Query(False, description="Delete a version that a local model "
                                           "learned on top of (409 `base_in_use` otherwise)."),
                       ) -> JSONResponse:
    router = request.app.state.router
    with _missing_is_not_found():
        router.registry.delete(endpoint, version, force=force)
    request.app.state.load_models()
    return JSONResponse({"deleted": {"endpoint": endpoint, "version": version}})
