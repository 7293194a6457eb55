"""`molserve predict`: a file or a library screened offline from the registry, with a progress
bar on stderr and the run's summary as one JSON line on stderr.

`-o hits.csv` (or `-o out.sdf` for SDF input) writes one file in input order; `-o results/`
writes a shard folder (Parquet or CSV shards and their manifest). `--engine` chooses where the
shards are scored: this machine's processes, a Ray cluster (`--address`) or Modal; a killed
screen started again with the same output resumes by shard (`operations.sharded`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from molserve.cli.common import group, items, settings
from molserve.errors import InvalidInput

app = group()

Engine = Literal["local", "ray", "modal"]
Format = Literal["parquet", "csv"]


def _is_folder(output: str) -> bool:
    return output.endswith(("/", os.sep)) or os.path.isdir(output) or not Path(output).suffix


def _engine(name: str, address: str | None, jobs: int | None, modal_app: str | None):
    if name == "ray":
        from molserve.deploy.ray_screen import RayScreenEngine

        return RayScreenEngine(address, actors=jobs)  # None: one actor per CPU of the cluster
    if address:
        raise InvalidInput("--address names a Ray cluster: use it with --engine ray",
                           code="address_without_ray")
    if name == "modal":
        from molserve.deploy.modal_screen import APP_NAME, ModalScreenEngine

        return ModalScreenEngine(modal_app or APP_NAME)
    from molserve.operations.sharded import LocalEngine

    return LocalEngine(jobs or os.cpu_count() or 1)


@app.command("predict", help="predict a CSV/SMI/SDF file or a library (directory, glob, URL) offline "
             "from the registry")
def predict(
    ctx: typer.Context,
    input: Annotated[str, typer.Argument(  # noqa: A002 (the option's name)
        show_default=False, help="a file, a directory or glob of files, or an fsspec URL")],
    output: Annotated[str, typer.Option("-o", "--output", show_default=False,
                                        help="a .csv or .sdf file, or a folder (ends with /) for shards")],
    endpoints: Annotated[str | None, typer.Option(
        help="comma-separated; default: every predicted endpoint")] = None,
    smiles_col: Annotated[str | None, typer.Option(
        "--smiles-col", help="default: a column named smiles (any case)")] = None,
    id_col: Annotated[str | None, typer.Option(
        "--id-col", help="keep this identifier in the output: a CSV column, an SDF property (or "
        "_Name, the title line); for a SMILES file, its second field")] = None,
    engine: Annotated[Engine, typer.Option(help="where shards are scored")] = "local",
    address: Annotated[str | None, typer.Option(help="the Ray cluster (host:port or ray://...)")] = None,
    modal_app: Annotated[str | None, typer.Option("--modal-app", help="the deployed screen app "
                                                  "(default molserve-screen)")] = None,
    where: Annotated[str | None, typer.Option(
        help="keep only hits, e.g. \"herg_inhibition < 0.5 and solubility > -5\"")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, help="keep the k best rows of "
                                              "each ranked endpoint")] = None,
    rank_by: Annotated[str | None, typer.Option(
        "--rank-by", help="endpoints to rank for --top-k, '-' for lowest first "
        "(default: each predicted regression endpoint, highest first)")] = None,
    output_format: Annotated[Format, typer.Option(
        "--format", help="shard files (a folder output)")] = "parquet",
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="molecules a shard")] = 100_000,
    chunk_size: Annotated[int, typer.Option("--chunk-size", min=1)] = 1000,
    jobs: Annotated[int | None, typer.Option(
        min=1, help="worker processes (local; default one per core) or actors (ray; default one per "
        "CPU of the cluster)", show_default=False)] = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="write each predicted endpoint's per-atom contributions (JSON) in "
        "<endpoint>_explanation (one CSV file, local engine)")] = False,
    reference: Annotated[str | None, typer.Option(
        help="write each numeric endpoint's percentile within this reference set in "
        "<endpoint>_percentile (molserve reference list; one CSV file, local engine)")] = None,
    confidence: Annotated[float | None, typer.Option(
        help="level of the <endpoint>_lower/_upper intervals: 0.8, 0.9 or 0.95 (default 0.9)",
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet")] = False,
) -> int:
    registry = settings(ctx).registry
    if confidence is not None and confidence not in (0.8, 0.9, 0.95):
        raise InvalidInput(f"--confidence {confidence}: intervals are calibrated at 0.8, 0.9 and 0.95",
                           code="invalid_confidence")
    names = items([endpoints.replace(" ", ",")] if endpoints else None) or None
    folder = _is_folder(output)
    sdf = Path(output).suffix.lower() in {".sdf", ".sd"}
    if not folder and not sdf and Path(output).suffix.lower() not in {".csv", ".tsv", ".txt"}:
        raise InvalidInput(f"-o {output}: write a .csv or .sdf file, or a folder (ending in /) for "
                           "shards", code="invalid_output")
    simple = (engine == "local" and not folder and not sdf and where is None and top_k is None
              and os.path.isfile(input))
    if (explain or reference or confidence not in (None, 0.9)) and not simple:
        option = "--explain" if explain else "--reference" if reference else "--confidence"
        raise InvalidInput(f"{option} writes one CSV file from one input file on the local engine "
                           "(no --where, --top-k, folder or SDF output)", code="explain_not_sharded")
    if simple:
        return _predict_file(Path(input), Path(output), registry=registry, endpoints=names,
                             smiles_col=smiles_col, id_col=id_col, chunk_size=chunk_size,
                             jobs=jobs or os.cpu_count() or 1, quiet=quiet, explain=explain,
                             reference=reference, confidence=confidence)
    from molserve.operations.sharded import screen_library, screen_to_file

    runner = _engine(engine, address, jobs, modal_app)
    bar = _ShardBar(quiet)
    options: dict[str, Any] = {"endpoints": names, "smiles_col": smiles_col, "id_col": id_col,
                               "where": where, "top_k": top_k, "rank_by": rank_by,
                               "chunk_size": chunk_size, "shard_size": shard_size,
                               "on_progress": bar.update}
    try:
        if folder:
            summary = screen_library(input, Path(output), registry=registry, engine=runner,
                                     output_format=output_format, **options)
        else:
            summary = screen_to_file(input, Path(output), registry=registry, engine=runner, **options)
    except BaseException:
        bar.close(error=True)
        raise
    bar.close()
    print(json.dumps(summary.to_json()), file=sys.stderr)
    return 0


class _ShardBar:
    """Molecules done (with rate and ETA) and shards done, on stderr, from the first shard."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def update(self, progress: Any) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            tqdm.monitor_interval = 0
            self.bar = tqdm(total=progress.molecules_total, unit="mol", file=sys.stderr, desc="screening")
        self.bar.set_postfix_str(f"shards {progress.shards_done}/{progress.shards_total}, "
                                 f"hits {progress.hits}", refresh=False)
        self.bar.update(progress.molecules_done - self.bar.n)

    def close(self, error: bool = False) -> None:
        if self.bar is not None:
            if error:
                self.bar.leave = False
            self.bar.close()


def _predict_file(input: Path, output: Path, *, registry: Path, endpoints: list[str] | None,  # noqa: A002
                  smiles_col: str | None, id_col: str | None, chunk_size: int, jobs: int,
                  quiet: bool, explain: bool = False, reference: str | None = None,
                  confidence: float | None = None) -> int:
    """One file into one CSV on this machine: chunks through `jobs` processes, in order."""
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
            input, output, registry=registry, endpoints=endpoints, smiles_col=smiles_col,
            id_col=id_col, explain=explain, reference=reference, confidence=confidence,
            chunk_size=chunk_size, processes=jobs, on_start=start, on_chunk=chunk)
    except BaseException:
        if "bar" in shown:
            shown["bar"].leave = False  # the error line replaces it
            shown["bar"].close()
        raise
    if "bar" in shown:
        shown["bar"].close()
    print(json.dumps(summary.to_json()), file=sys.stderr)
    return 0
