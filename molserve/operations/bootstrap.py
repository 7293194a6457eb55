"""Train the bundled endpoints, in the foreground or in the background of a serving gateway.

Bundled endpoints are the five legacy datasets shipped inside installed packages and the forty
TDC ADMET datasets shipped inside molserve (`molserve.data.tdc`). Training goes smallest first,
so the first endpoints answer within seconds of a fresh start and the big datasets come last.

Two protocols (`PROTOCOLS`): `production` (the default, what is served) learns from every
labelled row, TDC's train_val and test files alike, as ADMET-AI's models do; its quality figures
are out of fold. `tdc` keeps TDC's protocol: train_val only, scored on TDC's fixed test file (and
a held-out tenth of the other datasets), the models the benchmark tables describe.

Progress is written to `<registry>/.bootstrap.json` (atomically, a few times a second at most):
the gateway, `molserve models list` and the web page read it to say which endpoints are still
being trained. Each model reaches the registry through its atomic write, so a bootstrap that is
killed leaves finished endpoints served and the rest for the next run.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from molserve.data.catalog import BundledEndpoint, bundled_endpoints
from molserve.processes import cancel_and_wait, pid_alive
from molserve.registry.store import Registry

STATUS_FILE = ".bootstrap.json"


PROTOCOLS = ("production", "tdc")


def training_options(endpoint: BundledEndpoint) -> dict[str, Any]:
    """How a bundled endpoint is trained: keyword arguments for `train_endpoint` beyond the data."""
    if endpoint.tdc_name is None:
        return {"split": "scaffold", "seed": 0}
    from molserve.data.tdc import CATALOG
    from molserve.models.gbm_runtime import TargetTransform

    entry = CATALOG[endpoint.name]
    options: dict[str, Any] = {"metric": entry.metric}
    if entry.log_target:
        options["target_transform"] = TargetTransform("log10", 0.0)
    # Benchmark datasets: TDC's own split of train_val (seed 1), scored on TDC's test file.
    # The others: a scaffold split of our own (80/10/10, seed 0), recorded in the manifest.
    options.update({"split": "tdc-scaffold", "seed": 1} if entry.benchmark
                   else {"split": "scaffold", "seed": 0})
    return options


# Status file ---------------------------------------------------------------------------------

def status_path(registry: Registry) -> Path:
    return registry.root / STATUS_FILE


def read_status(registry: Registry) -> dict[str, Any] | None:
    """The last bootstrap's status, or None. `running` is False when its process is gone."""
    path = status_path(registry)
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if status.get("state") == "running" and not pid_alive(status.get("pid")):
        status["state"] = "interrupted"
    return status


def pending_endpoints(registry: Registry) -> dict[str, dict[str, Any]]:
    """Bundled endpoints a running bootstrap has not finished: name -> {state, progress, step}."""
    status = read_status(registry)
    if not status or status.get("state") != "running":
        return {}
    return {name: entry for name, entry in status.get("endpoints", {}).items()
            if entry.get("state") in ("queued", "training")}


class StatusWriter:
    """Writes the status file atomically, at most every `interval_s` unless forced (from any
    thread)."""

    def __init__(self, registry: Registry, names: list[str], interval_s: float = 0.5) -> None:
        import threading

        self._lock = threading.Lock()
        self.path = status_path(registry)
        self.interval_s = interval_s
        self._last = 0.0
        self.status: dict[str, Any] = {
            "pid": os.getpid(), "state": "running", "started": time.time(), "updated": time.time(),
            "endpoints": {n: {"state": "queued", "progress": 0.0} for n in names},
        }
        self.write(force=True)

    def update(self, name: str, force: bool = False, section: str = "endpoints", **fields: Any) -> None:
        with self._lock:
            self.status.setdefault(section, {}).setdefault(name, {}).update(fields)
            self.write(force)

    def finish(self, state: str) -> None:
        with self._lock:
            self.status["state"] = state
            self.status["finished"] = time.time()
            self.write(force=True)

    def write(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval_s:
            return
        self._last = now
        self.status["updated"] = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".json.partial")
        partial.write_text(json.dumps(self.status, indent=1))
        os.replace(partial, self.path)


# Training ------------------------------------------------------------------------------------

Report = Callable[[str, str, float], None]


def missing(registry: Registry, names: list[str] | None = None) -> list[str]:
    """Bundled endpoints (of `names`) that have no fast model in the registry, smallest first."""
    catalog = bundled_endpoints()
    wanted = list(catalog) if names is None else [n for n in catalog if n in names]
    return [n for n in wanted if registry.latest(n, kind="gbm") is None]


# Each worker process keeps the features it has computed, for the next dataset it trains.
_feature_cache = None


def load_for(entry: BundledEndpoint, protocol: str, tdc_source: str = "bundled") -> tuple[Any, Any, bool]:
    """(training data, fixed test set or None, hold_out) of a bundled endpoint under `protocol`:
    production joins a benchmark's test file to its train_val and holds nothing out."""
    train, test = entry.load(tdc_source)
    if protocol == "production":
        return (train.joined(test) if test is not None else train), None, False
    if protocol != "tdc":
        raise ValueError(f"unknown protocol {protocol!r}: {', '.join(PROTOCOLS)}")
    return train, test, True


