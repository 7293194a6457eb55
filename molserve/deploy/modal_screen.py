"""Screens on Modal: a class mapped over shards (`.map`), the engine behind
`molserve predict --engine modal`.

Deploy once with `modal deploy molserve/deploy/modal_screen.py`; the registry is the Volume
`molserve deploy modal` fills (`molserve-registry`), read here; each scored shard is also kept
on the Volume `molserve-screens` under the screen's key. A container loads the fast tier once
(`@modal.enter`) for the screen's plan (a class parameter, so two screens never share a
container) and scores the shards it is given. Shards of files the driver reads locally travel
with their input (their own bytes); object-store URLs are read by the containers themselves.
"""

# No `from __future__ import annotations`: Modal reads class parameter types at import.
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal

from molserve.config import ModalDeploySettings
from molserve.operations.library import Shard, is_local, materialize, shard_payload
from molserve.operations.sharded import ScreenPlan, ShardOutput, ShardScorer, shard_file

APP_NAME = "molserve-screen"
REGISTRY_MOUNT = ModalDeploySettings().registry_mount
RESULTS_MOUNT = "/screens"

registry_volume = modal.Volume.from_name("molserve-registry", create_if_missing=True)
results_volume = modal.Volume.from_name("molserve-screens", create_if_missing=True)

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install("rdkit>=2024.9.1", "numpy>=1.26", "safetensors>=0.4", "pydantic>=2.7,<3",
                 "pydantic-settings>=2.3", "orjson>=3.10", "httpx>=0.27", "tqdm>=4.66",
                 "pyarrow>=14", "fsspec>=2024.3", "s3fs>=2024.3", "fastapi>=0.115",
                 "prometheus-client>=0.20")
    .add_local_python_source("molserve")
)

app = modal.App(APP_NAME, image=image)


def score_input(scorer: ShardScorer, item: dict[str, Any], results: Path | None, screen: str) -> dict:
    """One `.map` input: `{"shard": ..., "payload": bytes or None}` -> a ShardOutput's fields."""
    shard = Shard.from_json(item["shard"])
    with tempfile.TemporaryDirectory(prefix="molserve-shard-") as folder:
        if item.get("payload") is not None:
            shard = materialize(shard, item["payload"], Path(folder))
        output = scorer(shard)
    if results is not None:
        target = results / screen / shard_file(output.index, scorer.plan.output_format)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(output.data)
    return output.to_json()


@app.cls(volumes={REGISTRY_MOUNT: registry_volume, RESULTS_MOUNT: results_volume}, cpu=1.0,
         timeout=3600, max_containers=100, scaledown_window=60)
class ShardScreener:
    plan_json: str = modal.parameter()
    screen: str = modal.parameter()

    @modal.enter()
    def load(self) -> None:
        self.scorer = ShardScorer(Path(REGISTRY_MOUNT), ScreenPlan.from_json(json.loads(self.plan_json)))

    @modal.method()
    def score(self, item: dict) -> dict:
        result = score_input(self.scorer, item, Path(RESULTS_MOUNT), self.screen)
        results_volume.commit()
        return result


def map_inputs(shards: list[Shard]) -> Iterator[dict[str, Any]]:
    """The `.map` inputs, read one at a time as Modal takes them (the driver holds few)."""
    for shard in shards:
        yield {"shard": shard.to_json(), "payload": shard_payload(shard) if is_local(shard.path) else None}


class ModalScreenEngine:
    """The deployed `ShardScreener` of `app_name`, mapped over the shards, outputs as they come."""

    name = "modal"

    def __init__(self, app_name: str = APP_NAME) -> None:
        self.app_name = app_name

    def run(self, registry: Path, plan: ScreenPlan, shards: list[Shard]) -> Iterator[ShardOutput]:
        import hashlib

        screener_cls = modal.Cls.from_name(self.app_name, "ShardScreener")
        plan_json = json.dumps(plan.to_json(), sort_keys=True)
        screen = hashlib.sha256(plan_json.encode()).hexdigest()[:16]
        screener = screener_cls(plan_json=plan_json, screen=screen)
        outputs = screener.score.map(map_inputs(shards), order_outputs=False)
        try:
            for output in outputs:
                yield ShardOutput(**output)
        finally:
            close = getattr(outputs, "close", None)
            if close is not None:
                close()  # a cancelled screen stops feeding and waiting for inputs
