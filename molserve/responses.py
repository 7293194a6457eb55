"""JSON responses serialized with orjson (fast, numpy-aware, and the edge where typed answers
become JSON)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as StarletteJSONResponse

from molserve.answers import to_json


class JSONResponse(StarletteJSONResponse):
    """A JSON response rendered once with orjson.

    It derives from Starlette's JSONResponse so that FastAPI documents a route's
    `response_model` under it; a route that returns one is not validated again per request."""

    def render(self, content: Any) -> bytes:
        # Typed answers (dataclasses) serialize themselves, once, here.
        return orjson.dumps(content, default=to_json,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATACLASS)
