"""Screens on a Ray cluster, with Ray Data: the engine behind `molserve predict --engine ray`.

The shards still to score become a dataset of one row each; `map_batches` runs them through an
actor pool whose actors each load the fast tier once (`ShardScorer`) and return each shard's
encoded rows; the driver streams the results (`iter_rows`) and records each shard as it lands
(`operations.sharded`). Nothing is installed on the cluster by hand: the molserve package
travels in the job's `runtime_env` (`py_modules`) and the pinned model versions through the
object store, written by each actor into a private registry folder. Ray restarts an actor that
dies with its node and retries its shard (Ray Data's defaults for actor pools); the driver
records a shard once whichever attempt returns it.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from molserve.errors import Unavailable
from molserve.operations.library import Shard
from molserve.operations.sharded import ScreenPlan, ShardOutput, ShardScorer, pinned_artifacts

# Left on the workers' side of the package: training data the fast tier does not read.
_EXCLUDES = ["__pycache__", "*.pyc", "data/tdc/*.zip", "data/tdc/extra"]


def registry_snapshot(registry: Path, plan: ScreenPlan) -> dict[str, bytes]:
    """The files of the model versions a plan pins, by path relative to the registry."""
    files: dict[str, bytes] = {}
    for folder in pinned_artifacts(registry, plan):
        for path in sorted((registry / folder).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(registry))] = path.read_bytes()
    return files


class RayShardScorer:
    """One actor of the pool: writes the shipped registry versions to a folder of its own,
    loads the models once, then scores the shards it is given (one a batch)."""

    def __init__(self, snapshot: list[Any], plan: dict[str, Any]) -> None:
        import ray

        files = ray.get(snapshot[0])
        root = Path(tempfile.mkdtemp(prefix="molserve-registry-"))
        for name, data in files.items():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)
        self.scorer = ShardScorer(root, ScreenPlan.from_json(plan))

    def __call__(self, batch: dict[str, Any]) -> Any:
        import pyarrow as pa

        outputs = [self.scorer(Shard.from_json(json.loads(str(spec)))) for spec in batch["shard"]]
        return pa.table({
            "index": pa.array([o.index for o in outputs], pa.int64()),
            "rows": pa.array([o.rows for o in outputs], pa.int64()),
            "kept": pa.array([o.kept for o in outputs], pa.int64()),
            "errors": pa.array([o.errors for o in outputs], pa.int64()),
            "seconds": pa.array([o.seconds for o in outputs], pa.float64()),
            "cpu_seconds": pa.array([o.cpu_seconds for o in outputs], pa.float64()),
            "data": pa.array([o.data for o in outputs], pa.binary()),
        })


def runtime_env() -> dict[str, Any]:
    import molserve

    return {"py_modules": [str(Path(molserve.__file__).parent)], "excludes": _EXCLUDES,
            "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}


class RayScreenEngine:
    """Ray Data on the cluster at `address` (or a Ray started on this machine when None):
    `actors` actors (default: one per CPU of the cluster) of `num_cpus` CPUs each."""

    name = "ray"

    def __init__(self, address: str | None = None, actors: int | None = None, num_cpus: float = 1.0) -> None:
        self.address = address
        self.actors = actors
        self.num_cpus = num_cpus

    def run(self, registry: Path, plan: ScreenPlan, shards: list[Shard]) -> Iterator[ShardOutput]:
        try:
            import ray
            import ray.data
        except ImportError:
            raise Unavailable("the Ray engine needs ray[data] (pip install 'molserve[deploy]')",
                              code="ray_missing") from None
        connected_here = not ray.is_initialized()
        if connected_here:
            # ray.init installs its own SIGTERM handler; the caller's (a job's: SIGTERM is its
            # cancel) is put back so a cancelled screen still ends as cancelled.
            main_thread = threading.current_thread() is threading.main_thread()
            on_term = signal.getsignal(signal.SIGTERM) if main_thread else None
            try:
                ray.init(address=self.address, runtime_env=runtime_env(), logging_level=logging.WARNING,
                         log_to_driver=False, include_dashboard=False)
            except (ConnectionError, ValueError, RuntimeError) as error:
                raise Unavailable(f"cannot reach the Ray cluster at {self.address or 'this machine'}: "
                                  f"{error}", code="ray_unreachable") from None
            if main_thread and on_term is not None:
                signal.signal(signal.SIGTERM, on_term)
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            context.print_on_execution_start = False
            logging.getLogger("ray.data").setLevel(logging.WARNING)
            cpus = int(ray.cluster_resources().get("CPU", 1) // self.num_cpus) or 1
            actors = max(1, min(self.actors or cpus, len(shards)))
            snapshot = ray.put(registry_snapshot(registry, plan))
            dataset = ray.data.from_items([{"shard": json.dumps(s.to_json())} for s in shards],
                                          override_num_blocks=len(shards))
            scored = dataset.map_batches(
                RayShardScorer, batch_size=1, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=self.num_cpus,
                fn_constructor_args=([snapshot], plan.to_json()))
            for row in scored.iter_rows():
                yield ShardOutput(int(row["index"]), int(row["rows"]), int(row["kept"]),
                                  int(row["errors"]), bytes(row["data"]), float(row["seconds"]),
                                  float(row["cpu_seconds"]))
        finally:
            if connected_here:
                ray.shutdown()  # the job's actors go with the driver: a cancelled screen stops
