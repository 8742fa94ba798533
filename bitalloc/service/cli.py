"""``bitalloc serve``, ``bitalloc worker`` and ``bitalloc token``: thin commands over the service."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url", help="sqlite:///PATH or postgresql://... (default $BITALLOC_DATABASE_URL)"
    ),
]

token_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Create, list and revoke API tokens."
)


def _settings(database_url: str | None, **overrides: object):
    from bitalloc.service.settings import ServiceSettings

    return ServiceSettings.from_env(database_url=database_url, **overrides)


def _db(database_url: str | None):
    from bitalloc.service.db import make_engine, migrate, sessions

    engine = make_engine(_settings(database_url).database_url)
    migrate(engine)
    return sessions(engine)


def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    database_url: DatabaseUrl = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    keep_alive: Annotated[float, typer.Option(help="seconds an idle HTTP connection stays open")] = 75.0,
) -> None:
    """Start the planning service (migrates the database first)."""
    import uvicorn

    from bitalloc.service.app import create_app

    uvicorn.run(
        create_app(_settings(database_url)),
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=int(keep_alive),
        backlog=4096,
    )


def worker(
    database_url: DatabaseUrl = None,
    lease_seconds: Annotated[
        float | None, typer.Option(help="heartbeat lease; a silent worker's job is taken over after it")
    ] = None,
    poll: Annotated[float, typer.Option(help="seconds between looks at an empty queue")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="exit when the queue is empty")] = False,
    name: Annotated[str, typer.Option(help="worker name shown in job history (default host:pid)")] = "",
) -> None:
    """Run queued jobs (profiling); start as many as you like, on any machine that reaches the database."""
    from bitalloc.service.worker import WorkerOptions, run_worker

    ran = run_worker(_settings(database_url, lease_seconds=lease_seconds), WorkerOptions(name, poll, once))
    Console(stderr=True).print(f"worker ran {ran} job(s)")


@token_app.command("create")
def token_create(
    owner: Annotated[str, typer.Option(help="who the token acts for; sessions are visible per owner")],
    name: Annotated[str, typer.Option(help="a label, e.g. the machine it lives on")] = "",
    database_url: DatabaseUrl = None,
) -> None:
    """Create a token and print its secret once (it is stored only as a hash)."""
    from bitalloc.service.auth import create_token

    info, secret = create_token(_db(database_url), owner, name)
    Console(stderr=True).print(
        f"token {info.id} for {info.owner}; keep the secret below, it is not shown again"
    )
    print(secret)


@token_app.command("list")
def token_list(
    owner: Annotated[str | None, typer.Option(help="only this owner's tokens")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List tokens (ids, owners, names; never secrets)."""
    from bitalloc.service.auth import list_tokens

    table = Table("id", "owner", "name", "revoked")
    for t in list_tokens(_db(database_url), owner):
        table.add_row(t.id, t.owner, t.name, "yes" if t.revoked_at is not None else "")
    Console().print(table)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="the id from `bitalloc token list`")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke a token: every later request with it gets 401."""
    from bitalloc.service.auth import revoke_token

    info = revoke_token(_db(database_url), token_id)
    Console(stderr=True).print(f"revoked token {info.id} of {info.owner}")


def register(app: typer.Typer) -> None:
    """Add serve, worker and token to the main CLI."""
    app.command()(serve)
    app.command()(worker)
    app.add_typer(token_app, name="token")
