"""Training, as every face asks for it: the CLI's `train`/`finetune`, training jobs, the bootstrap.

The parameters of each kind of training live in one typed place (`FastParams`,
`TransformerParams`); the faces fill them from options or request bodies and call the functions
here, which raise `molserve.errors` on bad input. Heavy libraries are imported inside the
functions, so importing this module costs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from molserve.errors import InvalidInput
from molserve.registry.store import Artifact, Registry, validate_endpoint_name

DEFAULT_BASE = "seyonec/ChemBERTa-zinc-base-v1"

# progress(step, fraction) for the fast tier; progress(step, fraction, metrics) for transformers.
FastProgress = Callable[[str, float], None]
TransformerProgress = Callable[[str, float, dict[str, Any]], None]


class FastParams(BaseModel):
    """How a fast-tier (LightGBM ensemble) model is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    split: Literal["scaffold", "random", "time"] = Field(
        "scaffold", description="How the held-out test split is drawn (`time` needs dates).")
    profile: Literal["standard", "quick"] = Field(
        "standard", description="`quick` trains fewer rounds and recipes (tests, demos).")
    seed: int = 0
    base: list[str] = Field(
        default_factory=list, max_length=10,
        description="Endpoints (their fast models) to learn on top of: the local model competes "
        "with the bases recalibrated to its labels and with the stack of the two, out of fold, "
        "and the best answers. `[\"auto\"]` tries every bundled endpoint of the same task type "
        "and keeps those that help.")


class TransformerParams(BaseModel):
    """How a transformer (RoBERTa) is fine-tuned on endpoints that have fast models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base: str = Field(DEFAULT_BASE, description="Hub id, local directory, or random:tiny|small|"
                      "chemberta-zinc-base.")
    base_from: Literal["anywhere", "hub"] = Field(
        "anywhere", description="hub: `base` must be a Hugging Face hub id (org/name) or random:*, "
        "never a path on this machine (what jobs of keys that are not admin may name).")
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-5, gt=0)
    patience: int = Field(5, ge=1, description="Epochs without validation gain before stopping.")
    export_onnx: bool = Field(True, description="Also store ONNX fp32 and int8 exports.")
    device: str | None = Field(None, description="auto (default), cpu or cuda.")
    seed: int = 0


class GraphParams(BaseModel):
    """How a graph-tier model (an ensemble of D-MPNNs with RDKit descriptors) is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ensemble: int = Field(5, ge=1, le=20, description="Networks per endpoint (different seeds).")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1)
    patience: int = Field(10, ge=1, description="Epochs without validation gain before stopping.")
    hidden: int = Field(300, ge=8, description="Message size of the D-MPNN.")
    depth: int = Field(3, ge=1, le=10, description="Message-passing steps.")
    descriptors: bool = Field(True, description="Feed RDKit 2D descriptors beside the graph.")
    device: str | None = Field(None, description="auto (default), cpu or cuda.")
    seed: int = 0


class FoundationParams(BaseModel):
    """How a foundation-tier model (heads on MiniMol embeddings) is trained."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    heads: list[Literal["trees", "trees+fast", "mlp"]] = Field(
        default_factory=lambda: ["trees", "trees+fast", "mlp"], min_length=1,
        description="Head kinds that compete out of fold: trees on the embedding, trees on the "
        "embedding joined with the fast tier's features, a small network on the embedding.")
    mlp_epochs: int = Field(25, ge=1, le=500, description="Epochs of each network head.")
    device: str | None = Field(None, description="auto (default), cpu or cuda (the embedding's "
                               "onnxruntime provider and the network heads).")
    seed: int = 0


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
RANDOM_BASE = re.compile(r"^random:(tiny|small|chemberta-zinc-base)$")


def check_hub_base(base: str) -> None:
    """A base a caller without the admin scope may name: a hub id or random:<size>, and nothing
    that is a path on this machine (transformers would load a local directory of that name)."""
    if RANDOM_BASE.match(base):
        return
    if not HUB_ID.match(base) or ".." in base or Path(base).exists():
        raise InvalidInput(f"base {base!r}: name a Hugging Face hub id (org/name) or "
                           "random:tiny|small|chemberta-zinc-base; paths on the server are for "
                           "admin keys", code="invalid_base")


def endpoint_from_column(column: str) -> str:
    """An endpoint name made from a label column's name (`LogD7.4` -> `logd7_4`)."""
    name = re.sub(r"[^a-z0-9_-]+", "_", column.strip().lower()).strip("_-")
    return name[:64] or "endpoint"


