"""The `molserve` command: wires the library's pieces to the command line, nothing more.

This module owns the root command (the global --registry and --datasets options, which build the
Settings every verb reads from the Typer context), the list of verb groups, and `main`, the
console script. Each verb lives in the module of its group; they import heavy libraries inside
their handlers, so `molserve --help` and `molserve serve` never load the trainer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from molserve.cli import data, db, deploy, jobs, keys, models, predict, reference, serve, train, transformer
from molserve.cli.common import MolserveGroup, group

app = group(name="molserve", cls=MolserveGroup,
            help="The `molserve` command: wires the library's pieces to the command line, nothing more.")


@app.callback()
def root(
    ctx: typer.Context,
    registry: Annotated[Path | None, typer.Option(
        help="registry directory (default: $MOLSERVE_REGISTRY or ./registry)",
        show_default=False)] = None,
    datasets: Annotated[Path | None, typer.Option(
        help="dataset store (default: $MOLSERVE_DATASETS or ./datasets)", show_default=False)] = None,
) -> None:
    from molserve.config import Settings

    overrides = {name: value for name, value in (("registry", registry), ("datasets", datasets))
                 if value is not None}
    ctx.obj = Settings(**overrides)
    # `molserve worker` reads its own settings and takes --registry only when it is given.
    ctx.meta["molserve.registry"] = registry


for module in (serve, train, predict, transformer):
    app.add_typer(module.app)
app.add_typer(data.app, name="data", help="curated datasets: ChEMBL targets, your files")
app.add_typer(db.app, name="db", help="the shared PostgreSQL database of a fleet of gateways")
app.add_typer(jobs.app, name="jobs", help="training jobs and screens through a running gateway")
app.add_typer(deploy.app)
app.add_typer(keys.app, name="keys", help="scoped API keys (stored hashed)")
app.add_typer(models.app, name="models", help="registered models")
app.add_typer(reference.app, name="reference", help="reference sets for percentiles: add, list, remove")


def main(argv: list[str] | None = None) -> int:
    """Run the command line on `argv` (default: the process's arguments); the exit code."""
    command = typer.main.get_command(app)
    return command.main(args=argv, prog_name="molserve", standalone_mode=False)
