"""`molserve keys ...`: scoped API keys in the gateway's keys file, or in a fleet's database
(MOLSERVE_DATABASE_URL); only their hashes are kept."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from molserve.cli.common import group, items, settings
from molserve.errors import InvalidInput

app = group()
_FILE = "molserve.keys.file"


@app.callback()
def keys_file(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option(
        help="keys file (default: $MOLSERVE_API_KEYS_FILE)", show_default=False)] = None,
) -> None:
    ctx.meta[_FILE] = file


def store(ctx: typer.Context):
    from molserve.gateway.keys import KeyStore

    database_url = settings(ctx).fleet.database_url
    if database_url and not ctx.meta.get(_FILE):  # a fleet's keys live in its database
        return KeyStore(None, database_url=database_url)
    path = ctx.meta.get(_FILE) or settings(ctx).gateway.api_keys_file
    if path is None:
        raise InvalidInput("name the keys file with --file or MOLSERVE_API_KEYS_FILE (or a fleet's "
                           "database with MOLSERVE_DATABASE_URL)")
    if path.exists() and not path.is_file():
        raise InvalidInput(f"the keys file {path} is a directory; name a file")
    try:
        return KeyStore(path)
    except (ValueError, TypeError) as error:  # not JSON, or not a keys file
        raise InvalidInput(f"{path} is not a molserve keys file ({error})") from None


@app.command("create", help="a new key, printed once on stdout")
def create(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(show_default=False)],
    scopes: Annotated[str, typer.Option(help="comma-separated: read,predict,train,admin")] = "read,predict",
    rate: Annotated[int, typer.Option(min=1, help="requests per minute")] = 600,
) -> int:
    key, record = store(ctx).create(name, items([scopes]), rate)
    print(f"created key {record.id} ({record.name}) with scopes {record.scopes}; "
          f"{record.rate_per_minute} requests/minute", file=sys.stderr)
    print("store it now: it is shown once and only its hash is kept", file=sys.stderr)
    print(key)
    return 0


@app.command("list", help="the keys (ids, names, scopes; never the keys)")
def list_keys(ctx: typer.Context) -> int:
    for record in store(ctx).records.values():
        print(f"{record.id}  {record.name:<24} {','.join(record.scopes):<24} "
              f"{record.rate_per_minute:>6}/min  created {record.created}")
    return 0


@app.command("revoke", help="delete a key by its id")
def revoke(ctx: typer.Context,
           key_id: Annotated[str, typer.Argument(metavar="ID", show_default=False)]) -> int:
    store(ctx).revoke(key_id)
    print(f"revoked {key_id}")
    return 0
