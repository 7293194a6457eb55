"""Where a training job's worker-tier model trains (a transformer, graph models or foundation
models): here, on Modal, or on a Ray cluster.

Each engine takes the same request and the same progress callback and returns the same outcome
(`operations.training.outcome`'s shape, plus `engine`), so the job that uses one does not know
how it starts work or how it polls. The remote engines write the model into the registry their
workers serve from (the Modal volume, or the Ray cluster's shared directory).

Chosen by `EngineSettings.training_backend` (MOLSERVE_TRAINING_BACKEND: local, modal, ray).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from molserve.config import EngineSettings
from molserve.operations.training import FoundationParams, GraphParams, TransformerParams

# Kinds whose training makes one model per endpoint of the request (`tasks`).
PerEndpoint = GraphParams | FoundationParams

# progress(fraction, step, metrics or None); raising from it (a cancelled job) stops the wait.
Progress = Callable[[float, str, dict[str, Any] | None], None]


@dataclass(frozen=True)
class FinetuneRequest:
    endpoint: str  # the registry name; with `tasks`, the multi-task model's name
    params: TransformerParams | GraphParams | FoundationParams  # which kind, and how to train it
    tasks: list[str] | None = None  # transformer: one multi-task model; graph, foundation: one each
    job_id: str | None = None
    manifest: dict[str, Any] | None = None  # owner, visibility, ... for the models' manifests

    def extra(self) -> dict[str, Any] | None:
        """What the trained models' manifests add: the job and its ownership fields."""
        extra = {**({"job_id": self.job_id} if self.job_id else {}), **(self.manifest or {})}
        return extra or None


class Engine(Protocol):
    name: str

    def finetune(self, registry: Path, request: FinetuneRequest, progress: Progress) -> dict[str, Any]:
        ...


class LocalEngine:
    """In this process (the job's own), on this machine's device."""

    name = "local"

    def finetune(self, registry: Path, request: FinetuneRequest, progress: Progress) -> dict[str, Any]:
        from molserve.operations.training import finetune, outcome
        from molserve.registry import Registry

        store = Registry(registry)
        store.check_writable()  # fail now, not after the training compute is spent
        extra = request.extra()
        if isinstance(request.params, PerEndpoint):
            from molserve.operations.training import train_foundation, train_graph

            train = train_graph if isinstance(request.params, GraphParams) else train_foundation
            artifacts = train(
                store, request.tasks or [request.endpoint], request.params, extra_manifest=extra,
                progress=lambda step, fraction, info: progress(fraction * 0.95, step, dict(info)))
            return {**outcome(artifacts[0]), "models": [outcome(a) for a in artifacts],
                    "engine": self.name}
        artifact = finetune(
            store, request.tasks or [request.endpoint], request.params,
            name=request.endpoint if request.tasks else None,
            extra_manifest=extra,
            progress=lambda step, fraction, info: progress(fraction * 0.95, step, dict(info)))
        return {**outcome(artifact), "engine": self.name}


class ModalEngine:
    """A spawned call of the deployed Modal app's `finetune` (or `train_graph`) function;
    progress from the modal.Dict the function writes. A job's call is recorded in that Dict, so
    a resumed job waits for the call it already started instead of spawning a second one; a
    cancelled or interrupted job cancels its call (and the GPU container running it)."""

    name = "modal"
    progress_dict = "molserve-progress"  # deploy.modal_app.PROGRESS_DICT

    def __init__(self, app_name: str, poll_s: float = 5.0) -> None:
        self.app_name = app_name
        self.poll_s = poll_s

    def finetune(self, registry: Path, request: FinetuneRequest, progress: Progress) -> dict[str, Any]:
        import modal

        params = request.params
        states = modal.Dict.from_name(self.progress_dict, create_if_missing=True)
        claim = f"job:{request.job_id}" if request.job_id else None
        earlier = states.get(claim) if claim else None
        if earlier:
            call = modal.FunctionCall.from_id(earlier)
            progress(0.0, f"modal: waiting for call {earlier}, started by an earlier attempt", None)
        else:
            if isinstance(params, PerEndpoint):
                function = "train_graph" if isinstance(params, GraphParams) else "train_foundation"
                call = modal.Function.from_name(self.app_name, function).spawn(
                    request.tasks or [request.endpoint], params.model_dump(), job_id=request.job_id,
                    manifest=request.manifest)
            else:
                call = modal.Function.from_name(self.app_name, "finetune").spawn(
                    request.endpoint, params.model_dump(), tasks=request.tasks, job_id=request.job_id,
                    manifest=request.manifest)
            if claim:
                states.put(claim, call.object_id, skip_if_exists=True)
            progress(0.0, f"modal: spawned call {call.object_id}", None)
        finished = False
        try:
            while True:
                try:
                    result = call.get(timeout=self.poll_s)
                    finished = True
                    break
                except TimeoutError:
                    state = dict(states.get(call.object_id) or {})
                    fraction = float(state.pop("progress", 0.0))
                    step = state.pop("step", "starting")
                    progress(fraction * 0.98, f"modal: {step}", state or None)
        except BaseException:
            # Cancelled (from `progress` or by SIGTERM), out of time, or interrupted: the GPU call
            # must not run on, and a later attempt must not wait for it.
            if not finished:
                call.cancel(terminate_containers=True)
                if claim:
                    states.pop(claim, None)
            raise
        return {**result, "kind": _kind(params), "engine": self.name}


