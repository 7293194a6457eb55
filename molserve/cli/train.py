"""`molserve train` (a fast model on a file or a stored dataset) and `molserve bootstrap` (the
bundled endpoints a registry lacks). Training itself is `molserve.operations.training` and
`molserve.operations.bootstrap`; this module reads options and prints what was trained.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from molserve.cli.common import build, group, items, progress_bar, settings
from molserve.errors import InvalidInput

app = group()

Task = Literal["regression", "classification"]
Split = Literal["scaffold", "random", "time"]
Profile = Literal["standard", "quick"]


@app.command("train", help="train a fast model on a CSV/TSV/SDF file or a stored dataset")
def train(
    ctx: typer.Context,
    data: Annotated[Path | None, typer.Argument(help="CSV/TSV/SDF file (or use --dataset)",
                                                show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(help="a stored dataset (molserve data list)")] = None,
    endpoint: Annotated[str | None, typer.Option(
        help="endpoint name (default for --dataset: its suggestion)")] = None,
    smiles_col: Annotated[str, typer.Option("--smiles-col")] = "smiles",
    label_col: Annotated[list[str] | None, typer.Option(
        "--label-col", metavar="COLUMN", help="label column; repeat it (or comma-separate) to train "
        "one endpoint per column, each named after its column")] = None,
    task: Annotated[Task, typer.Option(help="applies to every --label-col")] = "regression",
    units: Annotated[str, typer.Option()] = "",
    description: Annotated[str | None, typer.Option()] = None,
    positive_label: Annotated[str | None, typer.Option(
        "--positive-label", help="classification: the label text that means positive")] = None,
    split: Annotated[Split, typer.Option()] = "scaffold",
    profile: Annotated[Profile, typer.Option()] = "standard",
    seed: Annotated[int, typer.Option()] = 0,
    base: Annotated[list[str] | None, typer.Option(
        "--base", metavar="ENDPOINTS", help="learn on top of these endpoints' fast models (repeat or "
        "comma-separate; `auto`: every bundled endpoint of the same task type, kept where it helps): "
        "local only, the bases recalibrated, and their stack compete out of fold")] = None,
    learning_curve: Annotated[bool, typer.Option(
        "--learning-curve", help="also report the three out-of-fold scores at 50, 100, 300 and "
        "1,000 rows (where the data has them): would more measurements help?")] = False,
) -> int:
    from molserve.operations.training import FastParams, table_jobs, train_fast, train_stored
    from molserve.registry import Registry

    config = settings(ctx)
    params = build(FastParams, {}, split=split, profile=profile, seed=seed, base=items(base))
    registry = Registry(config.registry)
    if learning_curve and (dataset or len(items(label_col)) != 1):
        raise InvalidInput("--learning-curve works on one label column of a file")
    if dataset:
        bar, update = progress_bar(desc=endpoint or dataset)
        artifacts = [train_stored(registry, config.datasets, dataset, params, endpoint=endpoint,
                                  progress=update)]
        bar.close()
        report(artifacts[0])
    else:
        if data is None:
            raise InvalidInput("give a data file with --endpoint and --label-col (or several "
                               "--label-col, one endpoint each), or --dataset NAME")
        jobs = table_jobs(data, label_cols=items(label_col), endpoint=endpoint, split=split,
                          smiles_col=smiles_col, task=task, units=units,
                          description=description or "", positive_label=positive_label)
        artifacts = []
        for name, loaded in jobs:
            bar, update = progress_bar(desc=name)
            artifacts.append(train_fast(registry, loaded, name, params, progress=update))
            bar.close()
            report(artifacts[-1])
            if learning_curve:
                from molserve.operations.training import learning_curve as curve

                bar, update = progress_bar(desc=f"{name}: learning curve")
                rows = curve(registry, loaded, name, params, progress=update)
                bar.close()
                print_learning_curve(rows)
    if len(artifacts) > 1:
        names = ",".join(a.endpoint for a in artifacts)
        print(f"one multi-task transformer over these: molserve finetune --dataset {names} --name NAME")
    return 0


def _figure(metrics: dict | None) -> str:
    """An out-of-fold figure as a team reads it: RMSE and Spearman, or ROC AUC."""
    if not metrics:
        return "-"
    if "roc_auc" in metrics:
        return f"AUC {metrics['roc_auc']:.3f}"
    return f"RMSE {metrics['rmse']:.3f} rho {metrics['spearman']:.2f}"


def print_learning_curve(rows: list[dict]) -> None:
    print("learning curve (out of fold over scaffold folds of each subset):")
    for row in rows:
        if "error" in row:
            print(f"{row['rows']:>6} rows: {row['error']}")
            continue
        cells = "; ".join(f"{k} {_figure(row['out_of_fold'].get(k))}" for k in ("local", "base", "stack"))
        print(f"{row['rows']:>6} rows: {cells}; answers: {row['chosen']} "
              f"(bases: {', '.join(row['bases']) or 'none'})")


def report(artifact) -> None:
    """The trained model's scores, its curation and out-of-fold metrics, and where it lives."""
    from molserve.models.gbm_train import summarize

    info = artifact.info
    print(summarize(artifact))
    section = artifact.manifest.get("on_base")
    if section:
        cells = "; ".join(f"{name} {_figure(metrics)}" for name, metrics in section["out_of_fold"].items())
        bases = ", ".join(f"{b['endpoint']} v{b['version']}" for b in section["bases"]) or "none kept"
        print(f"on bases ({bases}), out of fold: {cells}; answers: {section['chosen']} "
              f"(chosen by {section['metric']})")
    print(json.dumps({"curation": getattr(info, "curation", None),
                      "out_of_fold": info.metrics.out_of_fold}, indent=2))
    print(f"registered {artifact.endpoint} v{artifact.version} at {artifact.path}")


