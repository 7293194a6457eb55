"""`molserve predict`: a file screened offline from the registry (`operations.screen`), with a
progress bar on stderr and the run's summary as one JSON line on stderr."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from molserve.cli.common import group, items, settings

app = group()


@app.command("predict", help="predict a CSV/SMI/SDF file offline from the registry")
def predict(
    ctx: typer.Context,
    input: Annotated[Path, typer.Argument(show_default=False)],  # noqa: A002 (the option's name)
    output: Annotated[Path, typer.Option("-o", "--output", show_default=False)],
    endpoints: Annotated[str | None, typer.Option(
        help="comma-separated; default: every predicted endpoint")] = None,
    smiles_col: Annotated[str | None, typer.Option(
        "--smiles-col", help="default: a column named smiles (any case)")] = None,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1)] = 1000,
    jobs: Annotated[int, typer.Option(min=1, help="worker processes (default: one per core)",
                                      show_default=False)] = os.cpu_count() or 1,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> int:
    from molserve.operations.screen import screen_file

    shown: dict[str, Any] = {}

    def start(total: int | None, names: list[str]) -> None:
        shown["total"] = total

    def chunk(checkpoint: Any, total: int | None) -> None:
        # The bar appears with the first chunk written, once the input proved readable: an
        # error found on reading it (a missing column) is printed alone.
        if quiet:
            return
        if "bar" not in shown:
            from tqdm import tqdm

            tqdm.monitor_interval = 0  # no monitor thread: worker processes are forked
            shown["bar"] = tqdm(total=shown.get("total"), unit="mol", file=sys.stderr, desc="predicting")
        shown["bar"].update(checkpoint.rows_done - shown["bar"].n)

    try:
        summary = screen_file(
            input, output, registry=settings(ctx).registry,
            endpoints=items([endpoints.replace(" ", ",")] if endpoints else None) or None,
            smiles_col=smiles_col, chunk_size=chunk_size, processes=jobs, on_start=start,
            on_chunk=chunk)
    except BaseException:
        if "bar" in shown:
            shown["bar"].leave = False  # the error line replaces it
            shown["bar"].close()
        raise
    if "bar" in shown:
        shown["bar"].close()
    print(json.dumps(summary.to_json()), file=sys.stderr)
    return 0