def _kind(params: TransformerParams | GraphParams | FoundationParams) -> str:
    if isinstance(params, GraphParams):
        return "graph"
    return "foundation" if isinstance(params, FoundationParams) else "transformer"


class RayEngine:
    """A Ray task on the cluster at `address` (GPU when asked), molserve's code shipped with
    it; progress from a ProgressBoard actor the task writes to. A cancelled or interrupted job
    cancels its task; a resumed job's task returns the model the job already registered."""

    name = "ray"

    def __init__(self, address: str, num_gpus: float = 0, poll_s: float = 2.0) -> None:
        self.address = address
        self.num_gpus = num_gpus
        self.poll_s = poll_s

    def finetune(self, registry: Path, request: FinetuneRequest, progress: Progress) -> dict[str, Any]:
        import ray

        from molserve.deploy.ray_app import (
            code_runtime_env,
            new_board,
            submit_finetune,
            submit_foundation,
            submit_graph,
        )

        ray.init(address=self.address, ignore_reinit_error=True, log_to_driver=False,
                 runtime_env=code_runtime_env())
        params = request.params
        where = str(Path(registry).resolve())
        board = new_board()
        if isinstance(params, PerEndpoint):
            submit = submit_graph if isinstance(params, GraphParams) else submit_foundation
            reference = submit(where, request.tasks or [request.endpoint], params.model_dump(),
                               num_gpus=self.num_gpus, job_id=request.job_id, board=board,
                               manifest=request.manifest)
        else:
            reference = submit_finetune(where, request.endpoint, params.model_dump(),
                                        num_gpus=self.num_gpus, tasks=request.tasks,
                                        job_id=request.job_id, board=board, manifest=request.manifest)
        progress(0.0, "ray: submitted a training task", None)
        finished, fraction = False, 0.0
        try:
            while True:
                done, _ = ray.wait([reference], timeout=self.poll_s)
                if done:
                    finished = True
                    result = ray.get(reference)
                    break
                if board is None:
                    continue
                try:
                    state = dict(ray.get(board.get.remote(), timeout=self.poll_s) or {})
                except TimeoutError:  # the board's node is busy: report next time
                    continue
                except ray.exceptions.RayActorError:
                    # Progress is a courtesy: losing the board (its node died) loses the
                    # progress figures, not the training task.
                    board = None
                    progress(fraction * 0.98, "ray: progress lost with its node; the task goes on", None)
                    continue
                fraction = float(state.pop("progress", 0.0))
                step = state.pop("step", "starting")
                progress(fraction * 0.98, f"ray: {step}", state or None)
        except BaseException:
            if not finished:
                ray.cancel(reference, force=True)
            raise
        finally:
            if board is not None:
                ray.kill(board)
        return {**result, "kind": _kind(params), "engine": self.name}


def engine(settings: EngineSettings | None = None) -> Engine:
    """The engine the settings name."""
    settings = settings or EngineSettings()
    if settings.training_backend == "modal":
        return ModalEngine(settings.modal_app)
    if settings.training_backend == "ray":
        return RayEngine(settings.ray_address, num_gpus=settings.ray_train_gpus)
    return LocalEngine()
