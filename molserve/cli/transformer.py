"""`molserve pretrain` (masked-language pretraining on SMILES) and `molserve finetune` (a worker-
tier model on endpoints that have fast models: a transformer through
`operations.training.finetune`, graph models through `operations.training.train_graph`, or
foundation models through `operations.training.train_foundation`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from molserve.cli.common import build, group, items, settings, transformer_progress
from molserve.errors import InvalidInput

app = group()

Device = Annotated[str | None, typer.Option(show_default=False)]


@app.command("finetune", help="train a worker-tier model on endpoints' curated data and split: "
             "a RoBERTa (--model transformer), a D-MPNN ensemble (--model graph) or heads on "
             "pretrained MiniMol embeddings (--model foundation)")
def finetune(
    ctx: typer.Context,
    dataset: Annotated[list[str] | None, typer.Option(
        metavar="ENDPOINT", show_default=False,
        help="an endpoint with a fast model (its curated data and split are reused); repeat it or "
        "give a comma-separated list: one multi-task transformer, or one graph model each")] = None,
    model: Annotated[Literal["transformer", "graph", "foundation"], typer.Option(
        help="transformer: a RoBERTa; graph: an ensemble of Chemprop D-MPNNs with RDKit "
        "descriptors; foundation: heads on MiniMol embeddings, chosen and blended with the fast "
        "tier out of fold")] = "transformer",
    all_endpoints: Annotated[bool, typer.Option(
        "--all", help="graph, foundation: every endpoint with a fast model and no such model for "
        "its current data, smallest first")] = False,
    name: Annotated[str | None, typer.Option(
        help="registry name of a multi-task model (several --dataset)", show_default=False)] = None,
    base: Annotated[str, typer.Option(
        help="transformer: hub id (downloaded when online), local directory (e.g. from "
        "`pretrain`), or random:tiny|small|chemberta-zinc-base")] = "seyonec/ChemBERTa-zinc-base-v1",
    epochs: Annotated[int | None, typer.Option(
        min=1, help="default: 30 (transformer), 50 (graph)", show_default=False)] = None,
    batch_size: Annotated[int | None, typer.Option(
        "--batch-size", min=1, help="default: 32 (transformer), 64 (graph)", show_default=False)] = None,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="transformer")] = 5e-5,
    patience: Annotated[int | None, typer.Option(
        min=1, help="default: 5 (transformer), 10 (graph)", show_default=False)] = None,
    ensemble: Annotated[int, typer.Option(help="graph: networks per endpoint")] = 5,
    heads: Annotated[list[str] | None, typer.Option(
        "--heads", metavar="KIND", show_default=False,
        help="foundation: head kinds that compete (trees, trees+fast, mlp; default all three)")] = None,
    no_onnx: Annotated[bool, typer.Option("--no-onnx", help="skip the ONNX (fp32, int8) export")] = False,
    device: Device = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> int:
    from molserve.registry import Registry

    endpoints = list(dict.fromkeys(items(dataset or [])))
    registry = Registry(settings(ctx).registry)
    sized = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size,
                               "patience": patience}.items() if v is not None}
    if model == "graph":
        return _graph(registry, endpoints, all_endpoints, ensemble=ensemble, device=device,
                      seed=seed, **sized)
    if model == "foundation":
        return _foundation(registry, endpoints, all_endpoints, heads=items(heads or []) or None,
                           device=device, seed=seed, epochs=epochs)
    if all_endpoints:
        raise InvalidInput("--all trains graph or foundation models; add --model graph or "
                           "--model foundation")
    from molserve.operations.training import TransformerParams
    from molserve.operations.training import finetune as finetune_endpoints

    params = build(TransformerParams, {"export_onnx": "--no-onnx"}, base=base,
                   learning_rate=learning_rate, export_onnx=not no_onnx, device=device, seed=seed,
                   **sized)
    bar, report = transformer_progress(name or (endpoints[0] if endpoints else "finetune"))
    try:
        artifact = finetune_endpoints(registry, endpoints, params, name=name, progress=report)
    finally:
        bar.close()
    from molserve.models.transformer.pipeline import describe

    print(describe(artifact))
    print(f"registered {artifact.endpoint} v{artifact.version} (transformer) at {artifact.path}")
    return 0


def _graph(registry, endpoints: list[str], all_endpoints: bool, **values) -> int:
    from molserve.operations.training import GraphParams, graph_candidates, train_graph

    if all_endpoints and endpoints:
        raise InvalidInput("give --dataset or --all, not both")
    params = build(GraphParams, {}, **values)
    if all_endpoints:
        endpoints = graph_candidates(registry)
        if not endpoints:
            print(f"every endpoint with a fast model in {registry.root} has its graph model",
                  file=sys.stderr)
            return 0
        print(f"training graph models for {len(endpoints)} endpoint(s), smallest first",
              file=sys.stderr)
    bar, report = transformer_progress("graph")
    try:
        artifacts = train_graph(registry, endpoints, params, progress=report)
    finally:
        bar.close()
    from molserve.models.graph.pipeline import describe

    for artifact in artifacts:
        print(describe(artifact))
        print(f"registered {artifact.endpoint} v{artifact.version} (graph) at {artifact.path}")
    return 0


def _foundation(registry, endpoints: list[str], all_endpoints: bool, *, heads: list[str] | None,
                device: str | None, seed: int, epochs: int | None) -> int:
    from molserve.operations.training import FoundationParams, train_foundation, worker_candidates

    if all_endpoints and endpoints:
        raise InvalidInput("give --dataset or --all, not both")
    values = {"device": device, "seed": seed}
    if heads:
        values["heads"] = heads
    if epochs is not None:
        values["mlp_epochs"] = epochs
    params = build(FoundationParams, {"heads": "--heads", "mlp_epochs": "--epochs"}, **values)
    if all_endpoints:
        endpoints = worker_candidates(registry, "foundation")
        if not endpoints:
            print(f"every endpoint with a fast model in {registry.root} has its foundation model",
                  file=sys.stderr)
            return 0
        print(f"training foundation models for {len(endpoints)} endpoint(s), smallest first",
              file=sys.stderr)
    bar, report = transformer_progress("foundation")
    try:
        artifacts = train_foundation(registry, endpoints, params, progress=report)
    finally:
        bar.close()
    from molserve.models.foundation.pipeline import LEAKAGE_CAVEAT, describe

    for artifact in artifacts:
        print(describe(artifact))
        print(f"registered {artifact.endpoint} v{artifact.version} (foundation) at {artifact.path}")
    print(f"note: {LEAKAGE_CAVEAT}", file=sys.stderr)
    return 0


@app.command("pretrain", help="masked-language pretraining of a RoBERTa on SMILES")
def pretrain(
    corpus: Annotated[str, typer.Option(help="SMILES file (.smi/.txt/.csv[.gz]) or 'moses'",
                                        show_default=False)],
    output: Annotated[Path, typer.Option(show_default=False)],
    size: Annotated[Literal["tiny", "small", "chemberta-zinc-base"], typer.Option()] = "small",
    base: Annotated[str | None, typer.Option(
        help="continue from this model (an earlier --output, or a hub id) with its tokenizer, "
        "instead of starting from scratch", show_default=False)] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 1,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, show_default=False)] = None,
    limit: Annotated[int | None, typer.Option(
        min=1, help="use at most this many molecules (random sample)", show_default=False)] = None,
    max_minutes: Annotated[float | None, typer.Option(
        "--max-minutes", min=0, help="stop after this much training time", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=0)] = 5e-4,
    device: Device = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> int:
    from molserve.models.transformer.corpus import read_corpus

    # The corpus is read before the trainer (torch) is imported: a wrong path fails at once.
    smiles = read_corpus(corpus, limit=limit, seed=seed)
    from molserve.models.transformer.modeling import pretrain as run_pretraining

    bar, report = transformer_progress("pretraining")
    try:
        summary = run_pretraining(
            smiles, output, size=size, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
            learning_rate=learning_rate, device=device, seed=seed,
            max_seconds=max_minutes * 60 if max_minutes else None, base=base, progress=report)
    finally:
        bar.close()
    print(json.dumps(summary, indent=2))
    print(f"pretrained model written to {output}; fine-tune with --base {output}")
    return 0