def _train_one(registry_root: str, name: str, profile: str, tdc_source: str, events,
               protocol: str = "production") -> dict[str, Any]:
    """Train one bundled endpoint in a worker process; progress goes to `events`."""
    global _feature_cache
    from molserve.models.gbm_train import FeatureCache, summarize, train_endpoint

    if _feature_cache is None:
        _feature_cache = FeatureCache()
    started = time.time()
    events.put(("start", name, started))
    entry = bundled_endpoints()[name]
    try:
        train, test, hold_out = load_for(entry, protocol, tdc_source)
        artifact = train_endpoint(
            train, Registry(registry_root), name, test=test, profile=profile,
            feature_cache=_feature_cache, threads=1, hold_out=hold_out,
            extra_manifest={"protocol": protocol},
            progress=lambda step, fraction: events.put(("progress", name, step, fraction)),
            **training_options(entry))
    except Exception as error:  # noqa: BLE001 - recorded; the other endpoints go on
        return {"error": f"{type(error).__name__}: {error}"}
    return {"version": artifact.version, "seconds": round(time.time() - started, 1),
            "summary": summarize(artifact)}


def foundation_candidates(registry: Registry, names: list[str] | None = None) -> list[str]:
    """Bundled endpoints (of `names`) with a fast model and no foundation model trained on its
    data, smallest first."""
    from molserve.operations.training import worker_candidates

    catalog = bundled_endpoints()
    wanted = set(catalog if names is None else names) & set(catalog)
    return [n for n in worker_candidates(registry, "foundation") if n in wanted]


def _train_foundations(registry: Registry, names: list[str], writer: StatusWriter,
                       report: Report | None) -> dict[str, Any]:
    """The foundation tier's heads for `names`, one endpoint after another in this process (one
    MiniMol embedder and its store for all), each registered as it is done."""
    from molserve.models.foundation.pipeline import describe
    from molserve.operations.training import FoundationParams, train_foundation

    outcome: dict[str, Any] = {}
    for name in names:
        writer.update(name, force=True, section="foundation", state="queued", progress=0.0)
    for name in names:
        started = time.time()
        writer.update(name, force=True, section="foundation", state="training", started=started)

        def progress(step: str, fraction: float, info: dict, _name: str = name) -> None:
            writer.update(_name, section="foundation", step=step, progress=round(fraction, 3))
            if report:
                report(f"foundation:{_name}", step, fraction)

        try:
            [artifact] = train_foundation(registry, [name], FoundationParams(), progress=progress)
        except Exception as error:  # noqa: BLE001 - recorded; the other endpoints go on
            outcome[name] = {"error": f"{type(error).__name__}: {error}"}
            writer.update(name, force=True, section="foundation", state="failed",
                          error=outcome[name]["error"])
            continue
        outcome[name] = {"version": artifact.version, "seconds": round(time.time() - started, 1),
                         "summary": describe(artifact)}
        writer.update(name, force=True, section="foundation", state="done", progress=1.0,
                      version=artifact.version, seconds=outcome[name]["seconds"])
    return outcome


def bootstrap(registry: Registry, names: list[str], *, profile: str = "standard",
              tdc_source: str = "bundled", workers: int | None = None,
              report: Report | None = None, protocol: str = "production",
              foundation: bool = False) -> dict[str, Any]:
    """Train `names` (bundled endpoints), smallest first; return {name: summary or error}.

    `workers` endpoints train at once (default: one per core), each in its own process and
    boosting on one thread: on these datasets two single-threaded trainings use two cores
    better than one two-threaded training; LightGBM is not safe to train from several threads
    of one process; and a model's numbers do not depend on how many ran beside it (the
    benchmark trains the same way, so its seed-1 model is the served one). One endpoint failing
    (bad download, too few molecules) is recorded and the rest go on. With `foundation`, the
    foundation tier's heads are trained next, for every bundled endpoint with a fast model and
    none (`foundation_candidates`; in the outcome as `foundation:<name>`).
    """
    import multiprocessing
    import threading
    from concurrent.futures import ProcessPoolExecutor

    catalog = bundled_endpoints()
    unknown = [n for n in names if n not in catalog]
    if unknown:
        raise ValueError(f"not bundled endpoints: {', '.join(unknown)}; "
                         f"bundled: {', '.join(catalog)}")
    registry.check_writable()
    workers = max(1, min(workers or os.cpu_count() or 1, len(names)))
    writer = StatusWriter(registry, names)
    outcome: dict[str, Any] = {}
    context = multiprocessing.get_context("spawn")  # no forked LightGBM/OpenMP state
    with context.Manager() as manager:
        events = manager.Queue()

        def relay() -> None:  # worker progress -> status file and the caller's report
            while (event := events.get()) is not None:
                if event[0] == "start":
                    writer.update(event[1], force=True, state="training", step="loading data",
                                  started=event[2])
                else:
                    _, name, step, fraction = event
                    writer.update(name, step=step, progress=round(fraction, 3))
                    if report:
                        report(name, step, fraction)

        relay_thread = threading.Thread(target=relay, daemon=True)
        relay_thread.start()
        try:
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                futures = [(name, pool.submit(_train_one, str(registry.root), name, profile,
                                              tdc_source, events, protocol)) for name in names]
                for name, future in futures:
                    try:
                        result = future.result()
                    except Exception as error:  # noqa: BLE001 - a worker process died
                        result = {"error": f"{type(error).__name__}: {error}"}
                    outcome[name] = result
                    if "error" in result:
                        writer.update(name, force=True, state="failed", error=result["error"])
                    else:
                        writer.update(name, force=True, state="done", progress=1.0, step="done",
                                      version=result["version"], seconds=result["seconds"])
        except BaseException:
            writer.finish("interrupted")
            raise
        finally:
            events.put(None)
            relay_thread.join(timeout=5)
    if foundation:
        try:
            trained = _train_foundations(registry, foundation_candidates(registry), writer, report)
        except BaseException:
            writer.finish("interrupted")
            raise
        outcome.update({f"foundation:{name}": result for name, result in trained.items()})
    writer.finish("failed" if any("error" in v for v in outcome.values()) else "done")
    return outcome