def train_fast(registry: Registry, dataset, endpoint: str, params: FastParams, *,
               split_labels: list[str] | None = None, extra_manifest: dict | None = None,
               progress: FastProgress | None = None) -> Artifact:
    """Train and register one fast-tier model on a loaded `Dataset`."""
    from molserve.models.gbm_train import train_endpoint

    validate_endpoint_name(endpoint)
    hook = base_hook(registry, endpoint, dataset.task, params.base) if params.base else None
    return train_endpoint(dataset, registry, endpoint, split=params.split, profile=params.profile,
                          seed=params.seed, split_labels=split_labels,
                          extra_manifest=extra_manifest, progress=progress, on_fitted=hook)


def base_artifacts(registry: Registry, endpoint: str, task: str, names: list[str]) -> tuple[list, bool]:
    """The fast models of the bases named (or every bundled endpoint of `task`'s type for
    `auto`), and whether the choice among them is automatic."""
    from molserve.models.on_base import candidate_bases

    if names == ["auto"]:
        found = candidate_bases(registry, task, endpoint)
        if not found:
            raise InvalidInput(f"--base auto: the registry has no bundled {task} endpoint to learn on top of",
                               code="no_base")
        return found, True
    if "auto" in names:
        raise InvalidInput("--base auto tries every bundled endpoint; name it alone", code="invalid_base")
    artifacts = []
    for name in dict.fromkeys(names):
        if name == endpoint:
            raise InvalidInput(f"{endpoint} cannot be its own base", code="invalid_base")
        artifact = registry.latest(name, kind="gbm")
        if artifact is None:
            raise InvalidInput(f"base {name!r} has no fast model in the registry (molserve models list)",
                               code="no_base")
        artifacts.append(artifact)
    return artifacts, False


def base_hook(registry: Registry, endpoint: str, task: str, names: list[str]):
    """What `fit_and_evaluate` calls once the local model is fitted: the bases' outputs on the
    team's molecules, the three candidates scored out of fold, the best kept."""
    from molserve.models import on_base

    artifacts, auto = base_artifacts(registry, endpoint, task, names)

    def on_fitted(ctx: dict[str, Any]) -> dict[str, Any]:
        outputs = on_base.base_outputs(artifacts, ctx["fitted_smiles"])
        test = None
        if len(ctx["test_y"]):
            test = {"local": ctx["test_local"], "y": ctx["test_y"],
                    "bases": on_base.base_outputs(artifacts, ctx["test_smiles"])}
        evidence = on_base.Evidence(ctx["task"], ctx["metric"], ctx["y"], ctx["target"], ctx["folds"],
                                    ctx["local"], ctx["to_label"])
        return on_base.combine(evidence, artifacts, outputs, local_calibration=ctx["calibration"],
                               auto=auto, test=test)

    return on_fitted


LEARNING_CURVE_SIZES = (50, 100, 300, 1000)


def learning_curve(registry: Registry, dataset, endpoint: str, params: FastParams,
                   sizes: tuple[int, ...] = LEARNING_CURVE_SIZES, repeats: int = 1,
                   progress: FastProgress | None = None) -> list[dict[str, Any]]:
    """Out-of-fold scores of local, base and stack at growing random subsets of the rows (each
    size `repeats` times), and at every row: does the assay need more measurements? Nothing is
    registered."""
    import numpy as np

    from molserve.data.dataset import Dataset
    from molserve.models.gbm_train import fit_and_evaluate

    n = len(dataset)
    steps = [s for s in sizes if 30 <= s < n] + [n]
    rows = []
    for position, size in enumerate(steps):
        for repeat in range(repeats if size < n else 1):
            if progress:
                progress(f"learning curve: {size} rows", position / len(steps))
            order = np.random.default_rng(params.seed + 7919 * repeat + size).permutation(n)[:size]
            part = Dataset(**{**dataset.__dict__, "smiles": [dataset.smiles[i] for i in sorted(order)],
                              "labels": [dataset.labels[i] for i in sorted(order)]})
            hook = base_hook(registry, endpoint, dataset.task, params.base or ["auto"])
            try:
                _, result = fit_and_evaluate(part, endpoint, split=params.split, profile=params.profile,
                                             seed=params.seed + repeat, hold_out=False, on_fitted=hook)
            except ValueError as error:  # too few usable molecules or one class only
                rows.append({"rows": size, "repeat": repeat, "error": str(error)})
                continue
            section = result["on_base"]
            rows.append({"rows": size, "repeat": repeat, "metric": section["metric"],
                         "scores": section["scores"], "out_of_fold": section["out_of_fold"],
                         "chosen": section["chosen"], "bases": [b["endpoint"] for b in section["bases"]]})
    return rows


