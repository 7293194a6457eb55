"""`molserve db upgrade`: apply the PostgreSQL store's migrations (a fleet's shared database)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from molserve.cli.common import group, settings
from molserve.errors import InvalidInput

app = group()


@app.command("upgrade", help="apply the job store's migrations to the PostgreSQL database "
             "(MOLSERVE_DATABASE_URL); --check only says which are missing")
def upgrade(
    ctx: typer.Context,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="default: $MOLSERVE_DATABASE_URL", show_default=False)] = None,
    check: Annotated[bool, typer.Option("--check", help="change nothing; exit 1 if any is missing")] = False,
) -> int:
    from molserve.database import migration_state
    from molserve.database import upgrade as apply

    url = database_url or settings(ctx).fleet.database_url
    if not url or not url.startswith(("postgresql://", "postgres://")):
        raise InvalidInput("name a PostgreSQL database: --database-url postgresql://... or "
                           "MOLSERVE_DATABASE_URL (SQLite stores upgrade themselves when opened)")
    if check:
        state = migration_state(url)
        print(json.dumps(state))
        return 1 if state["missing"] else 0
    applied = apply(url)
    print(json.dumps({**migration_state(url), "applied_now": applied}))
    return 0
