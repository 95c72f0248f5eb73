"""API keys for the HTTP server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List

import typer
from rich.table import Table

from ...security.keys import KeyRing
from ...storage import StoreError
from .common import app, guarded, out, state

keys_app = typer.Typer(help="API keys for the HTTP server: create, list, revoke (scopes: read < judge < write < admin).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _key_ring() -> KeyRing:
    settings = state.settings()
    directory = Path(settings.store).expanduser()
    if directory.exists() and not directory.is_dir():
        raise StoreError(f"the store {directory} is a file, not a store directory")
    return KeyRing(directory)


@keys_app.command("create")
def keys_create(
    scope: str = typer.Option("read", help="read (search and view), judge (also vote in judging rounds), write (add, change, "
                                           "delete products and ingest), or admin (also prune, re-index, run reports, admin pages)."),
    name: str = typer.Option(..., "--name", "-n", help="Who or what uses the key (shown in keys list)."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Create an API key; it is printed once and stored only as a hash."""

    def body() -> None:
        key, token = _key_ring().create(name, scope)
        if as_json:
            out.print_json(json.dumps({**key.to_dict(), "key": token}))
        else:
            out.print(f"created key {key.key_id} ({key.scope}) for {key.name}. Keep it now; it cannot be shown again:", highlight=False)
            out.print(token, highlight=False, markup=False)

    guarded(body)


@keys_app.command("list")
def keys_list(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List API keys (ids, names, scopes; never the keys themselves)."""

    def body() -> None:
        keys = [k.to_dict() for k in _key_ring().list()]
        if as_json:
            out.print_json(json.dumps(keys))
            return
        table = Table("id", "name", "scope", "created", "revoked")
        for k in keys:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(k["created_at"])))  # type: ignore[arg-type]
            table.add_row(str(k["key_id"]), str(k["name"]), str(k["scope"]), created, "yes" if k["revoked"] else "")
        out.print(table if keys else "no API keys")

    guarded(body)


@keys_app.command("revoke")
def keys_revoke(key_ids: List[str] = typer.Argument(..., help="Key id(s) from keys list.")) -> None:
    """Revoke keys; a running server refuses them from the next request on."""

    def body() -> None:
        ring = _key_ring()
        for key_id in key_ids:
            ring.revoke(key_id)
            out.print(f"revoked {key_id}", highlight=False)

    guarded(body)