def table_jobs(path: Path, *, label_cols: list[str], endpoint: str | None, split: str,
               smiles_col: str = "smiles", task: str = "regression", units: str = "",
               description: str = "", positive_label: str | None = None) -> list[tuple[str, Any]]:
    """(endpoint, dataset) per label column of a CSV/TSV/SDF file, every name checked before
    any training starts. One column needs `endpoint`; several columns are named after
    themselves."""
    from molserve.data.dataset import load_table

    if not label_cols or (len(label_cols) == 1 and not endpoint):
        raise InvalidInput("give the label column and the endpoint name (--label-col, --endpoint), "
                           "or several label columns (one endpoint each, named after the column)")
    if len(label_cols) > 1 and endpoint:
        raise InvalidInput("with several label columns each becomes an endpoint named after it; "
                           "drop the endpoint name")
    if split == "time":
        raise InvalidInput("a time split needs a stored dataset with dates (molserve data import, "
                           "then --dataset)")
    if not Path(path).is_file():
        from molserve.errors import NotFound

        raise NotFound(f"no such file: {path}")
    names = [endpoint or endpoint_from_column(column) for column in label_cols]
    for name in names:
        validate_endpoint_name(name)
    return [(name, load_table(path, smiles_col=smiles_col, label_col=column, task=task, name=name,
                              units=units, description=description, positive_label=positive_label))
            for name, column in zip(names, label_cols, strict=True)]


def train_stored(registry: Registry, datasets: Path, dataset: str, params: FastParams, *,
                 endpoint: str | None = None, extra_manifest: dict | None = None,
                 progress: FastProgress | None = None) -> Artifact:
    """Train a fast model on a stored, curated dataset with its own split labels."""
    from molserve.data.store import DatasetStore

    store = DatasetStore(datasets)
    loaded, split_labels = store.load(dataset, split=params.split)
    name = endpoint or store.get(dataset).manifest.get("endpoint_suggestion", dataset)
    return train_fast(registry, loaded, name, params, split_labels=split_labels,
                      extra_manifest=extra_manifest, progress=progress)


def _with_fast_models(registry: Registry, endpoints: list[str], what: str, how: str) -> list[str]:
    """The endpoints, once each, after checking each has the fast model whose curated data and
    split a worker-tier model reuses."""
    endpoints = list(dict.fromkeys(endpoints))
    if not endpoints:
        raise InvalidInput(f"name at least one endpoint with a fast model {how}")
    missing = [e for e in endpoints if registry.latest(e, kind="gbm") is None]
    if missing:
        raise InvalidInput(f"no fast model for {', '.join(missing)}: {what} reuses the fast "
                           "model's curated data and split; train one first (molserve train)",
                           code="no_fast_model")
    return endpoints


def finetune(registry: Registry, endpoints: list[str], params: TransformerParams, *,
             name: str | None = None, extra_manifest: dict | None = None,
             progress: TransformerProgress | None = None) -> Artifact:
    """Fine-tune one transformer on `endpoints` (several: one multi-task model named `name`),
    reusing each endpoint's curated data and split from its fast model. Bad input is refused
    before torch is imported."""
    endpoints = _with_fast_models(registry, endpoints, "a transformer", "(--dataset)")
    if params.base_from == "hub":
        check_hub_base(params.base)
    if len(endpoints) > 1 and not name:
        raise InvalidInput("several endpoints make one multi-task model: give it a registry name "
                           "(--name, e.g. --name adme)", code="multitask_needs_a_name")
    if name is not None:
        validate_endpoint_name(name)
    from molserve.models.transformer.pipeline import finetune_endpoints

    return finetune_endpoints(
        registry, endpoints, name=name, base=params.base, epochs=params.epochs,
        batch_size=params.batch_size, learning_rate=params.learning_rate, patience=params.patience,
        export=params.export_onnx, device=params.device, seed=params.seed,
        extra_manifest=extra_manifest, progress=progress)