@app.command("bootstrap", help="train the bundled endpoints missing from the registry")
def bootstrap(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="train a new version even if one exists")] = False,
    only: Annotated[list[str] | None, typer.Option(
        "--only", metavar="ENDPOINTS", help="these endpoints only (comma-separated)")] = None,
    profile: Annotated[Profile, typer.Option()] = "standard",
    tdc_source: Annotated[Literal["bundled", "dataverse"], typer.Option(
        "--tdc-source", help="TDC data: the copies inside molserve, or TDC's files from Harvard "
        "Dataverse (downloaded, checksum verified, cached)")] = "bundled",
    workers: Annotated[int | None, typer.Option(
        min=1, help="endpoints trained at once (default: one per core)", show_default=False)] = None,
    protocol: Annotated[Literal["production", "tdc"], typer.Option(
        help="production: learn from every labelled row (TDC's train_val and test), figures out of "
        "fold; tdc: TDC's protocol, train_val only, scored on TDC's fixed test set")] = "production",
    foundation: Annotated[bool, typer.Option(
        "--foundation", help="then train the foundation tier's heads (MiniMol embeddings) for "
        "every bundled endpoint with a fast model and none")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> int:
    """Train the bundled endpoints that the registry does not have yet (all with --force)."""
    from molserve.operations.bootstrap import bootstrap as train_bundled
    from molserve.operations.bootstrap import bundled_endpoints, foundation_candidates, missing
    from molserve.registry import Registry

    registry = Registry(settings(ctx).registry)
    wanted = items(only) or None
    if wanted:
        unknown = sorted(set(wanted) - set(bundled_endpoints()))
        if unknown:
            raise InvalidInput(f"not bundled endpoints: {', '.join(unknown)}")
    names = ([n for n in bundled_endpoints() if wanted is None or n in wanted] if force
             else missing(registry, wanted))
    if not names and not (foundation and foundation_candidates(registry, wanted)):
        print(f"registry {registry.root} already has every bundled endpoint", file=sys.stderr)
        return 0
    print(f"training {len(names)} bundled endpoint(s) into {registry.root}, smallest first",
          file=sys.stderr)
    bar = report_progress = None
    if not quiet:
        bar, update = progress_bar(desc="bootstrap")
        fractions: dict[str, float] = dict.fromkeys(names, 0.0)

        def report_progress(name: str, step: str, fraction: float) -> None:
            fractions[name] = fraction
            update(f"{name}: {step}", sum(fractions.values()) / max(1, len(fractions)))

    outcome = train_bundled(registry, names, profile=profile, tdc_source=tdc_source, workers=workers,
                            report=report_progress, protocol=protocol, foundation=foundation)
    if bar is not None:
        bar.close()
    for name, result in outcome.items():
        print(result.get("summary") or f"{name}: failed: {result['error']}", file=sys.stderr)
    return 1 if any("error" in r for r in outcome.values()) else 0
