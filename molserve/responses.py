"""JSON responses serialized with orjson (fast, numpy-aware, and the edge where typed answers
become JSON)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from molserve.answers import to_json


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        # Typed answers (dataclasses) serialize themselves, once, here.
        return orjson.dumps(content, default=to_json,
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATACLASS)
