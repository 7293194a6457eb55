"""The web page (static files, no build step, no CDN) and the depiction route it uses
(`highlight=` marks atoms: given indices, or those PAINS and Brenk alerts match).

Depictions obey the read policy of every other read (MOLSERVE_REQUIRE_KEY_FOR_READS) and are
bounded: RDKit draws in a small thread pool of its own, never on the event loop, a drawing that
takes longer than `DEPICT_TIMEOUT_S` answers 503, and past `DEPICT_MAX_PENDING` drawings in
flight new ones are refused at once (503 with Retry-After) instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import FileResponse, Response

from molserve.chem.molecules import InvalidSmiles
from molserve.errors import InvalidInput, Unavailable
from molserve.gateway.errors import AUTH, documented
from molserve.gateway.security import require_read

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()

DEPICT_THREADS = 2
DEPICT_TIMEOUT_S = 2.0
DEPICT_MAX_PENDING = 16

_pool: ThreadPoolExecutor | None = None
_pending = 0
_lock = threading.Lock()


def _draw_pool() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=DEPICT_THREADS, thread_name_prefix="depict")
        return _pool


def _finished(_future) -> None:
    global _pending
    with _lock:
        _pending -= 1


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/v1/depict", tags=["depiction"], summary="2D depiction of a molecule as SVG",
            response_class=Response, dependencies=[Depends(require_read)],
            responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}},
                             "description": "The molecule drawn as SVG"},
                       **documented(*AUTH, 422, 503)})
async def depict(smiles: str = Query(..., max_length=2000, json_schema_extra={"format": "smiles"}),
                 width: int = Query(240, ge=50, le=1200),
                 height: int = Query(180, ge=50, le=1200),
                 highlight: str | None = Query(
                     None, max_length=4000,
                     description="Atoms to highlight: indices in the SMILES' atom order, "
                                 "comma-separated (e.g. the `atoms` of an alert, with the "
                                 "`canonical_smiles` of its prediction), or `alerts`, `pains` or "
                                 "`brenk` for the atoms those alerts match.")) -> Response:
    global _pending
    from functools import partial

    if highlight is None:
        from molserve.chem.depict import svg

        draw = partial(svg, smiles, width, height)
    else:
        from molserve.chem.highlight import parse_highlight, svg_highlighting

        draw = partial(svg_highlighting, smiles, parse_highlight(highlight), width, height)
    with _lock:
        if _pending >= DEPICT_MAX_PENDING:
            raise Unavailable(f"{_pending} depictions are being drawn; retry shortly",
                              code="depict_busy", details={"retry_after_s": 1.0})
        _pending += 1
    # A drawing keeps its slot until its thread finishes, even when its caller stopped waiting.
    future = _draw_pool().submit(draw)
    future.add_done_callback(_finished)
    try:
        drawing = await asyncio.wait_for(asyncio.wrap_future(future), timeout=DEPICT_TIMEOUT_S)
    except InvalidSmiles as error:
        raise InvalidInput(error.reason, code="invalid_smiles") from None
    except TimeoutError:
        raise Unavailable(f"drawing this molecule took longer than {DEPICT_TIMEOUT_S:.0f} s",
                          code="depict_timeout") from None
    return Response(drawing, media_type="image/svg+xml",
                    headers={"cache-control": "public, max-age=86400"})
