"""The web page (static files, no build step, no CDN) and the depiction route it uses."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from molserve.chem.molecules import InvalidSmiles
from molserve.errors import InvalidInput
from molserve.gateway.errors import documented

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/v1/depict", tags=["depiction"], summary="2D depiction of a molecule as SVG",
            response_class=Response,
            responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}},
                             "description": "The molecule drawn as SVG"},
                       **documented(422)})
async def depict(smiles: str = Query(..., max_length=2000, json_schema_extra={"format": "smiles"}),
                 width: int = Query(240, ge=50, le=1200),
                 height: int = Query(180, ge=50, le=1200)) -> Response:
    from molserve.chem.depict import svg

    try:
        drawing = svg(smiles, width, height)
    except InvalidSmiles as error:
        raise InvalidInput(error.reason, code="invalid_smiles") from None
    return Response(drawing, media_type="image/svg+xml",
                    headers={"cache-control": "public, max-age=86400"})