def worker_candidates(registry: Registry, kind: str = "graph") -> list[str]:
    """Endpoints with a fast model and no `kind` model (graph, foundation) trained on that fast
    model's data yet: what `finetune --model <kind> --all` trains, smallest dataset first."""
    todo = []
    for endpoint in registry.endpoints():
        fast = registry.latest(endpoint, kind="gbm")
        if fast is None or fast.info.task not in ("regression", "classification"):
            continue
        trained = registry.latest(endpoint, kind=kind)
        shared = f"{endpoint} v{fast.version} (gbm)"
        if trained is None or trained.manifest.get("split", {}).get("shared_with") != shared:
            rows = (fast.manifest.get("dataset") or {}).get("rows") or 0
            todo.append((rows, endpoint))
    return [endpoint for _, endpoint in sorted(todo)]


def graph_candidates(registry: Registry) -> list[str]:
    return worker_candidates(registry, "graph")


def train_graph(registry: Registry, endpoints: list[str], params: GraphParams, *,
                extra_manifest: dict | None = None,
                progress: TransformerProgress | None = None) -> list[Artifact]:
    """Train one graph model per endpoint on its fast model's curated data and split, each
    registered as kind `graph`. Bad input is refused before torch is imported."""
    endpoints = _with_fast_models(registry, endpoints, "a graph model", "(--dataset, or --all)")
    from molserve.models.graph.pipeline import train_graph_endpoint

    artifacts = []
    for position, endpoint in enumerate(endpoints):
        def report(step: str, fraction: float, info: dict[str, Any], _p: int = position,
                   _e: str = endpoint) -> None:
            if progress is not None:
                progress(f"{_e}: {step}", (_p + fraction) / len(endpoints), info)

        artifacts.append(train_graph_endpoint(
            registry, endpoint, ensemble=params.ensemble, epochs=params.epochs,
            batch_size=params.batch_size, patience=params.patience, hidden=params.hidden,
            depth=params.depth, descriptors=params.descriptors, device=params.device or "auto",
            seed=params.seed, extra_manifest=extra_manifest, progress=report))
    return artifacts


def train_foundation(registry: Registry, endpoints: list[str], params: FoundationParams, *,
                     extra_manifest: dict | None = None, embedding_store: Path | None = None,
                     progress: TransformerProgress | None = None) -> list[Artifact]:
    """Train one foundation model per endpoint on its fast model's curated data, split and
    folds, each registered as kind `foundation`. One MiniMol embedder serves them all, through
    the embedding store (default `<registry>/.embeddings`) that the workers read too. Bad input
    is refused before onnxruntime or torch is imported."""
    endpoints = _with_fast_models(registry, endpoints, "a foundation model", "(--dataset, or --all)")
    from molserve.models.foundation.embedding import MiniMolEmbedder
    from molserve.models.foundation.pipeline import FoundationOptions, train_foundation_endpoint

    device = params.device if params.device not in (None, "auto") else "auto"
    embedder = MiniMolEmbedder(embedding_store or registry.root / ".embeddings", device=device)
    heads_device = "cpu"
    if "mlp" in params.heads:  # network heads train on torch's device (a GPU when there is one)
        from molserve.models.transformer.modeling import pick_device

        heads_device = pick_device(None if device == "auto" else device)
    options = FoundationOptions(kinds=tuple(params.heads), mlp_epochs=params.mlp_epochs,
                                seed=params.seed, device=heads_device)
    artifacts = []
    for position, endpoint in enumerate(endpoints):
        def report(step: str, fraction: float, info: dict[str, Any], _p: int = position,
                   _e: str = endpoint) -> None:
            if progress is not None:
                progress(f"{_e}: {step}", (_p + fraction) / len(endpoints), info)

        artifacts.append(train_foundation_endpoint(registry, endpoint, embedder=embedder,
                                                   options=options, extra_manifest=extra_manifest,
                                                   progress=report))
    return artifacts


def registered_by(registry: Registry, endpoint: str, job_id: str) -> Artifact | None:
    """The version of `endpoint` a job registered, if it got that far (a resumed job must not
    register a second one)."""
    return next((a for a in registry.versions(endpoint) if a.info.job_id == job_id), None)


def outcome(artifact: Artifact) -> dict[str, Any]:
    """What a training reports: the model and its held-out test metrics."""
    return {"endpoint": artifact.endpoint, "version": artifact.version, "kind": artifact.kind,
            "metrics": artifact.info.test_metrics()}
