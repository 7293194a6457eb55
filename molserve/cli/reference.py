"""`molserve reference ...`: reference sets for percentiles (`add` a file of SMILES, `list`,
`remove`). The sets and their values live under the registry root
(`molserve.prediction.reference`); this module reads the file, calls it and prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from molserve.cli.common import group, settings

app = group()


def _reference_sets(ctx: typer.Context, *, load: bool):
    from molserve.prediction.reference import ReferenceSets
    from molserve.prediction.router import Router
    from molserve.registry import Registry

    router = Router(Registry(settings(ctx).registry))
    if load:
        router.load()
    return ReferenceSets(router.registry, router)


@app.command("add", help="add a reference set from a SMILES file (.smi/.txt/.csv/.tsv/.sdf) and "
                         "predict it with every served endpoint")
def add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(show_default=False)],
    name: Annotated[str, typer.Option(help="the set's name (lowercase, digits, _ or -)",
                                      show_default=False)],
    description: Annotated[str, typer.Option(help="what the molecules are")] = "",
    smiles_col: Annotated[str | None, typer.Option(
        "--smiles-col", help="CSV/TSV: default a column named smiles (any case)")] = None,
    licence: Annotated[str, typer.Option()] = "user-supplied",
    citation: Annotated[str, typer.Option()] = "",
    replace: Annotated[bool, typer.Option("--replace", help="replace a set of the same name")] = False,
    compute: Annotated[bool, typer.Option(
        "--compute/--no-compute", help="predict the set now (else on first use)")] = True,
) -> int:
    from molserve.errors import NotFound
    from molserve.operations.screen import iter_smiles

    if not file.is_file():
        raise NotFound(f"no file {file}")
    references = _reference_sets(ctx, load=compute)
    info = references.add(name, iter_smiles(file, smiles_col), description=description,
                          source=file.name, licence=licence, citation=citation, replace=replace,
                          compute=compute)
    skipped = f", {info['invalid']} invalid skipped" if info["invalid"] else ""
    merged = f", {info['duplicates']} duplicates merged" if info["duplicates"] else ""
    print(f"added reference set {name}: {info['molecules']} molecules from {info['records']} "
          f"records{skipped}{merged}")
    for example in info["invalid_examples"]:
        print(f"  skipped {example}")
    if compute:
        print(f"  values stored for {len(info.get('computed', []))} endpoints")
    return 0


@app.command("list", help="list reference sets with their sizes and model versions")
def list_sets(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> int:
    sets = _reference_sets(ctx, load=True).list_sets()
    if as_json:
        print(json.dumps(sets, indent=2))
        return 0
    print(f"{'name':<24} {'molecules':>9} {'invalid':>7} {'values':>6} {'stale':>5}  description")
    for entry in sets:
        stale = sum(1 for v in entry["values"] if not v["current"])
        marker = " (default)" if entry["default"] else ""
        print(f"{entry['name']:<24} {entry['molecules']:>9} {entry['invalid'] or 0:>7} "
              f"{len(entry['values']):>6} {stale:>5}  {entry['description'][:60]}{marker}")
    return 0


@app.command("remove", help="remove a reference set and its stored values")
def remove(ctx: typer.Context,
           name: Annotated[str, typer.Argument(show_default=False)]) -> int:
    _reference_sets(ctx, load=False).remove(name)
    print(f"removed reference set {name}")
    return 0
