"""GET /v1/references: the reference sets percentiles are taken against, with their sizes and
the model versions their stored values came from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from molserve.gateway.errors import AUTH, documented
from molserve.gateway.security import ReadCaller, hidden_from
from molserve.responses import JSONResponse

router = APIRouter(tags=["references"])


class ReferenceValues(BaseModel):
    endpoint: str
    tier: str = Field(description="`fast` or `computed`: the tier whose model gave the values.")
    model_id: str
    version: int | str
    values: int | None = Field(None, description="Molecules of the set with a value.")
    computed: str | None = Field(None, description="When the values were computed (UTC).")
    current: bool = Field(description="The values came from the version served now (else they are "
                                      "recomputed on the next prediction that needs them).")


class ReferenceSetSummary(BaseModel):
    name: str
    default: bool = Field(description="Percentiles are taken against this set unless a request "
                                      "names another.")
    description: str
    molecules: int | None = Field(None, description="Distinct valid molecules in the set.")
    records: int | None = Field(None, description="Records read from the source.")
    invalid: int | None = Field(None, description="Records skipped: unreadable SMILES or wildcard atoms.")
    duplicates: int | None = None
    source: str = ""
    licence: str = ""
    citation: str = ""
    bundled: bool = False
    created: str | None = None
    values: list[ReferenceValues]


def reference_sets(request: Request) -> Any:
    """The router's reference sets, or (before a server wires them in) sets over its registry."""
    router = request.app.state.router
    references = getattr(router, "references", None)
    if references is None:
        from molserve.prediction.reference import ReferenceSets

        references = ReferenceSets(router.registry, router)
    return references


@router.get("/v1/references", response_model=list[ReferenceSetSummary], responses=documented(*AUTH),
            summary="Reference sets for percentiles, with sizes and the model versions of their values")
async def list_references(request: Request, caller: ReadCaller) -> JSONResponse:
    import asyncio

    # The first listing writes the bundled set (about a second of parsing): off the event loop.
    sets = await asyncio.get_running_loop().run_in_executor(None, reference_sets(request).list_sets)
    hidden = hidden_from(request, caller)  # values of endpoints private to other keys
    return JSONResponse([{**s, "values": [v for v in s["values"] if v["endpoint"] not in hidden]}
                         for s in sets])