class BackgroundBootstrap:
    """A bootstrap process started by a serving gateway, and the watch that loads each model as
    it lands. The process is the gateway's child: stopping the gateway stops it, and the next
    start trains what is still missing."""

    def __init__(self, registry: Registry, on_model: Callable[[], None], *,
                 only: list[str] | None = None, profile: str = "standard",
                 poll_s: float = 1.0, protocol: str = "production", foundation: bool = False) -> None:
        self.registry = registry
        self.only = only
        self.profile = profile
        self.protocol = protocol
        self.foundation = foundation
        self.on_model = on_model
        self.poll_s = poll_s
        self.process = None
        self._task = None
        self._done: set[str] = set()
        self.status: dict[str, Any] | None = None

    def start(self) -> bool:
        """Start training what is missing (unless a bootstrap is already running); True if
        there is a bootstrap to watch."""
        import asyncio
        import subprocess
        import sys

        status = read_status(self.registry)
        if not (status and status.get("state") == "running"):
            if not missing(self.registry, self.only) and not (
                    self.foundation and foundation_candidates(self.registry, self.only)):
                return False
            self.registry.root.mkdir(parents=True, exist_ok=True)
            command = [sys.executable, "-m", "molserve", "--registry", str(self.registry.root),
                       "bootstrap", "--quiet", "--profile", self.profile, "--protocol", self.protocol]
            if self.only:
                command += ["--only", ",".join(self.only)]
            if self.foundation:
                command.append("--foundation")
            with open(self.registry.root / ".bootstrap.log", "ab") as log:
                self.process = subprocess.Popen(command, stdout=log, stderr=log,
                                                stdin=subprocess.DEVNULL)
        self._task = asyncio.create_task(self._watch())
        return True

    async def _watch(self) -> None:
        import asyncio

        started = time.time()
        while True:
            await asyncio.sleep(self.poll_s)
            status = read_status(self.registry)
            self.status = status
            if status is None:
                if self.process is None or self.process.poll() is not None or time.time() - started > 60:
                    return
                continue
            done = {n for n, e in status.get("endpoints", {}).items() if e.get("state") == "done"}
            if done - self._done:
                self._done |= done
                await asyncio.to_thread(self.on_model)
            if status.get("state") != "running":
                return

    def pending(self) -> dict[str, dict[str, Any]]:
        """Endpoints still queued or training: name -> {state, progress, step}."""
        status = self.status
        if not status or status.get("state") != "running":
            return {}
        return {name: entry for name, entry in status.get("endpoints", {}).items()
                if entry.get("state") in ("queued", "training")}

    def summary(self) -> dict[str, Any] | None:
        """What /readyz says about the bootstrap."""
        status = self.status
        if not status:
            return None
        entries = status.get("endpoints", {})
        by_state: dict[str, list[str]] = {}
        for name, entry in entries.items():
            by_state.setdefault(entry.get("state", "queued"), []).append(name)
        summary = {
            "state": status.get("state"),
            "done": len(by_state.get("done", [])),
            "total": len(entries),
            "training": {n: {"progress": entries[n].get("progress", 0.0), "step": entries[n].get("step")}
                         for n in by_state.get("training", [])},
            "queued": by_state.get("queued", []),
            "failed": {n: entries[n].get("error") for n in by_state.get("failed", [])},
        }
        heads = status.get("foundation") or {}
        if heads:  # the foundation tier's heads, trained after the fast models
            states = [entry.get("state") for entry in heads.values()]
            summary["foundation"] = {
                "done": states.count("done"), "total": len(heads),
                "training": {n: {"progress": e.get("progress", 0.0), "step": e.get("step")}
                             for n, e in heads.items() if e.get("state") == "training"},
                "failed": {n: e.get("error") for n, e in heads.items() if e.get("state") == "failed"}}
        return summary

    async def stop(self) -> None:
        import asyncio

        await cancel_and_wait(self._task)
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except Exception:  # noqa: BLE001 - it is killed instead
                self.process.kill()
