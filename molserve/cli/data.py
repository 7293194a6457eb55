"""`molserve data ...`: curated datasets (ChEMBL targets, a user's files, TDC's catalogue and
files, the store's contents). The work is `molserve.operations.datasets`; this module prints
each dataset's summary as JSON on stdout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer

from molserve.cli.common import group, settings

app = group()
tdc_app = group()
app.add_typer(tdc_app, name="tdc", help="the bundled TDC ADMET datasets; fetch TDC's own files")


def summary(artifact) -> None:
    m = artifact.manifest
    print(json.dumps({"dataset": artifact.endpoint, "version": artifact.version, "rows": m["rows"],
                      "curation": m["curation"], "splits": m["splits"]}, indent=2))


@app.command("chembl", help="fetch and curate a target's activities from ChEMBL")
def chembl(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(
        help="EGFR, BRAF, CDK2, PARP1, VEGFR2, BCL2, or a CHEMBL id", show_default=False)],
    standard_type: Annotated[str, typer.Option("--type", help="standard_type (IC50, Ki, ...)")] = "IC50",
    tautomer: Annotated[bool, typer.Option("--tautomer", help="canonicalize tautomers too")] = False,
    base_url: Annotated[str, typer.Option("--base-url")] = "https://www.ebi.ac.uk",
    public: Annotated[bool, typer.Option(
        "--public", help="any key may screen and train on it over HTTP (default: admin keys only)")] = False,
) -> int:
    from molserve.operations.datasets import fetch_chembl

    summary(fetch_chembl(settings(ctx).datasets, target, standard_type=standard_type,
                         base_url=base_url, canonical_tautomer=tautomer, public=public))
    return 0


@app.command("import", help="curate a CSV/TSV/SDF into a stored dataset")
def import_file(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(show_default=False)],
    name: Annotated[str, typer.Option(show_default=False)],
    label_col: Annotated[str, typer.Option("--label-col", show_default=False)],
    smiles_col: Annotated[str, typer.Option("--smiles-col")] = "smiles",
    task: Annotated[Literal["regression", "classification"], typer.Option()] = "regression",
    units: Annotated[str, typer.Option()] = "",
    description: Annotated[str | None, typer.Option()] = None,
    positive_label: Annotated[str | None, typer.Option("--positive-label")] = None,
    licence: Annotated[str, typer.Option()] = "user-supplied",
    ic50_nm: Annotated[bool, typer.Option("--ic50-nm", help="labels are IC50 in nM: store pIC50")] = False,
    tautomer: Annotated[bool, typer.Option("--tautomer")] = False,
    public: Annotated[bool, typer.Option(
        "--public", help="any key may screen and train on it over HTTP (default: admin keys only)")] = False,
) -> int:
    import sys

    from molserve.operations.datasets import import_table

    artifact = import_table(settings(ctx).datasets, file, name=name, label_col=label_col,
                            smiles_col=smiles_col, task=task, units=units, description=description,
                            positive_label=positive_label, licence=licence, ic50_nm=ic50_nm,
                            canonical_tautomer=tautomer, public=public)
    dropped = artifact.manifest["curation"].get("ic50_non_positive_dropped")
    if dropped:
        print(f"dropped {dropped} row(s) whose IC50 was zero or negative (no pIC50)", file=sys.stderr)
    summary(artifact)
    return 0


@tdc_app.command("list", help="the 40 TDC datasets molserve serves as endpoints")
def tdc_list() -> int:
    from molserve.operations.datasets import tdc_catalogue

    for entry in tdc_catalogue():
        where = f"benchmark, {entry.metric}" if entry.benchmark else "single"
        print(f"{entry.endpoint:<28} {entry.tdc_name:<32} {entry.task:<15} {entry.rows:>6}"
              f"  {entry.units:<22} {where}")
    return 0


@tdc_app.command("fetch", help="download TDC's files from Harvard Dataverse, verify and cache them")
def tdc_fetch(
    cache: Annotated[Path | None, typer.Option(
        help="cache directory (default ~/.cache/molserve/tdc)", show_default=False)] = None,
) -> int:
    from molserve.operations.datasets import fetch_tdc

    fetch_tdc(cache, on_file=lambda source, path: print(f"{source.name:<28} verified  {path}"))
    return 0


@app.command("list", help="stored datasets")
def list_datasets(ctx: typer.Context) -> int:
    from molserve.data.store import DatasetStore

    store = DatasetStore(settings(ctx).datasets)
    artifacts = store.list()
    if not artifacts:
        print(f"no datasets in {store.root}")
    for a in artifacts:
        m = a.manifest
        print(f"{a.endpoint:<32} v{a.version:<3} {m['rows']:>7} rows  {m['task']:<14} "
              f"{m['units']:<10} {m['licence']}")
    return 0


@app.command("show", help="one dataset's manifest")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(show_default=False)]) -> int:
    from molserve.data.store import DatasetStore

    print(json.dumps(dict(DatasetStore(settings(ctx).datasets).get(name).manifest), indent=2))
    return 0
