"""``sagaway``: the admin CLI for any saga log (list, show, retry, cancel, stats).

It only reads and flips state in the store; the workers that know the saga definitions do the
work (a retried or cancelled saga is picked up by whichever engine claims it next).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from sagaway.engine import Engine
from sagaway.errors import SagawayError
from sagaway.state import SagaRecord, SagaStatus

T = TypeVar("T")

app = typer.Typer(help="Inspect and repair sagas in a sagaway saga log.", no_args_is_help=True)
console = Console()
err = Console(stderr=True)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="SAGAWAY_STORE_URL",
        help="Saga log URL: sqlite:///sagaway.db, postgresql://..., redis://..., memory://",
    ),
]
SagaId = Annotated[str, typer.Argument(help="The saga id")]


def _when(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds")


def _run(store: str, action: Callable[[Engine], Awaitable[T]]) -> T:
    """Open an engine that executes nothing, run one admin action, map errors to exit codes."""

    async def main() -> T:
        async with Engine(store, execute=False, owner_id="sagaway-cli") as engine:
            return await action(engine)

    try:
        return asyncio.run(main())
    except SagawayError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=1) from None


@app.command("list")
def list_sagas(
    store: StoreOption = "sqlite:///sagaway.db",
    status: Annotated[SagaStatus | None, typer.Option(help="Only this status")] = None,
    name: Annotated[str | None, typer.Option(help="Only this saga definition")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """List sagas, newest first."""
    page = _run(store, lambda e: e.list_sagas(status=status, name=name, limit=limit, offset=offset))
    table = Table(title=f"sagas {offset + 1}-{offset + len(page.items)} of {page.total}")
    for column in ("id", "name", "status", "created", "error"):
        table.add_column(column)
    for saga in page.items:
        table.add_row(
            saga.id,
            f"{saga.name} v{saga.version}",
            saga.status,
            _when(saga.created_at),
            saga.error or "",
        )
    console.print(table)


def _print_saga(record: SagaRecord) -> None:
    console.print(
        f"[bold]{record.id}[/bold] {record.name} v{record.version} [bold]{record.status}[/bold]"
        + (f"  error: {record.error}" if record.error else "")
    )
    console.print(f"input: {json.dumps(record.input)}")
    steps = Table(title="steps")
    for column in ("step", "phase", "status", "attempts", "error", "started", "finished"):
        steps.add_column(column)
    for row in record.steps.values():
        steps.add_row(
            row.name,
            row.phase,
            row.status,
            str(row.attempts),
            row.error or "",
            _when(row.started_at),
            _when(row.finished_at),
        )
    console.print(steps)
    history = Table(title="history")
    for column in ("at", "event", "step", "attempt", "detail"):
        history.add_column(column)
    for event in record.history:
        history.add_row(
            _when(event.at),
            event.type,
            event.step or "",
            "" if event.attempt is None else str(event.attempt),
            event.detail or "",
        )
    console.print(history)


@app.command()
def show(saga_id: SagaId, store: StoreOption = "sqlite:///sagaway.db") -> None:
    """Show one saga: its steps and its history."""
    _print_saga(_run(store, lambda e: e.get(saga_id)))


@app.command()
def retry(saga_id: SagaId, store: StoreOption = "sqlite:///sagaway.db") -> None:
    """Retry a FAILED saga (its failed compensation, or its failed step past the pivot)."""
    _run(store, lambda e: e.retry(saga_id))
    console.print(f"saga {saga_id} handed back to the workers for a retry")


@app.command()
def cancel(saga_id: SagaId, store: StoreOption = "sqlite:///sagaway.db") -> None:
    """Ask a running saga to stop and compensate."""
    record = _run(store, lambda e: e.cancel(saga_id))
    console.print(f"cancellation of saga {saga_id} requested (status {record.status})")


@app.command()
def stats(store: StoreOption = "sqlite:///sagaway.db") -> None:
    """How many sagas are in each status."""
    counts = _run(store, lambda e: e.store.counts())
    table = Table(title="sagas by status")
    table.add_column("status")
    table.add_column("count", justify="right")
    for status in SagaStatus:
        table.add_row(status, str(counts.get(status, 0)))
    console.print(table)


def main() -> None:
    app()
